#!/usr/bin/env bash
# Installs the Debian package on this machine and checks it as a user would meet it, then
# removes it (purge, and the `ringlb` user when this check made it) so the machine is left as it
# was: `dpkg -i`, the files and the `ringlb` user are there, `ringlb check` passes on the shipped
# /etc/ringlb/ringlb.toml (as root and as the ringlb user), `ringlb run` as the ringlb user
# prints its ready line and stops on SIGTERM.
# Any failure stops the script with a message and a non-zero exit.
#
# Needs root. Usage: tools/deb-check.sh [PACKAGE.deb]   (default: build it with tools/deb.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "deb-check: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"

deb=${1:-}
if [ -z "$deb" ]; then
  deb=$(tools/deb.sh | tail -n 1)
fi
[ -f "$deb" ] || fail "no package at $deb"

if dpkg -s ringlb >/dev/null 2>&1; then
  fail "a ringlb package is installed already; remove it first (dpkg --purge ringlb)"
fi
out=$(mktemp -d)
run_pid=""
# The package keeps its user on purge (as Debian does); one this check made goes with it.
user_before=no
if getent passwd ringlb >/dev/null; then user_before=yes; fi
cleanup() {
  if [ -n "$run_pid" ]; then kill "$run_pid" 2>/dev/null || true; fi
  rm -rf "$out"
  # Leave the machine clean whatever happened.
  if dpkg -s ringlb >/dev/null 2>&1; then
    dpkg --purge ringlb >/dev/null || echo "deb-check: could not purge ringlb" >&2
  fi
  if [ "$user_before" = no ] && getent passwd ringlb >/dev/null; then
    userdel ringlb || echo "deb-check: could not remove the ringlb user" >&2
  fi
  if [ "$user_before" = no ] && getent group ringlb >/dev/null; then
    groupdel ringlb || echo "deb-check: could not remove the ringlb group" >&2
  fi
}
trap cleanup EXIT

echo "deb-check: installing $deb"
# The package needs adduser; a clean machine may not have it.
if ! command -v adduser >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq adduser >/dev/null
fi
dpkg -i "$deb" || fail "dpkg -i $deb"

[ -x /usr/bin/ringlb ] || fail "/usr/bin/ringlb is missing"
[ -f /etc/ringlb/ringlb.toml ] || fail "/etc/ringlb/ringlb.toml is missing"
[ -f /usr/lib/systemd/system/ringlb.service ] || fail "the systemd unit is missing"
dpkg-query --showformat='${Conffiles}\n' --show ringlb | grep -q /etc/ringlb/ringlb.toml \
  || fail "/etc/ringlb/ringlb.toml is not a conffile"
getent passwd ringlb >/dev/null || fail "no ringlb user"
getent group ringlb >/dev/null || fail "no ringlb group"
[ "$(stat -c '%U:%G %a' /etc/ringlb/ringlb.toml)" = "root:ringlb 640" ] \
  || fail "config owner/mode is $(stat -c '%U:%G %a' /etc/ringlb/ringlb.toml), not root:ringlb 640"
cmp -s /usr/lib/systemd/system/ringlb.service dist/systemd/ringlb.service \
  || fail "the installed unit differs from dist/systemd/ringlb.service"

ringlb --version || fail "ringlb --version"
ringlb check --config /etc/ringlb/ringlb.toml >/dev/null || fail "ringlb check (as root)"
runuser -u ringlb -- ringlb check --config /etc/ringlb/ringlb.toml \
  || fail "ringlb check as the ringlb user"

# A short run as the ringlb user: the ready line, then SIGTERM ends it (nothing to drain).
# setpriv execs ringlb as that user (runuser would stay as a parent that turns the signal into
# its own exit status).
setpriv --reuid=ringlb --regid=ringlb --init-groups -- ringlb run --config /etc/ringlb/ringlb.toml \
  >"$out/stdout" 2>"$out/stderr" &
run_pid=$!
for _ in $(seq 1 100); do
  grep -q '"ready"' "$out/stdout" 2>/dev/null && break
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '"ready"' "$out/stdout"; then
  cat "$out/stderr" >&2
  fail "ringlb run as the ringlb user printed no ready line within 10 s"
fi
echo "deb-check: ready: $(head -n 1 "$out/stdout")"
kill -TERM "$run_pid"
for _ in $(seq 1 100); do
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$run_pid" 2>/dev/null; then
  cat "$out/stderr" >&2
  fail "ringlb did not stop within 10 s of SIGTERM"
fi
status=0
wait "$run_pid" || status=$?
run_pid=""
[ "$status" -eq 0 ] || { cat "$out/stderr" >&2; fail "ringlb run exited with $status"; }
grep -q "ringlb stopped" "$out/stderr" || { cat "$out/stderr" >&2; fail "no 'ringlb stopped' line"; }

dpkg --purge ringlb >/dev/null || fail "dpkg --purge ringlb"
[ ! -e /usr/bin/ringlb ] || fail "/usr/bin/ringlb left after purge"
echo "deb-check: OK"
