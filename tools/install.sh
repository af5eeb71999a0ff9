#!/usr/bin/env bash
# `deno task install`: installs ivbsnetd where the systemd unit expects it.
#
#   PREFIX/lib/ivbsnetd/ivbsnetd.js           the program as one file (deno bundle)
#   PREFIX/bin/ivbsnetd                       launcher: exec deno run -A on the bundle
#   PREFIX/lib/systemd/system/ivbsnetd.service  the unit (systemd reads this directory)
#   PREFIX/share/doc/ivbsnetd/                README.md (the unit's Documentation=),
#                                             config.example.json
#
# PREFIX defaults to /usr/local. DESTDIR stages the files elsewhere (packaging,
# tests): files land in DESTDIR/PREFIX/..., but name PREFIX/... in each other.
# DENO is the deno the launcher runs (default: the one running this install).
# Nothing in /etc is touched: the config and `systemctl enable` are the
# operator's. A bundle needs no runtime download, unlike `deno compile`.
set -euo pipefail

PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
DENO="${DENO:-$(command -v deno)}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "$PREFIX" in
/*) ;;
*)
  echo "install: PREFIX must be an absolute path, not $PREFIX" >&2
  exit 2
  ;;
esac
case "$DENO" in
/*) ;;
*)
  echo "install: no deno found (set DENO=/path/to/deno)" >&2
  exit 2
  ;;
esac
# The launcher and the unit hold these paths literally, inside double quotes
# and on an ExecStart line: keep them to characters that need no quoting.
for path in "$PREFIX" "$DENO"; do
  if [[ ! "$path" =~ ^[A-Za-z0-9_./+-]+$ ]]; then
    echo "install: $path: only letters, digits and _ . / + - are supported" >&2
    exit 2
  fi
done

lib="$PREFIX/lib/ivbsnetd"
bin="$PREFIX/bin"
unitdir="$PREFIX/lib/systemd/system"
doc="$PREFIX/share/doc/ivbsnetd"
mkdir -p "$DESTDIR$lib" "$DESTDIR$bin" "$DESTDIR$unitdir" "$DESTDIR$doc"

# Bundle to a temporary name first: a running daemon keeps its old file until
# it is restarted, and an interrupted install leaves the old one in place.
bundle="$DESTDIR$lib/ivbsnetd.js"
(cd "$ROOT" && "$DENO" bundle --quiet --platform=deno -o "$bundle.new" main.ts)
chmod 0644 "$bundle.new"
mv -f "$bundle.new" "$bundle"

launcher="$DESTDIR$bin/ivbsnetd"
cat >"$launcher.new" <<EOF
#!/bin/sh
# ivbsnetd launcher, written by tools/install.sh: runs the bundled program.
# exec keeps the pid, so systemd's main process is the daemon itself.
# --no-config: a deno.json in the working directory must not change the program.
# --v8-flags: a larger young generation keeps scavenges out of the qd1 tail, and
# no memory reducer keeps the heap warm across idle periods
# (src/runtime_flags.ts says why).
exec "$DENO" run --allow-all --no-config --v8-flags=--min-semi-space-size=16,--no-memory-reducer "$lib/ivbsnetd.js" "\$@"
EOF
chmod 0755 "$launcher.new"
mv -f "$launcher.new" "$launcher"

# The unit names /usr/local/bin/ivbsnetd and the README under /usr/local.
sed -e "s|/usr/local/bin/ivbsnetd|$bin/ivbsnetd|g" \
  -e "s|file:///usr/local/share/doc/ivbsnetd/|file://$doc/|g" \
  "$ROOT/systemd/ivbsnetd.service" >"$DESTDIR$unitdir/ivbsnetd.service"
chmod 0644 "$DESTDIR$unitdir/ivbsnetd.service"
install -m 0644 "$ROOT/README.md" "$ROOT/config.example.json" "$DESTDIR$doc/"

echo "installed ivbsnetd in $DESTDIR$PREFIX:"
echo "  $DESTDIR$bin/ivbsnetd -> $DENO run on $DESTDIR$lib/ivbsnetd.js"
echo "  $DESTDIR$unitdir/ivbsnetd.service"
echo "  $DESTDIR$doc/"
echo "next: install -m 0600 config.example.json /etc/ivbsnetd.json (edit it), then"
echo "      systemctl daemon-reload && systemctl enable --now ivbsnetd"
