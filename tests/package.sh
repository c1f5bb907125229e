#!/bin/bash
# Builds the Debian package, installs it on this machine and checks what an admin gets:
#   packaging/man-pages.sh (the generated man pages), cargo deb -> target/debian/mxsentry_*.deb;
#   apt-get install ./that.deb (dpkg with dependencies);
#   the installed `mxsentry check-config --config /etc/mxsentry/milter.toml` passes; the conffiles,
#   the unit, sysusers and tmpfiles files are in place; `systemd-analyze verify` on the unit when
#   systemd-analyze exists. Needs root (it installs the package). Prints "package: N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
PASS=0; FAIL=0
ok()  { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
finish() { echo "package: $PASS passed, $FAIL failed"; [ "$FAIL" -eq 0 ]; exit $?; }

[ "$(id -u)" = 0 ] || { bad "must run as root (installs the package)"; finish; }
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "# installing cargo-deb"
  timeout 1200 cargo install --locked cargo-deb >/tmp/cargo-deb-install.log 2>&1 \
    || { tail -20 /tmp/cargo-deb-install.log; bad "cargo install cargo-deb"; finish; }
fi
rm -f target/debian/mxsentry_*.deb
# The man pages are assets generated from the CLI and milter.toml (cargo deb needs them present).
if ! timeout 1800 bash packaging/man-pages.sh >/tmp/man-pages.log 2>&1; then
  tail -30 /tmp/man-pages.log; bad "packaging/man-pages.sh"; finish
fi
if ! timeout 1800 cargo deb >/tmp/cargo-deb.log 2>&1; then
  tail -30 /tmp/cargo-deb.log; bad "cargo deb"; finish
fi
deb="$(ls target/debian/mxsentry_*.deb | head -n1)"
check "cargo deb built $deb" [ -s "$deb" ]
contents="$(dpkg-deb -c "$deb")"
for f in ./usr/bin/mxsentry ./usr/lib/systemd/system/mxsentry.service ./usr/lib/sysusers.d/mxsentry.conf \
         ./usr/lib/tmpfiles.d/mxsentry.conf ./etc/mxsentry/milter.toml ./etc/mxsentry/access \
         ./usr/share/man/man8/mxsentry.8.gz ./usr/share/man/man5/milter.toml.5.gz \
         ./usr/share/doc/mxsentry/docs/greylisting.md ./usr/share/doc/mxsentry/docs/reliability.md \
         ./etc/mxsentry/greylist-allow-clients ./etc/mxsentry/greylist-allow-clients.providers \
         ./etc/mxsentry/greylist-allow-senders ./etc/mxsentry/greylist-allow-recipients; do
  check "package contains $f" grep -qF " $f" <<<"$contents"
done
check "conffiles list milter.toml and access" bash -c "dpkg-deb -I '$deb' conffiles | grep -qx /etc/mxsentry/milter.toml && dpkg-deb -I '$deb' conffiles | grep -qx /etc/mxsentry/access"
check "conffiles list the greylist allow files" bash -c "dpkg-deb -I '$deb' conffiles | grep -c '^/etc/mxsentry/greylist-allow-' | grep -qx 4"

export DEBIAN_FRONTEND=noninteractive
if timeout 900 apt-get install -y -q "./$deb" >/tmp/mxsentry-deb-install.log 2>&1; then
  ok "apt-get install ./$(basename "$deb") (dpkg -i with its dependencies)"
else
  tail -30 /tmp/mxsentry-deb-install.log; bad "installing the package"; finish
fi
check "dpkg says mxsentry is installed" bash -c "dpkg-query -W -f '\${Status}' mxsentry | grep -q 'install ok installed'"
out="$(/usr/bin/mxsentry check-config --config /etc/mxsentry/milter.toml 2>&1)"
check "installed check-config on /etc/mxsentry/milter.toml passes ($out)" grep -q ": OK" <<<"$out"
check "installed binary answers --version" /usr/bin/mxsentry --version
check "mxsentry system user exists" getent passwd mxsentry
if command -v man >/dev/null 2>&1; then
  check "man -w finds the installed mxsentry(8)" bash -c "man -w 8 mxsentry | grep -qx /usr/share/man/man8/mxsentry.8.gz"
  check "man -w finds the installed milter.toml(5)" bash -c "man -w 5 milter.toml | grep -qx /usr/share/man/man5/milter.toml.5.gz"
fi
if command -v systemd-analyze >/dev/null 2>&1; then
  out="$(systemd-analyze verify /usr/lib/systemd/system/mxsentry.service 2>&1)"
  # verify also complains about unrelated units of the host; judge only lines about ours
  if grep -i "mxsentry" <<<"$out" | grep -vi "ExecStartPre" | grep -qiE "error|invalid|unknown"; then
    echo "$out" | sed 's/^/#   /'; bad "systemd-analyze verify mxsentry.service"
  else
    ok "systemd-analyze verify mxsentry.service"
  fi
else
  echo "# systemd-analyze not available: unit not verified"
fi
finish
