#!/bin/bash
# Replaces the vendored RustSec advisory database snapshot (supply-chain/advisory-db) with the
# HEAD of a git clone of it. CI cannot reach GitHub, so tests/deny.sh checks against this copy.
#   git clone --bare https://github.com/rustsec/advisory-db /tmp/advisory-db
#   bash supply-chain/refresh-advisory-db.sh /tmp/advisory-db
#   bash tests/deny.sh            # then fix or justify (deny.toml) what the new data finds
#   git add -A supply-chain/advisory-db && git commit   # say the new commit in the message
# Only crates/ (the advisories; rust/ covers the toolchain) and the licence texts are kept:
# the data is CC0-1.0, GHSA imports CC-BY-4.0 (attribution: the LICENSE files and SNAPSHOT).
set -euo pipefail
src="${1:?usage: $0 PATH-TO-ADVISORY-DB-GIT-REPO}"
cd "$(dirname "$0")"
git -C "$src" rev-parse --verify -q HEAD >/dev/null || { echo "$src: not a git repository" >&2; exit 1; }
commit="$(git -C "$src" rev-parse HEAD)"
date="$(git -C "$src" show -s --format=%cI HEAD)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
git -C "$src" archive --format=tar HEAD crates LICENSE.txt LICENSES | tar -x -C "$tmp"
[ -d "$tmp/crates" ] || { echo "no crates/ in $src" >&2; exit 1; }
rm -rf advisory-db
mkdir advisory-db
mv "$tmp/crates" "$tmp/LICENSE.txt" "$tmp/LICENSES" advisory-db/
cat > advisory-db/SNAPSHOT <<EOT
source: https://github.com/rustsec/advisory-db
commit: $commit
date: $date
EOT
echo "advisory-db snapshot: $commit ($date), $(find advisory-db/crates -name '*.md' | wc -l) advisories"
