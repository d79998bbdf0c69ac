#!/usr/bin/env bash
# The release step: builds, at one version, everything the TOSCA template references, and checks it offline.
#
#   scripts/release.sh VERSION OUTDIR          e.g. scripts/release.sh 0.2.0 dist/
#   scripts/release.sh --bump VERSION OUTDIR   the same, and writes the new version into this tree
#                                              (galaxy.yml and tosca/) for the release commit
#
# VERSION is the one input: the collection's version, the tag vVERSION, and every pinned URL of the template,
# the node types and the dashboard files follow from it. OUTDIR receives:
#   mlaas4hep-appliance-VERSION.tar.gz   the collection mlaas4hep.appliance (ansible-galaxy collection build):
#                                        the artifact every node type installs (a GitHub release asset of vVERSION)
#   tosca/                               the template, the node types, the configure playbooks and the dashboard
#                                        files, stamped with VERSION (what raw.githubusercontent.com serves at the tag)
#   SHA256SUMS
# Then it validates the stamped template with tosca-parser, offline: its imports and the configure playbooks
# are resolved to the files in OUTDIR (and the INFN Cloud base types to a local copy, $MLAAS4HEP_TOSCA_BASE_TYPES,
# by default ../shared/reference/tosca-types/basic_types.yaml), and the collection artifact must be the tarball
# just built. Publishing (the commit, the tag, the release asset) is docs/tosca.md's "Releasing".
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${MLAAS4HEP_VENV:-$REPO/.venv}
BASE_TYPES=${MLAAS4HEP_TOSCA_BASE_TYPES:-$REPO/../shared/reference/tosca-types/basic_types.yaml}

die() { echo "release: error: $*" >&2; exit 2; }

bump=0
if [[ ${1:-} == --bump ]]; then
  bump=1
  shift
fi
[[ $# -eq 2 ]] || die "usage: $0 [--bump] VERSION OUTDIR"
VERSION=$1 OUT=$2
[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "VERSION must be MAJOR.MINOR.PATCH (the tag is vVERSION), got '$VERSION'"
CURRENT=$(sed -n 's/^version: *\([0-9.]*\) *$/\1/p' galaxy.yml)
[[ $CURRENT =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "galaxy.yml has no MAJOR.MINOR.PATCH version line"
[[ -f $BASE_TYPES ]] || die "the INFN Cloud base types are not at $BASE_TYPES (set MLAAS4HEP_TOSCA_BASE_TYPES)"
[[ -x $VENV/bin/ansible-galaxy ]] || die "no ansible-galaxy in $VENV (scripts/bootstrap.sh builds the venv)"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# Every occurrence of the current release in the files that pin it: the tag (vX.Y.Z in URLs and git_version),
# the tarball's name, the template's version and the collection's.
current_re=${CURRENT//./\\.}
stamp() {
  sed -i \
    -e "s|\\bv${current_re}\\b|v${VERSION}|g" \
    -e "s|mlaas4hep-appliance-${current_re}\\.tar\\.gz|mlaas4hep-appliance-${VERSION}.tar.gz|g" \
    -e "s|^\\(\\s*template_version:\\s*\\)${current_re}\\s*\$|\\1${VERSION}|" \
    -e "s|^version: ${current_re}\$|version: ${VERSION}|" \
    "$@"
}

# The collection: the roles and the playbooks, nothing of the application (the mlaas4hep role installs that
# from the same tag).
collection=$stage/collection
mkdir -p "$collection/meta"
cp -r galaxy.yml README.md roles playbooks "$collection/"
find "$collection" -name __pycache__ -prune -exec rm -rf {} +
printf -- '---\nrequires_ansible: ">=2.15"\n' >"$collection/meta/runtime.yml"
stamp "$collection/galaxy.yml"

cp -r tosca "$stage/tosca"
mapfile -t tosca_files < <(find "$stage/tosca" -type f \( -name '*.yaml' -o -name '*.yml' \))
stamp "${tosca_files[@]}"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -rf "$OUT/tosca" "$OUT/mlaas4hep-appliance-$VERSION.tar.gz" "$OUT/SHA256SUMS"
"$VENV/bin/ansible-galaxy" collection build "$collection" --output-path "$OUT" >"$stage/build.log" 2>&1 \
  || { cat "$stage/build.log" >&2; die "ansible-galaxy collection build failed"; }
tarball=$OUT/mlaas4hep-appliance-$VERSION.tar.gz
[[ -f $tarball ]] || die "ansible-galaxy built no $tarball"
cp -r "$stage/tosca" "$OUT/tosca"

"$VENV/bin/python" - "$OUT" "$VERSION" "$BASE_TYPES" <<'PY'
"""Validate the stamped template offline against the files just built (tosca-parser's local_defs)."""
import re
import sys
import tarfile
import json
from pathlib import Path

import yaml
from toscaparser.tosca_template import ToscaTemplate

out, version, base_types = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
tag = f"v{version}"
raw = f"https://raw.githubusercontent.com/mlaas4hep/mlaas4hep-appliance/{tag}/"
asset = f"https://github.com/mlaas4hep/mlaas4hep-appliance/releases/download/{tag}/mlaas4hep-appliance-{version}.tar.gz"
base_url = "https://baltig.infn.it/infn-cloud/tosca-types/raw/v3.4.0/tosca_types/base/basic_types.yaml"


def fail(message: str) -> None:
    sys.exit(f"release: error: {message}")


def local(url: str) -> Path:
    if url == base_url:
        return Path(base_types)
    if not url.startswith(raw):
        fail(f"{url} points at neither {raw} nor the pinned INFN Cloud types")
    path = out / url.removeprefix(raw)
    if not path.is_file():
        fail(f"{url} names {path.relative_to(out)}, which the release does not hold")
    return path


def imports(document: dict) -> list[str]:
    return [url for entry in document.get("imports", []) for url in (entry.values() if isinstance(entry, dict) else [entry])]


template = out / "tosca" / "mlaas4hep_appliance.yaml"
types_doc = yaml.safe_load((out / "tosca" / "types" / "mlaas4hep_types.yaml").read_text())
urls = imports(yaml.safe_load(template.read_text())) + imports(types_doc)
for name, node_type in types_doc["node_types"].items():
    for artifact in node_type.get("artifacts", {}).values():
        if artifact["file"] != asset:
            fail(f"{name} installs {artifact['file']}, not this release's collection {asset}")
    local(node_type["interfaces"]["Standard"]["configure"]["implementation"])
ToscaTemplate(str(template), local_defs={url: str(local(url)) for url in urls})

with tarfile.open(out / f"mlaas4hep-appliance-{version}.tar.gz") as collection:
    manifest = json.load(collection.extractfile("MANIFEST.json"))
    names = collection.getnames()
if manifest["collection_info"]["version"] != version:
    fail(f"the collection says version {manifest['collection_info']['version']}")
for role in ("appliance_base", "xrootd_proxy", "mlaas4hep", "tfaas", "oauth2_proxy"):
    if f"roles/{role}/tasks/main.yml" not in names:
        fail(f"the collection lacks the role {role}")
stale = sorted(
    str(path.relative_to(out))
    for path in (out / "tosca").rglob("*.y*ml")
    if set(re.findall(r"mlaas4hep-appliance[^\s\"']*?(v\d+\.\d+\.\d+)", path.read_text())) - {tag}
)
if stale:
    fail(f"files pinning another release: {stale}")
print(f"release: {template.relative_to(out)} validates offline against the built artifacts ({tag})")
PY

(cd "$OUT" && find . -type f ! -name SHA256SUMS -printf '%P\n' | sort | xargs sha256sum >SHA256SUMS)

if ((bump)); then
  stamp galaxy.yml
  cp -r "$stage/tosca/." tosca/
  echo "release: this tree now names v$VERSION (galaxy.yml, tosca/); commit it, tag v$VERSION, upload $tarball"
fi
echo "release: $OUT holds mlaas4hep-appliance-$VERSION.tar.gz, tosca/ and SHA256SUMS"
