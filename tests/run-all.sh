#!/bin/bash
# THE test command of mxsentry:  bash tests/run-all.sh
# Runs, and stops at the first failing step with a clear message:
#   1. cargo fmt --check                              (CI requires formatting clean)
#   2. cargo clippy --locked --workspace --all-targets -- -D warnings (and fmt + clippy of the fuzz crate)
#   3. cargo build --locked --workspace --all-targets
#   4. cargo test --locked --workspace
#   (--workspace: the load generator is the member tools/milterload; the root alone is mxsentry)
#   5. bash tests/e2e/run.sh   (real Postfix, sendmail, miltertest, DNS on loopback; needs root and
#      the packages of tests/testbed/install.sh -- .ci/run installs them)
#   (4b. bash bench/smoke.sh: builds the load generator, 10 s protocol scenario, no thresholds)
#   (4c. bash tests/deny.sh: cargo deny check, offline, against the vendored advisory database;
#    4d. bash tests/fuzz.sh: every fuzz target for FUZZ_SECONDS (60) from fuzz/corpus, on
#    stable; both need tests/tools-install.sh's cargo-deny and cargo-fuzz -- .ci/run runs it)
#   6. bash tests/package.sh   (builds the .deb with cargo-deb, installs it, checks the installed
#      check-config and the unit; needs root)
# Knobs: SKIP_LINT=1 skips 1+2, SKIP_E2E=1 skips 5 (e.g. on a machine without the test bed),
# SKIP_PACKAGE=1 skips 6, SKIP_DENY=1 skips 4c, SKIP_FUZZ=1 skips 4d (docs/security.md).
# The last line printed is the e2e total, "N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS

# Each step shows the disk left: the build, the tests' stores and the fuzz build share it.
step() { echo; echo "=== run-all: $* ($((SECONDS - T0))s; disk free: $(df -Ph . | awk 'NR==2 {print $4}'))"; }
die() { echo; echo "run-all: FAILED: $*" >&2; exit 1; }

if [ "${SKIP_LINT:-0}" != 1 ]; then
  step "cargo fmt --check"
  cargo fmt --version >/dev/null 2>&1 || die "rustfmt is not installed (rustup component add rustfmt)"
  cargo fmt --all -- --check || die "cargo fmt --check: code is not formatted (run: cargo fmt --all)"
  step "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --version >/dev/null 2>&1 || die "clippy is not installed (rustup component add clippy)"
  cargo clippy --locked --workspace --all-targets -- -D warnings || die "cargo clippy found warnings (see above)"
  # The fuzz crate is outside the workspace: lint it here, so a change of the library's API
  # that breaks a target shows in a minute, not after the tests.
  step "the fuzz crate: cargo fmt --check, cargo clippy -- -D warnings"
  cargo fmt --manifest-path fuzz/Cargo.toml -- --check || die "fuzz/: not formatted (run: cargo fmt --manifest-path fuzz/Cargo.toml)"
  cargo clippy --locked --manifest-path fuzz/Cargo.toml --bins -- -D warnings \
    || die "the fuzz crate does not build cleanly (see above; fuzz/Cargo.lock stale? cargo fetch --manifest-path fuzz/Cargo.toml)"
fi

step "cargo build --locked --workspace --all-targets"
cargo build --locked --workspace --all-targets || die "cargo build failed"

step "cargo test --locked --workspace"
cargo test --locked --workspace || die "cargo test failed"

step "benchmark smoke (bench/smoke.sh: load generator, 10 s protocol scenario, no thresholds)"
bash bench/smoke.sh || die "the benchmark smoke failed"

# --- hostile input and supply chain (docs/security.md) ---
if [ "${SKIP_DENY:-0}" != 1 ]; then
  step "cargo deny (tests/deny.sh: advisories, licences, bans, sources)"
  bash tests/deny.sh || die "cargo deny found problems (see above; docs/security.md)"
fi
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  step "bounded fuzz run (tests/fuzz.sh)"
  bash tests/fuzz.sh || die "a fuzz target failed (see above; docs/security.md)"
fi
# --- end hostile input and supply chain ---

if [ "${SKIP_E2E:-0}" != 1 ]; then
  step "end-to-end tests (tests/e2e/run.sh)"
  bash tests/e2e/run.sh || die "end-to-end tests failed (see FAIL lines above)"
fi

if [ "${SKIP_PACKAGE:-0}" != 1 ]; then
  step "Debian package (tests/package.sh)"
  bash tests/package.sh || die "the Debian package checks failed (see FAIL lines above)"
fi
