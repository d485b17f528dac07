#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (a release build): target/debian/ringlb_*.deb with
# /usr/bin/ringlb, /etc/ringlb/ringlb.toml (a conffile), the systemd unit
# (dist/systemd/ringlb.service) and the maintainer scripts of dist/debian/ (the `ringlb` user).
# Installs cargo-deb first when it is missing. Prints the package's path on the last line.
#
# Usage: tools/deb.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb" >&2
  cargo install cargo-deb --locked
fi
# --locked: the same dependency versions as every other build; the release build of the
# package is cargo-deb's own `cargo build --release`. --strip: the release profile keeps line
# tables for profiling from a source build; the packaged binary goes without them (and without
# its symbol table): about a sixth of the size.
cargo deb --locked --strip >&2
deb=$(ls -t target/debian/ringlb_*.deb | head -n 1)
dpkg-deb --info "$deb" >&2
dpkg-deb --contents "$deb" >&2
echo "$deb"
