#!/bin/bash
# Generates the man pages the .deb installs into target/man, gzipped as Debian policy wants
# (gzip -9n: no name or time stamp, so a rebuild gives the same bytes):
#   mxsentry.8.gz     from the clap command line  (mxsentry generate-man, hidden)
#   milter.toml.5.gz  from the commented repository milter.toml
# Run before `cargo deb` (tests/package.sh does); builds the release binary cargo deb reuses.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/man
rm -rf "$out"
cargo run --release --locked --quiet --bin mxsentry -- generate-man "$out" >/dev/null
gzip -9nf "$out/mxsentry.8" "$out/milter.toml.5"
ls "$out"/mxsentry.8.gz "$out"/milter.toml.5.gz
