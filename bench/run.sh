#!/bin/bash
# mxsentry benchmark suite (issue 7). Documented in docs/performance.md.
#
#   bash bench/run.sh            # everything, ~10 min on 2 cores; table on stdout and in
#                                # bench/results/latest.md (raw figures: bench/results/latest.jsonl)
#   BENCH_ONLY="protocol latency" bash bench/run.sh      # a subset (names below)
#
# Scenarios (BENCH_ONLY words): protocol (also runs "all checks, warm DNS" interleaved),
# latency, connections, e2e, greylist (through the milter, and `cargo bench --bench greylist`).
# Knobs: BENCH_RUNS (3), BENCH_DURATION (4 s per throughput run), BENCH_CONC ("1 16 256"),
# BENCH_SOCKET (tcp; unix: the protocol rows of mxsentry, null C and null C same stages over
# unix sockets, the Debian Postfix default),
# BENCH_HOLD (10000 idle connections), BENCH_E2E_MSGS (2000), BENCH_E2E_SESSIONS (20),
# BENCH_E2E_SERIAL (50 messages one at a time), BENCH_LAT_SESSIONS (300),
# BENCH_OUT (latest: the name of the results files), BENCH_KEEP=1 keeps the work directory.
# Needs root for the Postfix part (the test bed's postfix/start.sh); the packages: postfix,
# libmilter-dev, python3-milter, redis-server, a C compiler (tests/testbed/install.sh installs them).
#
# Every server listens on 127.0.0.1, ports 18886-18999 (distinct from the tests' ports):
#   18890 mxsentry protocol   18891 mxsentry all-checks   18892 null C   18893 null Python
#   18894 mxsentry DNS-latency   18895 same, trust_mta = false   18896 mxsentry connections
#   18897 null C connections   18898 mxsentry protocol + CONNECT reply   18899 mxsentry
#   protocol, log level warn   18886/18887 null C with mxsentry's protocol flags (without /
#   with a DATA reply)   18900/18901 mxsentry greylisting (embedded / Redis)   18902 mxsentry
#   for the Postfix e2e (sender rules + greylisting, whitelisted)   18979 redis-server
#   18925 Postfix smtpd   18927 its smtp-sink   1898x/1899x metrics
# Only processes this script started are stopped (by pid), and the throwaway Postfix.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
: "${BENCH_RUNS:=3}"
: "${BENCH_DURATION:=4}"
: "${BENCH_CONC:=1 16 256}"
: "${BENCH_HOLD:=10000}"
: "${BENCH_E2E_MSGS:=2000}"
: "${BENCH_E2E_SESSIONS:=20}"
: "${BENCH_E2E_SERIAL:=50}"
: "${BENCH_ONLY:=protocol latency connections e2e greylist}"
: "${BENCH_LAT_SESSIONS:=300}"
: "${BENCH_SOCKET:=tcp}"
case "$BENCH_SOCKET" in tcp|unix) ;; *) echo "bench: BENCH_SOCKET is tcp or unix" >&2; exit 2 ;; esac
: "${BENCH_OUT:=latest}"       # results go to bench/results/$BENCH_OUT.md and .jsonl
PY=/usr/bin/python3          # Debian's python (python3-milter); a pyenv python3 lacks it
T0=$SECONDS
W="$(mktemp -d /tmp/mxbench-XXXX)"; chmod 755 "$W"
OUT="$ROOT/bench/results"; mkdir -p "$OUT"
JSONL="$W/results.jsonl"; : > "$JSONL"
PIDS=()
TB=""

log() { echo "[bench $(date +%T) +$((SECONDS - T0))s] $*" >&2; }
die() { echo "bench: ERROR: $*" >&2; exit 1; }
want() { [[ " $BENCH_ONLY " == *" $1 "* ]]; }

cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ -n "$TB" ]; then bash "$ROOT/tests/testbed/postfix/stop.sh" "$TB" >/dev/null 2>&1 || true; fi
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then log "work directory kept: $W"; else rm -rf "$W"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD... : runs CMD in the background, logs to $W/NAME.log, remembers its pid
start() {
  local name="$1"; shift
  "$@" > "$W/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid"); echo "$pid" > "$W/$name.pid"
}
stop() {  # stop NAME: TERM the pid started under NAME, wait for it
  local pid; pid="$(cat "$W/$1.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
pid_of() { cat "$W/$1.pid"; }
wait_port() {  # wait_port PORT NAME
  for _ in $(seq 1 100); do
    if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; then return 0; fi
    kill -0 "$(pid_of "$2")" 2>/dev/null || { cat "$W/$2.log" >&2; die "$2 exited"; }
    sleep 0.1
  done
  cat "$W/$2.log" >&2; die "$2 did not listen on $1"
}
port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
# cpu_s PID: utime+stime of PID (all threads) in seconds
cpu_s() { awk '{ split($0, a, ") "); split(a[2], f, " "); printf "%.2f", (f[12] + f[13]) / 100 }' "/proc/$1/stat"; }
sys_s() { awk '{ split($0, a, ") "); split(a[2], f, " "); printf "%.2f", f[13] / 100 }' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }
emit() { echo "$1" >> "$JSONL"; }

ML="$ROOT/target/release/milterload"
MX="$ROOT/target/release/mxsentry"

# ---------------------------------------------------------------------------------------------
log "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
for p in 18886 18887 18890 18891 18892 18893 18894 18895 18896 18897 18898 18899 18900 18901 18902 18979 18925 18927; do
  port_free "$p" || die "port 127.0.0.1:$p is in use (another bench running?)"
done
# 10,000 idle connections need 10,000+ descriptors in the filter and in the generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((BENCH_HOLD + 200)) ]; then
  log "ulimit -n is $(ulimit -n): holding $((BENCH_HOLD)) connections is not possible; using $(( $(ulimit -n) - 200 ))"
  BENCH_HOLD=$(( $(ulimit -n) - 200 ))
fi

# ---------------------------------------------------------------------------------------------
log "build: cargo build --release --workspace --bins; cargo bench --bench greylist --no-run; cc null_filter.c"
tb=$SECONDS
cargo build --release --workspace --bins >"$W/build.log" 2>&1 || { tail -30 "$W/build.log" >&2; die "cargo build failed"; }
if want greylist; then
  cargo bench --bench greylist --no-run >>"$W/build.log" 2>&1 || { tail -30 "$W/build.log" >&2; die "cargo bench --no-run failed"; }
fi
cc -O2 -Wall -o "$W/null_filter" bench/null_filter.c -lmilter -lpthread || die "cannot build bench/null_filter.c (apt-get install libmilter-dev)"
$PY -c 'import Milter' 2>/dev/null || die "python3-milter missing (apt-get install python3-milter)"
BUILD_S=$((SECONDS - tb))
$PY bench/gen.py "$W/data" 100000

# Configs (bench/lib.sh): every mxsentry trusts no network, so the bench's clients are really
# checked.
source "$ROOT/bench/lib.sh"
mxconf() {  # mxconf FILE PORT METRICS_PORT KIND [DNS_ADDR] [EXTRA]
  local f="$1" port="$2"
  mx_config "$f" "$4" "$port" "$3" "$W/data/access" "$W/greylist-$port.db" "${5:-}" "${6:-}" \
    || die "cannot write $f"
  "$MX" check-config --config "$f" >/dev/null || die "bad generated config $f"
}

# one_run SCENARIO FILTER PID EXTRA_JSON MILTERLOAD-ARGS... : one milterload run, one JSONL line
one_run() {
  local scen="$1" filt="$2" pid="$3" extra="$4"; shift 4
  local c0 c1 s0 s1 la out rc=0
  la="$(loadavg)"; c0="$(cpu_s "$pid")"; s0="$(sys_s "$pid")"
  out="$("$ML" --json "$@" 2>>"$W/milterload.err")" || rc=$?
  c1="$(cpu_s "$pid")"; s1="$(sys_s "$pid")"
  [ -n "$out" ] || die "milterload failed ($scen $filt): $(tail -3 "$W/milterload.err")"
  emit "{\"scenario\":\"$scen\",\"filter\":\"$filt\",$extra\"load\":$la,\"filter_cpu_s\":$(awk -v a="$c1" -v b="$c0" 'BEGIN { printf "%.2f", a - b }'),\"filter_sys_s\":$(awk -v a="$s1" -v b="$s0" 'BEGIN { printf "%.2f", a - b }'),\"rc\":$rc,\"ml\":$out}"
  echo "$out"
}

# ---------------------------------------------------------------------------------------------
if want protocol; then
  log "protocol + all checks (warm DNS): start mxsentry x2, null C, null Python, loopback DNS"
  start dns-warm "$ML" --dns-zone "$W/data/warm.zone" --dns-addr-file "$W/dns-warm.addr" --dns-only
  for _ in $(seq 1 100); do [ -s "$W/dns-warm.addr" ] && break; sleep 0.1; done
  [ -s "$W/dns-warm.addr" ] || die "DNS server did not start: $(cat "$W/dns-warm.log")"
  mxconf "$W/protocol.toml" 18890 18980 protocol
  mxconf "$W/checks.toml" 18891 18981 checks "$(cat "$W/dns-warm.addr")"
  # The protocol rows' targets: TCP, or (BENCH_SOCKET=unix) unix sockets beside it.
  ptarget() { if [ "$BENCH_SOCKET" = unix ]; then echo "unix:$W/$1.sock"; else echo "inet:$2@127.0.0.1"; fi; }
  if [ "$BENCH_SOCKET" = unix ]; then
    sed -i "0,/^listen = /s|^listen = .*|listen = [\"inet:18890@127.0.0.1\", \"$(ptarget mx-protocol 18890)\"]|" "$W/protocol.toml"
    start null-c-unix "$W/null_filter" "$(ptarget null-c 18892)" 1024
    start null-c-mxflags-data-unix "$W/null_filter" "$(ptarget null-c-mxflags-data 18887)" 1024 0x7170
  fi
  start mx-protocol "$MX" run --config "$W/protocol.toml"
  start mx-checks "$MX" run --config "$W/checks.toml"
  # Variants for the reading (concurrency 16 only): the protocol config with a CONNECT reply
  # (a [greeting] network no client is in: what Postfix needs to send CONNECT at once), and
  # with [log] level "warn" (no decision lines: the cost of logging).
  mxconf "$W/protocol-connreply.toml" 18898 18988 protocol 127.0.0.1:9 "$(printf '[greeting]\nnetworks = ["203.0.113.0/24"]\n')"
  mxconf "$W/protocol-quiet.toml" 18899 18989 protocol
  sed -i 's/^level = "info"/level = "warn"/' "$W/protocol-quiet.toml"
  start mx-connreply "$MX" run --config "$W/protocol-connreply.toml"
  start mx-quiet "$MX" run --config "$W/protocol-quiet.toml"
  start null-c "$W/null_filter" inet:18892@127.0.0.1 1024
  start null-py $PY bench/null_filter.py inet:18893@127.0.0.1
  # The null C filter negotiating exactly what mxsentry negotiates (0x7370: no DATA, headers,
  # EOH, body, unknown; no reply to CONNECT, HELO, MAIL), and the same answering DATA (0x7170):
  # with Postfix's TCP behaviour (--nagle) they show where the ~40 ms per message comes from.
  start null-c-mxflags "$W/null_filter" inet:18886@127.0.0.1 1024 0x7370
  start null-c-mxflags-data "$W/null_filter" inet:18887@127.0.0.1 1024 0x7170
  wait_port 18890 mx-protocol; wait_port 18891 mx-checks; wait_port 18892 null-c; wait_port 18893 null-py
  wait_port 18898 mx-connreply; wait_port 18899 mx-quiet; wait_port 18886 null-c-mxflags; wait_port 18887 null-c-mxflags-data
  emit "{\"scenario\":\"rss_after_start\",\"filter\":\"mxsentry-protocol\",\"rss_kb\":$(rss_kb "$(pid_of mx-protocol)")}"
  # warm-up: fills the DNS cache (every client of warm.clients) and the allocators
  for t in 18890:default 18891:warm 18892:default 18893:default 18898:default 18899:default 18886:default 18887:default; do
    port="${t%%:*}"; cl="${t#*:}"
    args=(--target "inet:$port@127.0.0.1" --concurrency 16 --duration 2)
    [ "$cl" = warm ] && args+=(--clients "$W/data/warm.clients")
    "$ML" "${args[@]}" > "$W/warmup-$port.txt" 2>&1 || { cat "$W/warmup-$port.txt" >&2; die "warm-up against $port failed"; }
  done
  grep -q "reply accept" "$W/warmup-18891.txt" || { cat "$W/warmup-18891.txt" >&2; die "all-checks sessions are not accepted"; }
  kill -USR1 "$(pid_of dns-warm)"; sleep 0.3
  q0="$(grep -o 'queries [0-9]*' "$W/dns-warm.log" | tail -1 | cut -d' ' -f2)"
  for run in $(seq 1 "$BENCH_RUNS"); do
    for c in $BENCH_CONC; do
      log "protocol/checks run $run/$BENCH_RUNS, concurrency $c (load $(loadavg))"
      common=(--concurrency "$c" --duration "$BENCH_DURATION")
      sock="\"socket\":\"$BENCH_SOCKET\","
      one_run protocol mxsentry "$(pid_of mx-protocol)" "\"c\":$c,\"run\":$run,$sock" \
        --target "$(ptarget mx-protocol 18890)" "${common[@]}" >/dev/null
      if [ "$c" = 16 ]; then
        # variants, right after the base run: sendmail-style writes (every command written at
        # once), CONNECT answered, no decision log lines
        one_run protocol-sendmail mxsentry "$(pid_of mx-protocol)" "\"c\":16,\"run\":$run," \
          --target inet:18890@127.0.0.1 --mta sendmail "${common[@]}" >/dev/null
        one_run protocol-connreply mxsentry "$(pid_of mx-connreply)" "\"c\":16,\"run\":$run," \
          --target inet:18898@127.0.0.1 "${common[@]}" >/dev/null
        one_run protocol-quiet mxsentry "$(pid_of mx-quiet)" "\"c\":16,\"run\":$run," \
          --target inet:18899@127.0.0.1 "${common[@]}" >/dev/null
        # Postfix's TCP behaviour: Nagle on (Postfix sets no TCP_NODELAY on milter sockets)
        one_run protocol-nagle mxsentry "$(pid_of mx-protocol)" "\"c\":16,\"run\":$run," \
          --target inet:18890@127.0.0.1 --nagle "${common[@]}" >/dev/null
        one_run protocol-nagle null-c "$(pid_of null-c)" "\"c\":16,\"run\":$run," \
          --target inet:18892@127.0.0.1 --nagle "${common[@]}" >/dev/null
        one_run protocol-nagle null-c-mxflags "$(pid_of null-c-mxflags)" "\"c\":16,\"run\":$run," \
          --target inet:18886@127.0.0.1 --nagle "${common[@]}" >/dev/null
        one_run protocol-nagle null-c-mxflags-data "$(pid_of null-c-mxflags-data)" "\"c\":16,\"run\":$run," \
          --target inet:18887@127.0.0.1 --nagle "${common[@]}" >/dev/null
      fi
      nc=null-c; ncd=null-c-mxflags-data
      [ "$BENCH_SOCKET" = unix ] && { nc=null-c-unix; ncd=null-c-mxflags-data-unix; }
      one_run protocol null-c "$(pid_of $nc)" "\"c\":$c,\"run\":$run,$sock" \
        --target "$(ptarget null-c 18892)" "${common[@]}" >/dev/null
      # the null C filter negotiating the same stages as mxsentry (issue 15's reference)
      one_run protocol null-c-mxflags-data "$(pid_of $ncd)" "\"c\":$c,\"run\":$run,$sock" \
        --target "$(ptarget null-c-mxflags-data 18887)" "${common[@]}" >/dev/null
      one_run protocol null-py "$(pid_of null-py)" "\"c\":$c,\"run\":$run," \
        --target inet:18893@127.0.0.1 "${common[@]}" >/dev/null
      one_run checks mxsentry "$(pid_of mx-checks)" "\"c\":$c,\"run\":$run," \
        --target inet:18891@127.0.0.1 --clients "$W/data/warm.clients" "${common[@]}" >/dev/null
    done
  done
  kill -USR1 "$(pid_of dns-warm)"; sleep 0.3
  q1="$(grep -o 'queries [0-9]*' "$W/dns-warm.log" | tail -1 | cut -d' ' -f2)"
  emit "{\"scenario\":\"dns_warm_queries\",\"queries\":$((q1 - q0))}"
  emit "{\"scenario\":\"rss_after_load\",\"filter\":\"mxsentry-protocol\",\"rss_kb\":$(rss_kb "$(pid_of mx-protocol)"),\"hwm_kb\":$(hwm_kb "$(pid_of mx-protocol)")}"
  emit "{\"scenario\":\"rss_after_load\",\"filter\":\"mxsentry-checks\",\"rss_kb\":$(rss_kb "$(pid_of mx-checks)"),\"hwm_kb\":$(hwm_kb "$(pid_of mx-checks)")}"
  stop mx-checks; stop null-py; stop dns-warm; stop mx-connreply; stop mx-quiet
  stop null-c-mxflags; stop null-c-mxflags-data
  if [ "$BENCH_SOCKET" = unix ]; then stop null-c-unix; stop null-c-mxflags-data-unix; fi
fi

# ---------------------------------------------------------------------------------------------
if want latency; then
  log "DNS latency hiding: every answer delayed 100 ms, 20 ms MTA gaps, a new client per session"
  start dns-slow "$ML" --dns-zone "$W/data/slow.zone" --dns-addr-file "$W/dns-slow.addr" --dns-only
  for _ in $(seq 1 100); do [ -s "$W/dns-slow.addr" ] && break; sleep 0.1; done
  [ -s "$W/dns-slow.addr" ] || die "DNS server did not start: $(cat "$W/dns-slow.log")"
  mxconf "$W/latency.toml" 18894 18984 checks "$(cat "$W/dns-slow.addr")"
  # Same checks, looking the client's name up itself instead of taking the MTA's verified
  # {client_name} ([rdns] trust_mta = false): the PTR -> A chain is then on the path.
  mxconf "$W/latency-own.toml" 18895 18985 checks "$(cat "$W/dns-slow.addr")"
  sed -i 's/^dynamic = "greylist"$/dynamic = "greylist"\ntrust_mta = false/' "$W/latency-own.toml"
  grep -q '^trust_mta = false' "$W/latency-own.toml" || die "trust_mta not set in latency-own.toml"
  start mx-latency "$MX" run --config "$W/latency.toml"
  start mx-latency-own "$MX" run --config "$W/latency-own.toml"
  kill -0 "$(pid_of null-c 2>/dev/null)" 2>/dev/null || { start null-c "$W/null_filter" inet:18892@127.0.0.1 1024; }
  wait_port 18894 mx-latency; wait_port 18895 mx-latency-own; wait_port 18892 null-c
  lat=(--concurrency 16 --sessions "$BENCH_LAT_SESSIONS" --gap-ms 20 --clients "$W/data/slow.clients")
  off=0
  for run in $(seq 1 "$BENCH_RUNS"); do
    log "latency run $run/$BENCH_RUNS (load $(loadavg))"
    one_run latency mxsentry "$(pid_of mx-latency)" "\"mode\":\"sendmail\",\"run\":$run," \
      --target inet:18894@127.0.0.1 --mta sendmail --client-offset $off "${lat[@]}" >/dev/null
    off=$((off + BENCH_LAT_SESSIONS))
    one_run latency mxsentry "$(pid_of mx-latency)" "\"mode\":\"postfix\",\"run\":$run," \
      --target inet:18894@127.0.0.1 --mta postfix --client-offset $off "${lat[@]}" >/dev/null
    off=$((off + BENCH_LAT_SESSIONS))
    one_run latency mxsentry-own-lookups "$(pid_of mx-latency-own)" "\"mode\":\"sendmail\",\"run\":$run," \
      --target inet:18895@127.0.0.1 --mta sendmail --client-offset $off "${lat[@]}" >/dev/null
    off=$((off + BENCH_LAT_SESSIONS))
    one_run latency mxsentry-own-lookups "$(pid_of mx-latency-own)" "\"mode\":\"postfix\",\"run\":$run," \
      --target inet:18895@127.0.0.1 --mta postfix --client-offset $off "${lat[@]}" >/dev/null
    off=$((off + BENCH_LAT_SESSIONS))
    one_run latency null-c "$(pid_of null-c)" "\"mode\":\"postfix\",\"run\":$run," \
      --target inet:18892@127.0.0.1 --mta postfix "${lat[@]}" >/dev/null
  done
  stop mx-latency; stop mx-latency-own; stop dns-slow
fi

# ---------------------------------------------------------------------------------------------
if want connections; then
  log "connections: RSS idle and with $BENCH_HOLD idle MTA connections"
  mxconf "$W/conn.toml" 18896 18986 protocol
  start mx-conn "$MX" run --config "$W/conn.toml"
  start null-c-conn "$W/null_filter" inet:18897@127.0.0.1 1024
  wait_port 18896 mx-conn; wait_port 18897 null-c-conn
  sleep 1
  for t in mxsentry:mx-conn:18896 null-c:null-c-conn:18897; do
    IFS=: read -r filt name port <<< "$t"
    pid="$(pid_of "$name")"
    idle="$(rss_kb "$pid")"
    : > "$W/hold-$port.out"
    "$ML" --target "inet:$port@127.0.0.1" --hold "$BENCH_HOLD" --concurrency 200 --hold-secs 120 --json \
      > "$W/hold-$port.out" 2>"$W/hold-$port.err" &
    hp=$!; PIDS+=("$hp")
    for _ in $(seq 1 600); do grep -q '^holding' "$W/hold-$port.out" && break; kill -0 $hp 2>/dev/null || break; sleep 0.1; done
    sleep 2
    held_rss="$(rss_kb "$pid")"
    kill -TERM $hp 2>/dev/null || true; wait $hp 2>/dev/null || true
    held="$(grep -o '"held":[0-9]*' "$W/hold-$port.out" | cut -d: -f2)"
    errs="$(grep -o '"errors":[0-9]*' "$W/hold-$port.out" | head -1 | cut -d: -f2)"
    log "$filt: RSS idle ${idle} kB, with ${held:-0} connections ${held_rss} kB"
    emit "{\"scenario\":\"connections\",\"filter\":\"$filt\",\"rss_idle_kb\":$idle,\"rss_held_kb\":$held_rss,\"held\":${held:-0},\"errors\":${errs:-0},\"wanted\":$BENCH_HOLD}"
    sleep 1
  done
  stop mx-conn; stop null-c-conn
fi

# ---------------------------------------------------------------------------------------------
if want e2e; then
  log "end to end: smtp-source -> Postfix -> smtp-sink: without milter, with mxsentry (sender rules + greylisting of whitelisted traffic, nothing trusted), with the null C filter"
  [ "$(id -u)" = 0 ] || die "the Postfix scenario needs root (tests/testbed/postfix/start.sh)"
  # mxsentry as the issue asks: sender rules + greylisting, smtp-source's triplet already
  # whitelisted (every message is a store lookup and update, then accepted), nothing trusted.
  mxconf "$W/e2e.toml" 18902 18992 protocol
  sed -i 's/^enabled = false$/enabled = true/' "$W/e2e.toml"
  "$MX" greylist add --config "$W/e2e.toml" --client-ip 127.0.0.1 \
    --from user@sender.example --rcpt rcpt@example.org > "$W/e2e-greylist-add.log" 2>&1 \
    || { cat "$W/e2e-greylist-add.log" >&2; die "cannot whitelist the e2e triplet"; }
  start mx-e2e "$MX" run --config "$W/e2e.toml"; wait_port 18902 mx-e2e
  TB="$W/testbed"
  PF_PORT=18925 PF_SINK_PORT=18927 MILTER_ADDR=127.0.0.1 MILTER_PORT=18902 \
    bash tests/testbed/postfix/start.sh "$TB" > "$W/postfix-start.log" 2>&1 \
    || { cat "$W/postfix-start.log" >&2; die "postfix did not start"; }
  PFC="$TB/postfix/etc"; SP="$TB/postfix/spool"; SINK="$TB/postfix/sink"
  queue_empty() { [ "$(find "$SP"/incoming "$SP"/active "$SP"/deferred "$SP"/maildrop -type f 2>/dev/null | wc -l)" = 0 ]; }
  drain() { for _ in $(seq 1 600); do queue_empty && return 0; sleep 0.1; done; log "queue not empty after 60 s"; }
  kill -0 "$(pid_of null-c 2>/dev/null)" 2>/dev/null || {
    start null-c "$W/null_filter" inet:18892@127.0.0.1 1024; wait_port 18892 null-c; }
  milter_for() { case "$1" in mxsentry) echo "inet:127.0.0.1:18902";; null-c) echo "inet:127.0.0.1:18892";; *) echo "";; esac; }
  # warm-up (Postfix processes, queue files)
  /usr/sbin/smtp-source -s 10 -m 200 -l 1024 -f user@sender.example -t rcpt@example.org 127.0.0.1:18925 >/dev/null 2>&1 || true
  drain
  TIMEFORMAT='%R %U %S'
  for run in $(seq 1 "$BENCH_RUNS"); do
    case $((run % 3)) in 1) order="mxsentry none null-c";; 2) order="none null-c mxsentry";; 0) order="null-c mxsentry none";; esac
    for setup in $order; do   # rotated: no order bias
      postconf -c "$PFC" -e "smtpd_milters = $(milter_for "$setup")"
      postfix -c "$PFC" reload >/dev/null 2>&1; sleep 2
      drain; rm -f "$SINK"/* 2>/dev/null || true
      d0="$(grep -c ' decision ' "$W/mx-e2e.log" || true)"
      la="$(loadavg)"
      { time /usr/sbin/smtp-source -s "$BENCH_E2E_SESSIONS" -m "$BENCH_E2E_MSGS" -l 1024 \
          -f user@sender.example -t rcpt@example.org 127.0.0.1:18925 > "$W/smtp-source.out" 2>&1 ; } 2> "$W/smtp-source.time"
      read -r real usr sys < "$W/smtp-source.time"
      drain
      # one SMTP client, one message at a time: the latency each message pays
      { time /usr/sbin/smtp-source -s 1 -m "$BENCH_E2E_SERIAL" -l 1024 \
          -f user@sender.example -t rcpt@example.org 127.0.0.1:18925 > "$W/smtp-source.out" 2>&1 ; } 2> "$W/smtp-source.time"
      read -r sreal _ _ < "$W/smtp-source.time"
      drain; sleep 1
      delivered="$(find "$SINK" -type f | wc -l)"
      d1="$(grep -c ' decision ' "$W/mx-e2e.log" || true)"
      log "e2e run $run $setup: $BENCH_E2E_MSGS messages in ${real}s ($BENCH_E2E_SESSIONS sessions), serial ${sreal}s for $BENCH_E2E_SERIAL; delivered $delivered, mxsentry decisions $((d1 - d0)) (load $la)"
      emit "{\"scenario\":\"e2e\",\"setup\":\"$setup\",\"run\":$run,\"msgs\":$BENCH_E2E_MSGS,\"seconds\":$real,\"src_cpu_s\":$(awk -v a="$usr" -v b="$sys" 'BEGIN { printf "%.2f", a + b }'),\"serial_msgs\":$BENCH_E2E_SERIAL,\"serial_seconds\":$sreal,\"delivered\":$delivered,\"decisions\":$((d1 - d0)),\"load\":$la}"
    done
  done
  grep -E 'milter.*(timeout|error|reject)' "$TB/postfix/maillog" | tail -3 >&2 || true
  bash tests/testbed/postfix/stop.sh "$TB" >/dev/null 2>&1 || true; TB=""
  stop mx-e2e
  grep -q 'verdict=accept' "$W/mx-e2e.log" || die "mxsentry accepted nothing in the e2e runs"
  if grep -q 'verdict=tempfail' "$W/mx-e2e.log"; then die "e2e messages were greylisted: the whitelist did not apply"; fi
fi

# ---------------------------------------------------------------------------------------------
# Greylisting. (1) Through the milter: every session a new triplet (`--unique-from`), so every
# RCPT is a store write (451 greylisted); mxsentry with the embedded store (group commit every
# 1 s, design.md's durability) and with Redis (AOF, fsync every second), vs the null C filter
# in the same runs (target >= 0.8x). (2) The store at 1,000,000 triplets: `cargo bench --bench
# greylist` (decisions/s, p50/p99, p99 at 20,000/s, size on disk, RSS).
if want greylist; then
  log "greylist through the milter: a new triplet per session, embedded store and Redis vs null C"
  command -v redis-server >/dev/null || die "redis-server missing (apt-get install redis-server)"
  mkdir -p "$W/redis"
  start redis redis-server --port 18979 --bind 127.0.0.1 --save "" --appendonly yes \
    --appendfsync everysec --dir "$W/redis" --daemonize no
  gl_conf() {  # gl_conf FILE PORT METRICS_PORT STORE_LINES
    mxconf "$1" "$2" "$3" protocol
    sed -i 's/^enabled = false$/enabled = true/' "$1"
    printf '%s\n' "$4" >> "$1.store"
    sed -i "/^path = .*greylist-$2.db\"$/r $1.store" "$1"
    "$MX" check-config --config "$1" >/dev/null || die "bad generated config $1"
  }
  gl_conf "$W/greylist.toml" 18900 18990 'commit_interval = "1s"'
  gl_conf "$W/greylist-redis.toml" 18901 18991 "$(printf 'store = "redis"\nredis_url = "redis://127.0.0.1:18979/0"')"
  grep -q '^enabled = true' "$W/greylist.toml" || die "greylisting not enabled in $W/greylist.toml"
  start mx-greylist "$MX" run --config "$W/greylist.toml"
  start mx-greylist-redis "$MX" run --config "$W/greylist-redis.toml"
  kill -0 "$(pid_of null-c 2>/dev/null)" 2>/dev/null || { start null-c "$W/null_filter" inet:18892@127.0.0.1 1024; }
  wait_port 18900 mx-greylist; wait_port 18901 mx-greylist-redis; wait_port 18892 null-c
  for port in 18900 18901; do
    "$ML" --target "inet:$port@127.0.0.1" --unique-from --concurrency 16 --duration 2 > "$W/warmup-$port.txt" 2>&1 \
      || { cat "$W/warmup-$port.txt" >&2; die "greylist warm-up against $port failed"; }
    grep -q "reply tempfail\|reply replycode" "$W/warmup-$port.txt" || { cat "$W/warmup-$port.txt" >&2; die "no greylisting reply from $port"; }
  done
  for run in $(seq 1 "$BENCH_RUNS"); do
    for c in $BENCH_CONC; do
      log "greylist run $run/$BENCH_RUNS, concurrency $c (load $(loadavg))"
      common=(--unique-from --concurrency "$c" --duration "$BENCH_DURATION")
      one_run greylist-unique mxsentry-embedded "$(pid_of mx-greylist)" "\"c\":$c,\"run\":$run," \
        --target inet:18900@127.0.0.1 "${common[@]}" >/dev/null
      one_run greylist-unique null-c "$(pid_of null-c)" "\"c\":$c,\"run\":$run," \
        --target inet:18892@127.0.0.1 "${common[@]}" >/dev/null
      one_run greylist-unique mxsentry-redis "$(pid_of mx-greylist-redis)" "\"c\":$c,\"run\":$run," \
        --target inet:18901@127.0.0.1 "${common[@]}" >/dev/null
    done
  done
  # What the daemons hold after the runs: RSS; the embedded store's size on disk and (once the
  # daemon is stopped: the file is locked while it runs) its entries.
  sleep 1.5   # one group commit
  gl_rss="$(rss_kb "$(pid_of mx-greylist)")"; glr_rss="$(rss_kb "$(pid_of mx-greylist-redis)")"
  redis_rss="$(rss_kb "$(pid_of redis)")"
  stop mx-greylist; stop mx-greylist-redis; stop redis
  gl_entries="$("$MX" greylist list --limit 1000000000 --config "$W/greylist.toml" 2>/dev/null | grep -c '^t:' || true)"
  emit "{\"scenario\":\"greylist_daemon\",\"filter\":\"mxsentry-embedded\",\"rss_kb\":$gl_rss,\"store_bytes\":$(du -sb "$W/greylist-18900.db" | cut -f1),\"triplets\":${gl_entries:-0}}"
  emit "{\"scenario\":\"greylist_daemon\",\"filter\":\"mxsentry-redis\",\"rss_kb\":$glr_rss,\"redis_rss_kb\":$redis_rss}"

  log "greylist store at 1,000,000 triplets: cargo bench --bench greylist"
  GL_BENCH_JSONL="$JSONL" cargo bench --bench greylist > "$W/greylist-bench.txt" 2>&1 \
    || { tail -20 "$W/greylist-bench.txt" >&2; die "cargo bench --bench greylist failed"; }
  grep -E '^(embedded|redis)' "$W/greylist-bench.txt" | sed 's/^/  /' >&2 || true
fi

# ---------------------------------------------------------------------------------------------
kill -0 "$(pid_of mx-protocol 2>/dev/null)" 2>/dev/null && stop mx-protocol
kill -0 "$(pid_of null-c 2>/dev/null)" 2>/dev/null && stop null-c
TOTAL=$((SECONDS - T0))
emit "{\"scenario\":\"meta\",\"build_s\":$BUILD_S,\"total_s\":$TOTAL,\"nproc\":$(nproc),\"cpu\":\"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\",\"kernel\":\"$(uname -r)\",\"load_end\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"date\":\"$(date -u +%FT%TZ)\",\"commit\":\"$(git rev-parse --short HEAD 2>/dev/null || echo -)$(git diff --quiet 2>/dev/null || echo +dirty)\",\"runs\":$BENCH_RUNS,\"duration\":$BENCH_DURATION}"
cp "$JSONL" "$OUT/$BENCH_OUT.jsonl"
$PY bench/report.py "$JSONL" > "$OUT/$BENCH_OUT.md"
cat "$OUT/$BENCH_OUT.md"
log "done in ${TOTAL}s; table in bench/results/$BENCH_OUT.md, raw figures in bench/results/$BENCH_OUT.jsonl"
