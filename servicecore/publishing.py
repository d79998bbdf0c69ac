"""Publishing into a model repository: the one way a new version of a model appears, for both services.

The training worker publishes a checked bundle; TFaaS publishes an upload. Either way the bundle is copied to
``REPO/.incoming/<random>/`` (same file system), gets its ``params.json`` name and version, and is renamed
onto ``REPO/<name>/<version>/``: a reader never sees half a version, a version number is never reused
(``servicecore.naming``), and an existing version is never overwritten.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from pathlib import Path

from servicecore.naming import check_name, next_version, record_high_water

INCOMING = ".incoming"
PUBLISH_ATTEMPTS = 100


def staging_directory(parent: Path, prefix: str) -> Path:
    """A fresh directory to build in before the rename, made as a plain ``mkdir`` would make it.

    Not ``mkdtemp``, which always makes 0700: renamed into the shared model repository that would hide the
    bundle from TFaaS, which runs as another user of the repository's group. ``mkdir`` applies the umask and
    lets the kernel pass on the setgid bit of the repository, so files inside belong to its group; no chmod
    of that bit is needed (the services' units forbid it with RestrictSUIDSGID).
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free staging directory name in {parent}")


def copy_contents(source: Path, target: Path) -> None:
    """Copy the files and folders of ``source`` into ``target``, not their modes.

    ``shutil.copytree`` copies each folder's mode with chmod; a folder staged inside the repository carries
    the setgid bit it inherited, and chmod of that bit is refused under the services' RestrictSUIDSGID (TFaaS
    uploads failed with EPERM on the appliance). New folders and files take the umask and the repository's
    group by inheritance instead.
    """
    for folder, _, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir(mode=0o777, exist_ok=True)
        for file in files:
            shutil.copyfile(Path(folder) / file, target / relative / file)


def publish(bundle: str | Path, repository: str | Path, name: str) -> tuple[Path, int]:
    """Copy ``bundle`` into ``repository`` as ``<name>/<next version>`` with one atomic rename.

    The copy goes to ``REPO/.incoming/<random>/`` (same file system), gets its ``params.json`` version, and is
    renamed onto a version directory that does not exist yet. A concurrent publisher that takes the same
    number first makes the rename fail; this one then takes the next number.
    """
    check_name(name)
    repository = Path(repository).absolute()
    incoming_root = repository / INCOMING
    incoming_root.mkdir(parents=True, exist_ok=True)
    model_dir = repository / name
    model_dir.mkdir(exist_ok=True)
    staging = staging_directory(incoming_root, "bundle-")
    try:
        copy_contents(Path(bundle), staging)
        params = json.loads((staging / "params.json").read_text())
        for _ in range(PUBLISH_ATTEMPTS):
            version = next_version(model_dir)
            params["version"] = version
            params["name"] = name
            # In place, not through a temporary file: the staging copy is private until the rename, and a
            # new file would take its group from the copy's directory, whose setgid bit copytree dropped.
            (staging / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")
            target = model_dir / str(version)
            try:
                # A publisher that took this number first leaves a non-empty directory: rename then fails.
                if target.exists():
                    continue
                staging.rename(target)
            except OSError as err:
                if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue
                raise
            record_high_water(model_dir, version)
            return target, version
        raise RuntimeError(
            f"could not find a free version of {name!r} in {repository} after {PUBLISH_ATTEMPTS} attempts"
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
