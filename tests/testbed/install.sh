#!/bin/bash
# Install everything the mxsentry end-to-end tests need on Debian 12, as root. Idempotent.
#   - postfix (preseeded "No configuration": no system instance is set up or started)
#   - swaks (SMTP client), bind9-dnsutils (dig), miltertest (Lua milter driver), libmilter-dev,
#     mount + e2fsprogs (the store fault tests: ext4 on a loop device, mkfs.ext4, e2fsck),
#     python3 + python3-dnslib (tests/testbed/dns/server.py), sendmail-cf + m4 (builds sendmail.cf),
#     procps + util-linux (ps, unshare, setsid), groff-base + man-db (tests/manpages.rs renders the
#     generated man pages with groff and man -l; tests/package.sh finds them with man -w),
#     postgrey + db5.3-util (tests/import_postgrey.rs runs the real postgrey; the importer reads its
#     BerkeleyDB files with db_recover/db_dump)
#   - sendmail: sendmail-bin CONFLICTS with postfix (both provide mail-transport-agent), so it is NOT
#     installed: its .deb is downloaded and unpacked into $SENDMAIL_ROOT (/opt/testbed-sendmail), and its
#     runtime libraries + sendmail-cf (m4 macros, no conflict) are installed normally.
# Env: TB_SKIP_APT_UPDATE=1 skips `apt-get update`; SENDMAIL_ROOT overrides the unpack directory.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
t0=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt_log="$(mktemp /tmp/mxsentry-apt-XXXXXX.log)"
if [ "${TB_SKIP_APT_UPDATE:-0}" != 1 ]; then
  timeout 600 apt-get update -qq >"$apt_log" 2>&1 || { tail -30 "$apt_log" >&2; die "apt-get update failed"; }
fi
timeout 900 apt-get install -y -q --no-install-recommends \
  postfix swaks bind9-dnsutils miltertest libmilter-dev python3 python3-dnslib python3-milter \
  sendmail-cf m4 libwrap0 liblockfile1 libldap-2.5-0 libdb5.3 libnsl2 libsasl2-2 procps util-linux mount e2fsprogs redis-server redis-tools openssl python3-prometheus-client \
  groff-base man-db postgrey db5.3-util gcc make libc6-dev \
  >>"$apt_log" 2>&1 || { tail -30 "$apt_log" >&2; die "apt-get install failed (log: $apt_log)"; }
if [ ! -x "$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail" ]; then
  tmp="$(mktemp -d)"
  (cd "$tmp" && timeout 300 apt-get download -q sendmail-bin >>"$apt_log" 2>&1) \
    || { tail -30 "$apt_log" >&2; die "apt-get download sendmail-bin failed"; }
  mkdir -p "$SENDMAIL_ROOT"
  dpkg -x "$tmp"/sendmail-bin_*.deb "$SENDMAIL_ROOT"
  rm -rf "$tmp"
fi
[ -x "$SENDMAIL_ROOT/usr/libexec/sendmail/sendmail" ] || die "sendmail binary missing after unpack"
rm -f "$apt_log"
# The package's own postgrey (port 10023) is not needed: the tests start theirs on a free port.
# Where the machine let the package start it (no policy-rc.d), stop it.
if command -v postgrey >/dev/null && pgrep -f '^/usr/sbin/postgrey' >/dev/null 2>&1; then
  invoke-rc.d postgrey stop >/dev/null 2>&1 || service postgrey stop >/dev/null 2>&1 || true
fi
for t in db5.3_recover db5.3_dump postgrey; do command -v "$t" >/dev/null || die "$t missing after install"; done
# NB: never run this sendmail outside sendmail/start.sh's namespace: at startup it qualifies the host
# name through DNS (the system resolver, i.e. not loopback) and sleeps 60s when that fails.
echo "sendmail-bin $(apt-cache policy sendmail-bin | awk '/Candidate/{print $2}') unpacked in $SENDMAIL_ROOT"
echo "postfix $(postconf -dh mail_version); $(dpkg-query -W -f '${Package} ${Version}; ' swaks miltertest python3-dnslib bind9-dnsutils)"
echo "install took $(( $(date +%s) - t0 ))s"
