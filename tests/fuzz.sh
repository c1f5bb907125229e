#!/bin/bash
# Bounded fuzz run of the cargo-fuzz targets (fuzz/fuzz_targets) on the STABLE toolchain, from
# the kept seed corpus (fuzz/corpus/<target>). Fails on the first crash, panic, timeout or
# out-of-memory, printing the input (base64) and where libFuzzer saved it.
#   bash tests/fuzz.sh                  all targets, FUZZ_SECONDS each
#   bash tests/fuzz.sh access config    only these
# Env: FUZZ_SECONDS (per target, default 60); FUZZ_SANITIZER (none or address, default none:
# the code under test is safe Rust, where a bug shows as a panic; address also needs the ASan
# runtime in rust-std, which stable ships for x86_64-unknown-linux-gnu).
# Needs cargo-fuzz (tests/tools-install.sh installs the pinned version). cargo-fuzz passes -Z
# flags to rustc; RUSTC_BOOTSTRAP=1 lets stable accept them, for this build only.
# New inputs found during the run go to a temporary directory, never into fuzz/corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${FUZZ_SECONDS:-60}"
SANITIZER="${FUZZ_SANITIZER:-none}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
die() { echo "fuzz: FAILED: $*" >&2; exit 1; }

cargo fuzz --version >/dev/null 2>&1 || die "cargo-fuzz is not installed (bash tests/tools-install.sh)"
if [ $# -gt 0 ]; then targets=("$@"); else
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -vx mxsentry-fuzz)
fi

t0=$SECONDS
# cargo fuzz build has no --locked: check fuzz/Cargo.lock is current first.
cargo fetch --locked --manifest-path fuzz/Cargo.toml >/dev/null \
  || die "fuzz/Cargo.lock is out of date (cd fuzz && cargo update -w)"
echo "fuzz: building ${targets[*]} ($(rustc --version), sanitizer $SANITIZER)"
# -O -a: optimised (more executions) but with debug assertions and overflow checks on.
RUSTC_BOOTSTRAP=1 cargo fuzz build -O -a --sanitizer "$SANITIZER" \
  || die "cargo fuzz build failed"
echo "fuzz: built in $((SECONDS - t0))s"

work="$(mktemp -d /tmp/mxsentry-fuzz-XXXXXX)"
trap 'rm -rf "$work"' EXIT
summary=()
for t in "${targets[@]}"; do
  bin="fuzz/target/$TRIPLE/release/$t"
  [ -x "$bin" ] || die "no fuzz target $t ($bin)"
  [ -d "fuzz/corpus/$t" ] || die "no seed corpus fuzz/corpus/$t"
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  log="$work/$t/log"
  echo "fuzz: $t for ${SECONDS_EACH}s from $(find "fuzz/corpus/$t" -type f | wc -l) seeds"
  # The first corpus directory receives new inputs: the scratch one, not the kept seeds.
  # -timeout: one input running 10 s is a finding (a hang), not a slow machine.
  if ! "$bin" "$work/$t/corpus" "fuzz/corpus/$t" -max_total_time="$SECONDS_EACH" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" \
      > "$log" 2>&1; then
    grep -v '^#[0-9]' "$log" | tail -n 60 >&2
    for a in "$work/$t/artifacts/"*; do
      [ -f "$a" ] && { echo "fuzz: input that fails $t (base64): $(base64 -w0 "$a")" >&2; \
        mkdir -p fuzz/artifacts/"$t"; cp "$a" fuzz/artifacts/"$t"/; \
        echo "fuzz: saved as fuzz/artifacts/$t/$(basename "$a"); reproduce: $bin fuzz/artifacts/$t/$(basename "$a")" >&2; }
    done
    die "target $t crashed (see above); add the input as a regression test"
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)"
  echo "fuzz: $t: ${runs:-?} executions (${rate:-?}/s, coverage ${cov:-?} edges), 0 crashes"
  summary+=("$t ${runs:-?}")
done
echo "fuzz: all ${#targets[@]} targets clean in $((SECONDS - t0))s: ${summary[*]}"
