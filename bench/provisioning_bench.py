"""Provisioning time of the appliance per tested platform: a fresh and a second converge of site.yml.

A fresh converge runs on a new systemd host, then a second one on the same host.

For each Molecule scenario of the matrix (molecule/default: Debian 12, molecule/debian13: Debian 13) it runs
the scenario's steps (destroy, create with prepare, converge, converge, destroy) and times them. The second
converge changes nothing (Molecule's idempotence step checks that), so its time is the baseline of the same
run: the fresh converge is reported as a ratio to it. With --cold the cached root filesystems and the pip cache
are removed first, so debootstrap and every download are part of the figures (of the first platform's row for
the pip cache, which the platforms share).

    .venv/bin/python bench/provisioning_bench.py [--cold] [--scenario default --scenario debian13]
                                                 [--out bench/results/provisioning.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("MLAAS4HEP_NSPAWN_CACHE", "/var/cache/mlaas4hep-nspawn"))
# The matrix: scenario -> the platform it converges.
SCENARIOS = {"default": "Debian 12 (bookworm, Python 3.11)", "debian13": "Debian 13 (trixie, Python 3.13)"}


def molecule(step: str, scenario: str) -> float:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "PY_COLORS": "0",
        "NO_COLOR": "1",
    }
    start = time.monotonic()
    result = subprocess.run(
        [str(VENV_BIN / "molecule"), step, "--scenario-name", scenario],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"molecule {step} ({scenario}) failed:\n{result.stdout[-6000:]}")
    print(f"{scenario}: molecule {step}: {elapsed:.0f} s", flush=True)
    return elapsed


def measure(scenario: str) -> tuple[float, float, float]:
    """Create (with prepare), the fresh converge and the second one, in seconds."""
    molecule("destroy", scenario)
    create = molecule("create", scenario)  # Molecule's create sequence runs prepare.yml too
    try:
        fresh = molecule("converge", scenario)
        second = molecule("converge", scenario)
    finally:
        molecule("destroy", scenario)
    return create, fresh, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cold", action="store_true", help="drop the cached root filesystems and pip cache first"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="a platform of the matrix (default: all)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "provisioning.md")
    args = parser.parse_args()

    if args.cold:
        shutil.rmtree(CACHE, ignore_errors=True)
    figures = {scenario: measure(scenario) for scenario in args.scenario or list(SCENARIOS)}

    load = os.getloadavg()[0]
    lines = [
        "# Provisioning: fresh and second converge of playbooks/site.yml, per platform",
        "",
        f"Measured by `bench/provisioning_bench.py{' --cold' if args.cold else ''}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, load average {load:.1f} at the end); one systemd-nspawn host per Molecule "
        "scenario. Create includes the boot from the cached root filesystem "
        f"({'built first' if args.cold else 'already cached'}) and prepare (the stand-in XRootD origin).",
        "",
        "| platform (scenario) | create + prepare, s | fresh converge, s | second converge (baseline), s "
        "| fresh / second |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {SCENARIOS[scenario]} (`{scenario}`) | {create:.0f} | {fresh:.0f} | {second:.0f} "
            f"| {fresh / second:.2f} |"
            for scenario, (create, fresh, second) in figures.items()
        ),
        "",
        "The pip cache and the root filesystem tarballs live in /var/cache/mlaas4hep-nspawn between runs; "
        "`--cold` removes them first.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
