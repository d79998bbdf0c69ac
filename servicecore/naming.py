"""Model names, owner namespaces and version numbers: whose a model is and which version comes next.

A model lives at ``REPO/<name>/<version>/``. A name is ``<owner namespace>.<rest>`` when a service made it
for a user, so the text before the first dot names exactly one owner. Version numbers are positive integers
that are never reused: ``REPO/<name>/.last_version`` records the highest ever published, so deleting the
newest version does not hand its number out again.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from servicecore import atomic
from servicecore.errors import BadInputError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Highest version ever published under a name, so that a deleted version's number is not handed out again.
HIGH_WATER = ".last_version"
MAX_NAME = 128


def check_name(name: str) -> str:
    """``name`` if it is a valid model name, else a ``BadInputError`` that says the rule."""
    if not NAME.match(name) or ".." in name:
        raise BadInputError(
            f"model name {name!r} is not valid: use letters, digits, '.', '_' and '-' "
            f"(at most {MAX_NAME}, starting with a letter or digit)"
        )
    return name


def owner_namespace(owner: str) -> str:
    """An owner's model-name prefix: the one source of truth for whose a model is, in both services.

    One-to-one and without dots, so the text before a model name's first dot names exactly one owner:
    ``mario.rossi`` becomes ``mario-2erossi`` and can never meet ``mario``'s ``mario.*``. Letters, digits
    and ``_`` stay; any other character becomes ``-`` and its code point in hex.
    """
    return re.sub(r"[^A-Za-z0-9_]", lambda m: f"-{ord(m.group()):x}", owner)


def owns(owner: str, name: str) -> bool:
    """Names in ``owner``'s namespace: ``alice`` owns ``alice`` and ``alice.higgs``, not ``alicex.higgs``;
    ``mario`` does not own ``mario-2erossi.higgs`` (user ``mario.rossi``'s)."""
    namespace = owner_namespace(owner)
    return name == namespace or name.startswith(namespace + ".")


def model_name(owner: str, name: str) -> str:
    """``<owner namespace>.<name>`` in the model repository: the owner part cannot be chosen by a request."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip("._-") or "model"
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    return f"{owner_namespace(owner)}.{cleaned}"[:MAX_NAME]


def versions(model_dir: Path) -> list[int]:
    """The versions present under ``model_dir``, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0
    )


def recorded_high_water(model_dir: Path) -> int:
    """The highest version recorded as used under ``model_dir`` (0 when none is)."""
    with contextlib.suppress(OSError, ValueError):
        return int((model_dir / HIGH_WATER).read_text().strip())
    return 0


def next_version(model_dir: Path) -> int:
    """One above the highest version present or ever recorded."""
    return max([recorded_high_water(model_dir), *versions(model_dir)]) + 1


def record_high_water(model_dir: Path, version: int) -> None:
    """Remember ``version`` as used (after publishing it, or before deleting it), never lowering the mark."""
    highest = next_version(model_dir) - 1
    if recorded_high_water(model_dir) >= max(highest, version):
        return
    atomic.write_text(model_dir / HIGH_WATER, f"{max(highest, version)}\n")
