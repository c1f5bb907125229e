#!/bin/bash
# Installs the cargo tools the hostile-input and supply-chain checks need, pinned, from
# crates.io (source builds with the machine's stable toolchain; no prebuilt binaries):
#   cargo-fuzz  (tests/fuzz.sh)
#   cargo-deny  (tests/deny.sh)
# Idempotent: a tool already installed at the pinned version is kept. Into $CARGO_HOME/bin
# (~/.cargo/bin), which rustup puts on PATH. From scratch on 2 cores: see docs/security.md.
set -euo pipefail
CARGO_FUZZ_VERSION=0.13.2
CARGO_DENY_VERSION=0.20.2

install() { # crate version command
  local crate=$1 version=$2 have
  have="$(cargo "$3" --version 2>/dev/null | awk '{print $2}' || true)"
  if [ "$have" = "$version" ]; then
    echo "tools: $crate $version already installed"
    return 0
  fi
  local t0=$SECONDS
  # --locked: the tool's own Cargo.lock, so the build is the one its release was tested with.
  cargo install --locked --quiet "$crate" --version "$version"
  echo "tools: installed $crate $version in $((SECONDS - t0))s"
}
install cargo-fuzz "$CARGO_FUZZ_VERSION" fuzz
install cargo-deny "$CARGO_DENY_VERSION" deny
