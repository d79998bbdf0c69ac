#!/usr/bin/env bash
# Packs this checkout's source into a .tar.gz (the mlaas4hep role's archive install): from a git clone, the
# tracked files and the new ones git does not ignore; from an unpacked tarball or a copy without .git, the
# whole tree less what .gitignore names. Usage: bash scripts/pack-source.sh OUT.tar.gz
set -euo pipefail
out=$(realpath -m "${1:?usage: pack-source.sh OUT.tar.gz}")
cd "$(dirname "$0")/.."
if [[ -e .git ]]; then
  git ls-files -z --cached --others --exclude-standard \
    | tar --null --verbatim-files-from --files-from=- --ignore-failed-read --sort=name -czf "$out"
else
  # tar reads .gitignore files only in part: it follows the simple ones that tools leave in their caches
  # (.hypothesis/, .ruff_cache/: '*'), and the top one's patterns are spelled out (tests/test_scripts.py
  # compares the result with git's).
  tar --exclude-vcs --exclude-vcs-ignores --exclude=./.venv --exclude=__pycache__ --exclude='*.pyc' \
    --exclude=.pytest_cache --exclude=.ruff_cache --exclude=./build --exclude=./dist --exclude='*.egg-info' \
    --exclude=./.cache --exclude=./.work --exclude=.gl --exclude=.whl --sort=name -czf "$out" .
fi
