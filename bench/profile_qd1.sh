#!/usr/bin/env bash
# Profile qd1 4k requests end to end (fio nbd engine → ivbsnetd export → IVBS
# test server), the measurements behind bench/results/profile_qd1.md:
#   1. syscalls per request: strace -f -c on both processes over N requests;
#   2. CPU per request: user/system ticks of both processes over N requests;
#   3. top JS frames: deno --cpu-prof of both processes over N requests.
# Usage: bench/profile_qd1.sh [TREE (default: this checkout)] [N (default 20000)] [randread|randwrite|write|read]
# Environment: BS (default 4k), QD (default 1), WARM (warm-up requests, default 5000),
# CPU_ONLY=1 (stop after the CPU per request line: quick before/after pairs), e.g.
#   BS=1M QD=8 WARM=1000 bench/profile_qd1.sh . 2000 write   (where a 1 MiB write's CPU goes)
set -euo pipefail
TREE=$(cd "${1:-$(dirname "$0")/..}" && pwd)
N=${2:-20000}
RW=${3:-randread}
BS=${BS:-4k}
QD=${QD:-1}
WARM=${WARM:-5000}
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(mktemp -d /tmp/ivbsnetd-profile-XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

start() { # start FLAGS...: an IVBS test server and an export in front of it
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo bench >"$DIR/password"
  chmod 600 "$DIR/password"
  deno run "$@" -A "$TREE/main.ts" ivbs-server --port "$port" --create bench:2G \
    --user bench:bench 2>"$DIR/server.log" &
  SERVER=$!
  PIDS+=("$SERVER")
  for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  rm -f "$DIR/exp.sock"
  deno run "$@" -A "$TREE/main.ts" export --socket "$DIR/exp.sock" --name bench --image bench \
    --user bench --password-file "$DIR/password" --proxy "127.0.0.1:$port" 2>"$DIR/export.log" &
  EXPORT=$!
  PIDS+=("$EXPORT")
  for _ in $(seq 100); do [ -S "$DIR/exp.sock" ] && break; sleep 0.1; done
  URI="nbd+unix:///bench?socket=$DIR/exp.sock"
}

fio_n() { # fio_n COUNT: COUNT requests of BS at QD
  fio --name=p --rw="$RW" --bs="$BS" --iodepth="$QD" --size=1G --number_ios="$1" --ioengine=nbd \
    --uri="$URI" --output-format=json 2>/dev/null | sed -n '/^{/,$p'
}

ticks() { # user+system ticks of a pid (all threads, live and exited)
  awk '{ sub(/^.*\) /, ""); split($0, f, " "); print f[12] + f[13] }' "/proc/$1/stat"
}

stop() {
  kill "$EXPORT" "$SERVER"
  wait "$EXPORT" "$SERVER" 2>/dev/null || true
  PIDS=()
}

echo "== tree $TREE, $N qd$QD $BS $RW requests; load average $(cut -d' ' -f1-3 /proc/loadavg)"
start
fio_n "$WARM" >/dev/null # warm-up (JIT)
e0=$(ticks "$EXPORT")
s0=$(ticks "$SERVER")
fio_n "$N" | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
side = j["read"] if j["read"]["total_ios"] else j["write"]
p = side["clat_ns"]["percentile"]
print("fio: %.0f IOPS, p50 %.0f us, p99 %.0f us" % (side["iops"], p["50.000000"] / 1e3, p["99.000000"] / 1e3))'
echo "CPU per request: export $(((($(ticks "$EXPORT") - e0) * 10000000) / N / 1000)) us," \
  "IVBS server $(((($(ticks "$SERVER") - s0) * 10000000) / N / 1000)) us (10 ms ticks: coarse)"
if [ -n "${CPU_ONLY:-}" ]; then
  stop
  exit 0
fi

strace -f -c -o "$DIR/strace.export" -p "$EXPORT" 2>/dev/null &
T1=$!
strace -f -c -o "$DIR/strace.server" -p "$SERVER" 2>/dev/null &
T2=$!
sleep 1
fio_n "$N" >/dev/null
kill -INT "$T1" "$T2"
wait "$T1" "$T2" 2>/dev/null || true
for side in export server; do
  echo "-- syscalls per request, $side (strace -f -c over $N requests)"
  awk -v n="$N" '$NF != "total" && $NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $4 / n >= 0.01 {
    printf "  %-14s %6.2f\n", $NF, $4 / n; total += $4 } END { printf "  %-14s %6.2f\n", "total", total / n }' \
    "$DIR/strace.$side"
done
stop

start --cpu-prof --cpu-prof-dir="$DIR/prof"
fio_n "$WARM" >/dev/null
fio_n "$N" >/dev/null
stop
for profile in "$DIR"/prof/*.cpuprofile; do
  echo "-- $(basename "$profile") (includes the $WARM-request warm-up and start-up)"
  deno run -R "$HERE/cpu_profile_top.ts" "$profile" --top 15 --per "$((N + WARM))"
done
