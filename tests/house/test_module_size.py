"""A module above about 400 lines says at its top why it is one piece (DEVELOPERS.md), or it is split.

"At its top": within its first ten lines, where a reader opening the file sees it.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("appliance", "tfaas", "servicecore", "mlaas4hep_client", "mlaas4hep_devtools", "bench", "scripts")
# "About 400": a few lines of slack, so that a module does not need a reason for its 401st line.
LIMIT = 420
TOP_LINES = 10


def oversized_without_reason() -> list[str]:
    unexplained = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") <= LIMIT:
                continue
            top = "\n".join(text.splitlines()[:TOP_LINES]).lower()
            if "one piece" not in top:
                unexplained.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    return unexplained


def test_every_long_module_says_why_it_is_one_piece() -> None:
    assert oversized_without_reason() == []
