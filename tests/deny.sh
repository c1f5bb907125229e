#!/bin/bash
# Supply-chain check: `cargo deny check` (advisories, licences, bans, sources; policy in
# deny.toml) on Cargo.lock and on the fuzz crate's fuzz/Cargo.lock, offline, against the
# vendored RustSec advisory database snapshot (supply-chain/advisory-db): CI cannot reach
# GitHub, where cargo-deny would fetch it. Refresh: supply-chain/refresh-advisory-db.sh.
# Needs cargo-deny (tests/tools-install.sh installs the pinned version) and git.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "deny: FAILED: $*" >&2; exit 1; }
cargo deny --version >/dev/null 2>&1 || die "cargo-deny is not installed (bash tests/tools-install.sh)"
snap=supply-chain/advisory-db
[ -f "$snap/SNAPSHOT" ] && [ -d "$snap/crates" ] || die "no advisory snapshot in $snap"
commit="$(sed -n 's/^commit: //p' "$snap/SNAPSHOT")"
date="$(sed -n 's/^date: //p' "$snap/SNAPSHOT")"

# The checks run offline (`cargo metadata --offline`): fetch both graphs' crates first, from
# crates.io, exactly as locked.
for manifest in Cargo.toml fuzz/Cargo.toml; do
  cargo fetch --locked --manifest-path "$manifest" >/dev/null 2>&1 \
    || cargo fetch --locked --manifest-path "$manifest" \
    || die "cargo fetch ($manifest) failed; if its lock file is out of date (the fuzz crate's \
lock records mxsentry's own dependencies: a new one needs it updated), run: cargo fetch \
--manifest-path $manifest, and commit the lock file"
done

# cargo-deny opens the database as a git checkout under deny.toml's db-path, in a directory
# named after the URL; ask it which (a pinned cargo-deny names it the same way every time).
root=target/advisory-dbs
mkdir -p "$root"
# (That first run fails: nothing is there yet.)
db="$( (cargo deny -L debug --offline --locked check advisories 2>&1 || true) \
  | sed -n "s/.*Opening advisory database at '\(.*\)'.*/\1/p" | head -n 1)"
[ -n "$db" ] || die "cargo-deny did not say where it looks for the advisory database"
case "$db" in "$root"/*) ;; *) die "unexpected advisory database path $db (deny.toml db-path?)";; esac
# A git repository whose one commit is the snapshot, dated as upstream's: cargo-deny takes
# the database's age from it (deny.toml maximum-db-staleness).
rm -rf "$db"
mkdir -p "$db"
cp -r "$snap/crates" "$db/"
(
  cd "$db"
  export GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date"
  git init -q -b main .
  git add crates
  git -c user.name=mxsentry -c user.email=mxsentry@localhost commit -q -m "advisory-db $commit"
  touch -d "$date" .git/FETCH_HEAD .git/HEAD
)
age_days=$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))
echo "deny: advisory database snapshot $commit ($date, ${age_days} days old)"
if [ "$age_days" -gt 90 ]; then
  echo "deny: WARNING: the advisory snapshot is over 90 days old; refresh it (docs/security.md)" >&2
fi

for manifest in Cargo.toml fuzz/Cargo.toml; do
  echo "deny: cargo deny check ($manifest)"
  cargo deny --offline --locked --manifest-path "$manifest" check \
    || die "cargo deny found problems in $manifest's dependencies (see above)"
done
echo "deny: advisories, licences, bans and sources clean"
