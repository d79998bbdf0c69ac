"""Provisioning time of the appliance: a fresh converge of site.yml on a new systemd host, then a second one.

Runs the Molecule scenario's steps (destroy, create with prepare, converge, converge, destroy) and times the two
converges. The second converge changes nothing (Molecule's idempotence step checks that), so its time is the
baseline of the same run: the fresh converge is reported as a ratio to it. With --cold the cached root
filesystem and pip cache are removed first, so debootstrap and every download are part of the figures.

    .venv/bin/python bench/provisioning_bench.py [--cold] [--out bench/results/provisioning.md]
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


def molecule(step: str) -> float:
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "PY_COLORS": "0", "NO_COLOR": "1"}
    start = time.monotonic()
    result = subprocess.run(
        [str(VENV_BIN / "molecule"), step],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"molecule {step} failed:\n{result.stdout[-6000:]}")
    print(f"molecule {step}: {elapsed:.0f} s", flush=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cold", action="store_true", help="drop the cached root filesystem and pip cache first"
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "provisioning.md")
    args = parser.parse_args()

    molecule("destroy")
    if args.cold:
        shutil.rmtree(CACHE, ignore_errors=True)
    create = molecule("create")  # Molecule's create sequence runs prepare.yml too
    try:
        fresh = molecule("converge")
        second = molecule("converge")
    finally:
        molecule("destroy")

    load = os.getloadavg()[0]
    rows = [
        (
            "host create (debootstrap " + ("built" if args.cold else "from cache") + ", boot) and prepare "
            "(stand-in XRootD origin)",
            create,
        ),
        ("fresh converge of site.yml", fresh),
        ("second converge (no change), the baseline", second),
    ]
    lines = [
        "# Provisioning: fresh and second converge of playbooks/site.yml",
        "",
        f"Measured by `bench/provisioning_bench.py{' --cold' if args.cold else ''}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, load average {load:.1f} at the end), Molecule scenario `default` (Debian 12 "
        "systemd-nspawn host).",
        "",
        "| step | seconds | ratio to the second converge |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {seconds:.0f} | {seconds / second:.2f} |" for name, seconds in rows),
        "",
        "The pip cache and the root filesystem tarball live in /var/cache/mlaas4hep-nspawn between runs; "
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
