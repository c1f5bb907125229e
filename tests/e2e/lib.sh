# Shared helpers for the mxsentry end-to-end suites (tests/e2e/*.sh). Source it; do not run it.
#
# A suite calls `e2e_init NAME`, then `e2e_need dns daemon postfix ...` for what it uses, runs its
# checks with `check`/`ok`/`bad`, and ends with `e2e_finish`. Everything lives in one state dir:
#   - run by tests/e2e/run.sh: E2E_STATE is set, run.sh started (and will stop) everything;
#   - run alone (bash tests/e2e/postfix.sh): a fresh /tmp/mxsentry-e2e-XXXX is made, and whatever
#     the suite started is stopped again on exit (trap), pass or fail. E2E_KEEP=1 keeps the dir.
# The daemon under test is $MXSENTRY_BIN (default: target/debug/mxsentry), started as
#   mxsentry run --config STATE/mxsentry/mxsentry.toml   (stderr -> STATE/mxsentry/mxsentry.log)
# with a generated config (inet:$MILTER_PORT@127.0.0.1 + unix:STATE/mxsentry/mxsentry.sock).
# All waits are bounded and poll; nothing here sleeps a fixed time to "let things settle".
# shellcheck shell=bash

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$E2E_DIR/../.." && pwd)"
# E2E_PORT_OFFSET=N moves every port by N*100 and the MTAs' resolver to 127.0.0.(153+N), so two
# runs can share a machine. Unset, the first N whose ports are all free is used (0 on CI) -- by
# run.sh or a suite run alone; suites run by run.sh inherit its N. Explicit *_PORT variables win.
if [ -z "${E2E_PORT_OFFSET:-}" ]; then
  for _n in 0 1 2 3 4 5 6 7 8 9; do
    _b=$((_n * 100)); _busy=0
    for _hp in 127.0.0.1:$((5353 + _b)) 127.0.0.1:$((8891 + _b)) 127.0.0.1:$((9891 + _b)) \
               127.0.0.1:$((2525 + _b)) 127.0.0.1:$((2526 + _b)) 127.0.0.1:$((2527 + _b)) \
               127.0.0.1:$((2528 + _b)) 127.0.0.$((153 + _n)):53; do
      if timeout 1 bash -c "exec 3<>/dev/tcp/${_hp%:*}/${_hp#*:}" 2>/dev/null; then _busy=1; break; fi
    done
    [ "$_busy" = 0 ] && break
  done
  export E2E_PORT_OFFSET="$_n"
fi
if [ -n "${E2E_PORT_OFFSET:-}" ] && [ "$E2E_PORT_OFFSET" != 0 ]; then
  _o=$((E2E_PORT_OFFSET * 100))
  : "${DNS_PORT:=$((5353 + _o))}" "${MILTER_PORT:=$((8891 + _o))}" "${METRICS_PORT:=$((9891 + _o))}"
  : "${PF_PORT:=$((2525 + _o))}" "${SM_PORT:=$((2526 + _o))}"
  : "${PF_SINK_PORT:=$((2527 + _o))}" "${SM_SINK_PORT:=$((2528 + _o))}"
  : "${DNS_RESOLVER_ADDR:=127.0.0.$((153 + E2E_PORT_OFFSET))}"
fi
# shellcheck source=../testbed/lib.sh
. "$REPO_ROOT/tests/testbed/lib.sh"
TB_DIR="$REPO_ROOT/tests/testbed"
# the testbed start scripts run as child processes: they must see the same addresses and ports
export DNS_ADDR DNS_PORT DNS_RESOLVER_ADDR MILTER_ADDR MILTER_PORT MILTER_DEFAULT_ACTION \
  PF_ADDR PF_PORT PF_SINK_PORT SM_ADDR SM_PORT SM_SINK_PORT SENDMAIL_ROOT

: "${MXSENTRY_BIN:=$REPO_ROOT/target/debug/mxsentry}"
: "${METRICS_PORT:=9891}"
: "${E2E_WAIT:=60}"          # seconds for anything to show up (sink, logs); generous for slow CI

PASS=0; FAIL=0; E2E_NAME="e2e"; E2E_OWNER=0; E2E_STARTED=()

ok()  { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
# check "description" CMD ARGS... : ok if CMD succeeds (returns CMD's success, for `|| diagnostics`)
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; return 1; fi; }
note() { echo "# $*"; }

# wait_for SECONDS CMD ARGS... : poll CMD every 0.2s until it succeeds or SECONDS pass
wait_for() {
  local end=$((SECONDS + $1)); shift
  while :; do
    "$@" && return 0
    [ $SECONDS -ge $end ] && return 1
    sleep 0.2
  done
}

# --- sinks (smtp-sink -d: one file per accepted transaction, created before it is written) ---
nsink() { find "$1" -maxdepth 1 -type f 2>/dev/null | wc -l; }
sink_has() { grep -qsF -- "$2" "$1"/* 2>/dev/null; }            # sink_has DIR FIXED-STRING
# wait_sink DIR FIXED-STRING [SECONDS] : a mail containing the string reached the sink
wait_sink() { wait_for "${3:-$E2E_WAIT}" sink_has "$1" "$2"; }
# wait_grep_sink_mail ID REGEX : the sink file holding ID (a unique header value) matches REGEX
_sink_mail_has() { local f; f="$(grep -lsF -- "$1" "$SINK"/* 2>/dev/null | head -n1)"; [ -n "$f" ] && grep -qE -- "$2" "$f"; }
wait_grep_sink_mail() { wait_for "${3:-$E2E_WAIT}" _sink_mail_has "$1" "$2"; }
# wait_grep FILE REGEX [SECONDS] : REGEX (grep -E) shows up in FILE
_grep_file() { grep -qsE -- "$2" "$1"; }
wait_grep() { wait_for "${3:-$E2E_WAIT}" _grep_file "$1" "$2"; }

# --- swaks transcript helpers ---
# reply_to CMD TRANSCRIPT : the first server reply line that follows the client's CMD line
#   (e.g. reply_to "RCPT TO" "$out" -> "<** 550 5.7.1 Access denied")
reply_to() {
  awk -v cmd="$1" '
    found && /^ *<[-*~]/ { sub(/^ */, ""); print; exit }
    !found && index($0, "-> " cmd) { found = 1 }' <<<"$2"
}
# reply_is CMD TRANSCRIPT REGEX : that reply matches REGEX (grep -E), e.g. '^<\*\* 550 5\.7\.1 '
reply_is() {
  local r; r="$(reply_to "$1" "$2")"
  if grep -qE -- "$3" <<<"$r"; then return 0; fi
  echo "#   reply to $1 was: ${r:-<none>} (wanted /$3/)"; return 1
}

# --- the daemon's decision log ---
mx_dir() { echo "$D/mxsentry"; }
MXLOG() { echo "$D/mxsentry/mxsentry.log"; }
# mxlog : the daemon's stderr log with ANSI colour codes removed
mxlog() { sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$(MXLOG)" 2>/dev/null; }
# mxlog_count FIXED... : number of log lines containing every given fixed string
mxlog_count() {
  local out; out="$(mxlog)"
  local s; for s in "$@"; do out="$(grep -F -- "$s" <<<"$out" || true)"; done
  if [ -z "$out" ]; then echo 0; else wc -l <<<"$out"; fi
}
_mxlog_has() { [ "$(mxlog_count "$@")" -ge 1 ]; }
# wait_mxlog FIXED... : a log line with all these strings shows up (bounded)
# (the line is written before or as the reply goes out, so a short bound suffices)
wait_mxlog() { wait_for "${E2E_LOG_WAIT:-15}" _mxlog_has "$@"; }
# mxlog_show FIXED... : print the matching lines (for diagnostics)
mxlog_show() {
  local out; out="$(mxlog)"
  local s; for s in "$@"; do out="$(grep -F -- "$s" <<<"$out" || true)"; done
  sed 's/^/#   log: /' <<<"$out" | head -n 5
}

# --- config + daemon lifecycle ---
mx_write_config() {
  local S; S="$(mx_dir)"; mkdir -p "$S"
  cat > "$S/access" <<'EOT'
# test access file
From:reject.example        REJECT
From:discard.example       DISCARD
From:banned.example        ERROR:"550 Sender banned. Please use legitimate domain"
From:tempfail.example      TEMPFAIL
From:dsn.example           ERROR:5.7.1:"550 Go away"
linkedin.com               DISCARD
From:friend.example        OK
To:blocked@example.org     REJECT
To:gone@example.org        ERROR:5.1.1:"550 User unknown"
To:spamtrap@example.org    DISCARD
Connect:192.0.2.66         REJECT
EOT
  cat > "$S/mxsentry.toml" <<EOT
# generated by tests/e2e/lib.sh for the end-to-end tests (loopback only)
[milter]
listen = ["inet:$MILTER_PORT@$MILTER_ADDR", "unix:$S/mxsentry.sock"]
hostname = "mx.example.org"

[trusted]
networks = ["127.0.0.1/32", "192.0.2.200/32"]
authenticated = true

[dns]
nameservers = ["$DNS_ADDR:$DNS_PORT"]

[[dnsbl.zones]]
zone = "bl.test"

[[dnsbl.domain_zones]]
zone = "dbl.test"

[[dnsbl.allow_zones]]
zone = "wl.test"

[greylist]
enabled = false
path = "$S/greylist.db"

[sender_rules]
access_file = "$S/access"

[[sender_rules.regex]]
pattern = '^[^@]+@(emalsrv|complains)\.'
action = 'ERROR:"550 5.7.1 Sender banned"'

[metrics]
listen = "127.0.0.1:$METRICS_PORT"

[control]
socket = "$S/control.sock"
EOT
}

# mx_zones_probed : `mxsentry status` answers and no DNS list zone is still waiting for its
# first health probe
mx_zones_probed() {
  local out
  out="$("$MXSENTRY_BIN" status --config "$(mx_dir)/mxsentry.toml" 2>/dev/null)" || return 1
  grep -q '^dnsbl zone' <<<"$out" && ! grep -q 'not yet probed' <<<"$out"
}

mx_start() {
  local S; S="$(mx_dir)"
  if pid_alive "$S/pid"; then return 0; fi
  [ -x "$MXSENTRY_BIN" ] || { echo "# $MXSENTRY_BIN missing: run 'cargo build' first" >&2; return 1; }
  is_loopback "$MILTER_ADDR" || die "MILTER_ADDR must be loopback"
  port_free "$MILTER_ADDR" "$MILTER_PORT" || { echo "# $MILTER_ADDR:$MILTER_PORT already in use (set MILTER_PORT)" >&2; return 1; }
  port_free 127.0.0.1 "$METRICS_PORT" || { echo "# 127.0.0.1:$METRICS_PORT already in use (set METRICS_PORT)" >&2; return 1; }
  mx_write_config
  if ! "$MXSENTRY_BIN" check-config --config "$S/mxsentry.toml" > "$S/check-config.out" 2>&1; then
    echo "# mxsentry check-config rejected the generated config:" >&2; sed 's/^/#   /' "$S/check-config.out" >&2
    return 1
  fi
  rm -f "$S/mxsentry.sock"
  NO_COLOR=1 setsid "$MXSENTRY_BIN" run --config "$S/mxsentry.toml" \
    >> "$S/stdout.log" 2>> "$S/mxsentry.log" < /dev/null &
  echo $! > "$S/pid"
  local end=$((SECONDS + 60))
  while [ $SECONDS -lt $end ]; do
    if ! pid_alive "$S/pid"; then
      echo "# mxsentry exited during startup; log tail:" >&2; tail -n 20 "$S/mxsentry.log" | sed 's/^/#   /' >&2
      rm -f "$S/pid"; return 1
    fi
    if ! port_free "$MILTER_ADDR" "$MILTER_PORT" && [ -S "$S/mxsentry.sock" ]; then
      log "mxsentry up (pid $(cat "$S/pid")) on inet:$MILTER_PORT@$MILTER_ADDR and unix:$S/mxsentry.sock; log $S/mxsentry.log"
      # A DNS list blocks only once its first health probe passed: wait for that (bounded).
      wait_for 30 mx_zones_probed || echo "# mxsentry: DNS list zones not all probed within 30s" >&2
      return 0
    fi
    sleep 0.2
  done
  echo "# mxsentry not listening on inet:$MILTER_PORT@$MILTER_ADDR + unix:$S/mxsentry.sock after 60s; log tail:" >&2
  tail -n 20 "$S/mxsentry.log" | sed 's/^/#   /' >&2
  return 1
}

mx_stop() { stop_pid "$(mx_dir)/pid" 15; }

# --- state dir, components, teardown ---
# e2e_init NAME : set D (state dir) and the suite name; install the teardown trap when we own D
e2e_init() {
  E2E_NAME="$1"
  if [ -n "${E2E_STATE:-}" ]; then
    D="$E2E_STATE"
  else
    D="$(mktemp -d /tmp/mxsentry-e2e-XXXX)"; chmod 755 "$D"; E2E_OWNER=1
    trap e2e_teardown EXIT
    trap 'exit 130' INT TERM
    note "state dir $D"
  fi
  export D
}

# e2e_start COMPONENT : start one component in $D (idempotent); non-zero on failure
# (its chatter goes to $D/start-COMPONENT.log and is shown only when the start fails)
e2e_start() {
  local rc=0 f="$D/start-$1.log"
  case "$1" in
    dns|postfix|sendmail) bash "$TB_DIR/$1/start.sh" "$D" >/dev/null 2>>"$f" || rc=$? ;;
    daemon) mx_start 2>>"$f" || rc=$? ;;
    *) die "unknown component $1" ;;
  esac
  if [ "$rc" -ne 0 ]; then echo "# starting $1 failed:"; sed 's/^/#   /' "$f"; fi
  return "$rc"
}

# e2e_stop COMPONENT
e2e_stop() {
  case "$1" in
    daemon) mx_stop ;;
    dns|postfix|sendmail) bash "$TB_DIR/$1/stop.sh" "$D" >/dev/null 2>&1 ;;
  esac
}

# e2e_need COMPONENT... : make sure they run; a failure ends the suite with one FAIL
e2e_need() {
  local c
  for c in "$@"; do
    E2E_STARTED+=("$c")      # recorded first: a half-started component is stopped too
    if ! e2e_start "$c"; then
      bad "start $c"
      e2e_finish
    fi
  done
}

# Stops what this process started (only when it owns the state dir), in reverse order.
e2e_teardown() {
  local rc=$? i
  trap - EXIT
  if [ "$E2E_OWNER" = 1 ]; then
    for (( i=${#E2E_STARTED[@]}-1; i>=0; i-- )); do e2e_stop "${E2E_STARTED[$i]}" || true; done
    if [ "${E2E_KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then echo "# state kept in $D"; else rm -rf "$D"; fi
  fi
  exit "$rc"
}

# e2e_finish : print "NAME: N passed, M failed" and exit non-zero on any failure
e2e_finish() {
  echo "$E2E_NAME: $PASS passed, $FAIL failed"
  [ "$FAIL" -eq 0 ] && exit 0
  exit 1
}
