#!/bin/bash
# Command-line contract of the mxsentry binary (no network, no MTA): `check-config` accepts the e2e
# config (exit 0) and reports a broken one as `FILE:LINE: reason` with exit 1 (both a TOML syntax
# error and an invalid value, each on a known line); `access import` converts the sendmail-style
# access file of the tests (exit 0, some output).
# Usage: bash tests/e2e/cli.sh
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init cli
[ -x "$MXSENTRY_BIN" ] || { bad "$MXSENTRY_BIN missing: run 'cargo build' first"; e2e_finish; }
S="$(mx_dir)"; mkdir -p "$S"; W="$S/cli"; mkdir -p "$W"
mx_write_config

out="$(timeout 60 "$MXSENTRY_BIN" check-config --config "$S/mxsentry.toml" 2>&1)"; rc=$?
check "check-config: the e2e config is valid (exit $rc)" [ "$rc" -eq 0 ] || sed 's/^/#   /' <<<"$out"

# check_broken NAME LINE FILE : check-config exits 1 and names FILE:LINE
check_broken() {
  local name="$1" line="$2" f="$3" out rc
  out="$(timeout 60 "$MXSENTRY_BIN" check-config --config "$f" 2>&1)"; rc=$?
  check "check-config: $name -> exit 1 (got $rc)" [ "$rc" -eq 1 ]
  check "check-config: $name -> '$f:$line: reason'" grep -qE "^$f:$line: ." <<<"$out" || sed 's/^/#   got: /' <<<"$out"
}

cat > "$W/syntax.toml" <<EOT
[milter]
listen = ["inet:$MILTER_PORT@127.0.0.1"]
hostname = "unterminated
EOT
check_broken "TOML syntax error on line 3" 3 "$W/syntax.toml"

cat > "$W/badvalue.toml" <<EOT
[milter]
listen = ["inet:$MILTER_PORT@127.0.0.1"]
hostname = "mx.example.org"
[greylist]
enabled = false
delay = "soon"
EOT
check_broken "invalid duration on line 6" 6 "$W/badvalue.toml"

cat > "$W/badlisten.toml" <<EOT
[milter]
listen = ["carrier-pigeon:8891"]
hostname = "mx.example.org"
EOT
check_broken "invalid listen socket on line 2" 2 "$W/badlisten.toml"

out="$(timeout 60 "$MXSENTRY_BIN" access import "$S/access" 2>&1)"; rc=$?
check "access import: the test access file converts (exit $rc)" [ "$rc" -eq 0 ] || sed 's/^/#   /' <<<"$out" | head -n 10
check "access import: prints the converted rules" [ -n "$out" ]
e2e_finish
