"""The README's commands as a fresh Debian 12 machine runs them: the interpreter, the job's view of the
install, the Debian packages behind every command the scripts call, and the source packing without git."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_LIST = REPO / "scripts" / "debian-packages.txt"
# Every command the scripts, the tests and the benchmarks call, with one place that calls it. The
# Python-side commands (subprocess argv) are here too, since a job or a test fails the same way without them.
COMMANDS = {
    "apt-get": "scripts/bootstrap.sh",
    "dpkg-query": "scripts/bootstrap.sh",
    "sha256sum": "scripts/bootstrap.sh",
    "getent": "scripts/bootstrap.sh",
    "uname": "scripts/bootstrap.sh",
    "tar": "scripts/pack-source.sh",
    "git": "scripts/pack-source.sh",
    "realpath": "scripts/pack-source.sh",
    "ssh": "scripts/appliance-up.sh",
    "scp": "scripts/appliance-up.sh",
    "ssh-keygen": "molecule/default/nspawn_host.sh",
    "debootstrap": "molecule/default/nspawn_host.sh",
    "systemd-nspawn": "molecule/default/nspawn_host.sh",
    "nsenter": "molecule/default/nspawn_host.sh",
    "setsid": "molecule/default/nspawn_host.sh",
    "pgrep": "molecule/default/nspawn_host.sh",
    "chroot": "molecule/default/nspawn_host.sh",
    "install": "molecule/default/nspawn_host.sh",
    "prlimit": "appliance/server/runner.py",
    "taskset": "appliance/server/runner.py",
    "setpriv": "appliance/server/runner.py",
    "xrootd": "mlaas4hep_devtools/xrootd.py",
    "openssl": "tests/",
    "curl": "tests/",
    "ip": "tests/",
    "wrk": "bench/tfaas_bench.py",
}


def listed_packages() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in PACKAGE_LIST.read_text().splitlines())
    return [line.split()[0] for line in lines if line]


def owning_package(command: str) -> str:
    """The Debian package that ships ``command``, as dpkg knows it (merged /usr or not)."""
    path = shutil.which(command)
    assert path is not None, (
        f"{command} (called by {COMMANDS[command]}) is not installed: run scripts/bootstrap.sh"
    )
    real = Path(path).resolve()
    for candidate in dict.fromkeys([str(real), path, str(real).removeprefix("/usr"), f"/usr{real}"]):
        found = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.split(":", 1)[0].split(",")[0].strip()
    raise AssertionError(f"no Debian package owns {path} ({command}, called by {COMMANDS[command]})")


def dependency_closure(packages: list[str]) -> set[str]:
    """The packages apt installs with ``packages`` (Depends and PreDepends, recursively; no Recommends)."""
    result = subprocess.run(
        [
            "apt-cache",
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            "--installed",
            *packages,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return {
        line.strip().split(":")[0] for line in result.stdout.splitlines() if line and not line[0].isspace()
    }


def minimal_image_packages() -> set[str]:
    """What debootstrap --variant=minbase installs: the Priority required packages, and apt."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Priority}\n"], capture_output=True, text=True, check=True
    )
    required = {line.split()[0] for line in result.stdout.splitlines() if line.endswith(" required")}
    return required | {"apt"}


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="the appliance's scripts target Debian")
def test_every_command_the_scripts_call_comes_from_a_listed_package_or_the_minimal_image() -> None:
    for command, caller in COMMANDS.items():
        if (REPO / caller).is_file():  # the list names a real caller, so it cannot go stale unnoticed
            assert command in (REPO / caller).read_text(), f"{caller} no longer calls {command}"
    provided = dependency_closure(listed_packages()) | minimal_image_packages()
    missing = {c: owning_package(c) for c in COMMANDS if owning_package(c) not in provided}
    assert not missing, f"scripts/debian-packages.txt misses the packages of {missing}"


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no Debian interpreter here")
def test_the_suite_runs_on_debians_own_python() -> None:
    # The appliance runs on /usr/bin/python3 (3.11.2 on Debian 12); a newer 3.11 on PATH once hid a bug.
    assert Path(sys._base_executable).resolve() == Path("/usr/bin/python3").resolve()
    assert sys.version_info >= (3, 11), "pyproject.toml's requires-python is >=3.11"


@pytest.fixture
def private_copy() -> Iterator[Path]:
    """A copy of the checkout inside a 0700 folder, as a clone in root's home is."""
    home = Path(tempfile.mkdtemp(prefix="mlaas4hep-home-"))
    home.chmod(0o700)
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", ".*_cache")
    try:
        yield Path(shutil.copytree(REPO, home / "clone", ignore=ignore, symlinks=True))
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the job user needs root, as the worker has")
def test_the_job_interpreter_needs_no_access_to_a_private_clone(private_copy: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    job_dir = Path(tempfile.mkdtemp(prefix="mlaas4hep-job-"))
    os.chown(job_dir, nobody.pw_uid, nobody.pw_gid)
    where = "import appliance, tfaas, servicecore, mlaas4hep_client; print(appliance.__file__)"
    try:
        # Root, from the private clone, imports the clone's own code, as the tests and the worker do ...
        root_side = subprocess.run(
            [sys.executable, "-c", where], cwd=private_copy, capture_output=True, text=True, timeout=120
        )
        assert root_side.returncode == 0, root_side.stderr
        assert Path(root_side.stdout.strip()).is_relative_to(private_copy)
        # ... and the job, as an unprivileged user with the worker's interpreter, in its own directory with
        # the runner's environment, imports an installed copy that everyone can read, and starts its command.
        as_job_user = [
            "setpriv",
            "--reuid",
            str(nobody.pw_uid),
            "--regid",
            str(nobody.pw_gid),
            "--clear-groups",
        ]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(job_dir), "LANG": "C.UTF-8"}
        job_side = subprocess.run(
            [*as_job_user, "--", sys.executable, "-c", where],
            cwd=job_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert job_side.returncode == 0, (
            f"the job user cannot import the appliance: {job_side.stderr[-2000:]}"
        )
        installed = Path(job_side.stdout.strip())
        assert not installed.is_relative_to(REPO), f"the job imports the clone's code ({installed})"
        assert not installed.is_relative_to(private_copy), installed
        train = subprocess.run(
            [*as_job_user, "--", sys.executable, "-m", "appliance", "train", "--help"],
            cwd=job_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert train.returncode == 0, f"the job's command fails as nobody: {train.stderr[-2000:]}"
        assert "--files" in train.stdout
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def packed_names(tree: Path, out: Path) -> set[str]:
    subprocess.run(["bash", str(tree / "scripts" / "pack-source.sh"), str(out)], check=True, timeout=300)
    with tarfile.open(out) as archive:
        return {m.name.removeprefix("./") for m in archive.getmembers() if not m.isdir()}


def test_the_source_packs_the_same_files_with_and_without_git(private_copy: Path, tmp_path: Path) -> None:
    # A downloaded tarball has no .git; what .gitignore names must stay out all the same.
    junk = [".venv/bin/python", "appliance/__pycache__/x.pyc", "build/lib/x.py", "x.egg-info/PKG-INFO"]
    # A tool's cache that ignores itself, as .hypothesis/ and .ruff_cache/ do.
    junk += [".toolcache/.gitignore", ".toolcache/data"]
    for name in junk:
        (private_copy / name).parent.mkdir(parents=True, exist_ok=True)
        (private_copy / name).write_text("*\n" if name.endswith(".gitignore") else "junk")
    from_git = packed_names(REPO, tmp_path / "git.tar.gz")
    without_git = packed_names(private_copy, tmp_path / "copy.tar.gz")
    assert "scripts/pack-source.sh" in without_git
    assert without_git == from_git - {".gitignore"}


def test_appliance_up_gives_the_end_to_end_check_every_argument_it_requires() -> None:
    """The main job's last step runs molecule/default/e2e.py; an argument it requires and the script leaves
    out ends the README's first command with a usage error after the whole converge."""
    import ast

    tree = ast.parse((REPO / "molecule" / "default" / "e2e.py").read_text())
    required = {
        call.args[0].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and getattr(call.func, "attr", "") == "add_argument"
        and call.args
        and isinstance(call.args[0], ast.Constant)
        and any(k.arg == "required" and getattr(k.value, "value", False) is True for k in call.keywords)
    }
    assert "--job-uids" in required and "--api" in required  # the reader sees the parser
    script = (REPO / "scripts" / "appliance-up.sh").read_text()
    assert sorted(option for option in required if option not in script) == []
