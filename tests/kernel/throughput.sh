#!/usr/bin/env bash
# dd throughput (1 MiB blocks, O_DIRECT, 256 MiB) through `ivbsnetd attach`
# with a memory disk, and through nbdkit's memory plugin + nbd-client as the
# reference, in the same VM run, ROUNDS rounds each; prints every round and
# the medians. Boots the NBD VM when /dev/nbd0 is missing.
#   bash tests/kernel/throughput.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${1:-3}"
VM="${NBD_VM_PATH:-../shared/vm/nbd-vm}"

if [ ! -e /dev/nbd0 ] || [ "$(id -u)" != 0 ]; then
  [ -x "$VM" ] || { echo "SKIP: no /dev/nbd0 and no NBD VM at $VM"; exit 0; }
  exec "$VM" --mem 3G --timeout 1800 -- bash tests/kernel/throughput.sh "$ROUNDS"
fi

data=/tmp/throughput.random
dd if=/dev/urandom of="$data" bs=1M count=256 status=none
rate() { sed -n 's/.*copied, [0-9.]* s, \([0-9.]*\) \([kMG]\)B\/s.*/\1 \2/p' | awk '{ print ($2 == "G" ? $1 * 1000 : ($2 == "k" ? $1 / 1000 : $1)) }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

measure() { # DEVICE LABEL
  local writes=() reads=()
  for round in $(seq 1 "$ROUNDS"); do
    w=$(dd if="$data" of="$1" bs=1M oflag=direct 2>&1 | rate)
    r=$(dd if="$1" of=/dev/null bs=1M count=256 iflag=direct 2>&1 | rate)
    echo "$2 round $round: write $w MB/s, read $r MB/s"
    writes+=("$w"); reads+=("$r")
  done
  echo "$2 median: write $(printf '%s\n' "${writes[@]}" | median) MB/s, read $(printf '%s\n' "${reads[@]}" | median) MB/s"
}

deno run --allow-all main.ts attach --device /dev/nbd0 --memory 300M 2>/dev/null &
attach=$!
for _ in $(seq 1 150); do [ -e /sys/block/nbd0/pid ] && break; sleep 0.2; done
echo "ivbsnetd: max_sectors_kb=$(cat /sys/block/nbd0/queue/max_sectors_kb)"
measure /dev/nbd0 "ivbsnetd attach --memory"
kill -INT "$attach"; wait "$attach"

if command -v nbdkit >/dev/null && command -v nbd-client >/dev/null; then
  nbdkit -U /tmp/throughput.sock memory 300M
  nbd-client -unix /tmp/throughput.sock /dev/nbd1 -b 4096 >/dev/null 2>&1
  echo "nbdkit: max_sectors_kb=$(cat /sys/block/nbd1/queue/max_sectors_kb)"
  measure /dev/nbd1 "nbdkit memory + nbd-client"
  nbd-client -d /dev/nbd1 >/dev/null 2>&1
else
  echo "nbdkit or nbd-client missing: no reference numbers"
fi
