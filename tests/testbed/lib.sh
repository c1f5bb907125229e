# Common helpers for the mxsentry test bed (tests/testbed/*). Source it; do not run it.
# Everything the test bed starts listens on 127.0.0.0/8 only; start scripts refuse other addresses.
# shellcheck shell=bash
TB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Defaults (override through the environment). All addresses are loopback.
: "${DNS_ADDR:=127.0.0.1}"; : "${DNS_PORT:=5353}"
: "${DNS_RESOLVER_ADDR:=127.0.0.153}"   # extra listener on :53 for the MTAs' libc resolver
: "${MILTER_ADDR:=127.0.0.1}";  : "${MILTER_PORT:=8891}"
: "${MILTER_DEFAULT_ACTION:=tempfail}"  # accept | reject | tempfail | quarantine (postfix)
: "${PF_ADDR:=127.0.0.1}";  : "${PF_PORT:=2525}";  : "${PF_SINK_PORT:=2527}"
: "${SM_ADDR:=127.0.0.1}";  : "${SM_PORT:=2526}";  : "${SM_SINK_PORT:=2528}"
SYS_PY=/usr/bin/python3      # Debian python: has python3-dnslib / python3-milter (pyenv's python3 has not)
: "${SENDMAIL_ROOT:=/opt/testbed-sendmail}"   # where install.sh unpacks sendmail-bin (conflicts with postfix)

die() { echo "ERROR: $*" >&2; exit 1; }
log() { echo "[testbed] $*" >&2; }

# tb_dir [DIR] -> prints the state dir, creating /tmp/testbed-XXXX when none given
tb_dir() {
  local d="${1:-${TESTBED_DIR:-}}"
  if [ -z "$d" ]; then d="$(mktemp -d /tmp/testbed-XXXX)"; fi
  # mktemp makes it 0700: postfix's own user must be able to reach its data dir inside
  mkdir -p "$d" && chmod 755 "$d" && (cd "$d" && pwd)
}

# is_loopback ADDR
is_loopback() { case "$1" in 127.*|::1) return 0;; *) return 1;; esac; }

# wait_tcp HOST PORT SECONDS : wait until something accepts on HOST:PORT
wait_tcp() {
  local h="$1" p="$2" t="${3:-10}" end=$((SECONDS + ${3:-10}))
  while [ $SECONDS -lt $end ]; do
    if timeout 1 bash -c "exec 3<>/dev/tcp/$h/$p" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  return 1
}

# port_free HOST PORT
port_free() { ! timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# pid_alive PIDFILE
pid_alive() { [ -s "$1" ] && kill -0 "$(head -n1 "$1")" 2>/dev/null; }

# stop_pid PIDFILE [SECONDS]: TERM the pid in PIDFILE, wait, then KILL. Only that pid.
stop_pid() {
  local f="$1" t="${2:-10}" pid end
  [ -s "$f" ] || return 0
  pid="$(head -n1 "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    end=$((SECONDS + t))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

# write_ns_files DIR : private /etc/hosts + resolv.conf for an MTA's mount namespace
write_ns_files() {
  local d="$1"
  mkdir -p "$d"
  cat > "$d/hosts" <<EOT
127.0.0.1 localhost mta.testbed.test mta
::1 localhost ip6-localhost
EOT
  cat > "$d/resolv.conf" <<EOT
# testbed: libc lookups of the MTAs go only to the testbed DNS server (loopback)
nameserver $DNS_RESOLVER_ADDR
options timeout:2 attempts:1
EOT
}

# ns_exec NSDIR CMD... : run CMD in a private mount+UTS namespace where /etc/hosts and
# /etc/resolv.conf are NSDIR/hosts and NSDIR/resolv.conf (libc lookups -> testbed DNS only) and the
# hostname is mta.testbed.test. Falls back to a plain exec when TB_NO_NS=1 (then the MTA configs
# turn their own lookups off).
ns_exec() {
  local nsd="$1"; shift
  if [ "${TB_NO_NS:-0}" = 1 ]; then "$@"; return; fi
  unshare -m -u -- /bin/sh -c '
    set -e; nsd="$1"; shift
    mount --make-rprivate / 2>/dev/null || true
    mount --bind "$nsd/hosts" /etc/hosts
    mount --bind "$nsd/resolv.conf" /etc/resolv.conf
    hostname mta.testbed.test
    exec "$@"' ns_exec "$nsd" "$@"
}

# ns_ok : can this machine make the namespaces ns_exec needs?
ns_ok() { unshare -m -u -- /bin/true 2>/dev/null; }
