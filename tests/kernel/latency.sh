#!/usr/bin/env bash
# Per-request latency on the kernel path: fio 4k randwrite iodepth 8 and 4k
# randread iodepth 1 (libaio, O_DIRECT) on /dev/nbd0 through `ivbsnetd attach
# --memory`, and on nbdkit memory + nbd-client as the reference, in the same VM
# run; also prints each device's queue settings (scheduler, nr_requests...).
# Boots the NBD VM when /dev/nbd0 is missing. LATENCY_TREES="DIR..." runs
# attach from each of these checkouts in turn (default: this one), e.g. an
# older commit unpacked with `git archive` for a before/after in one VM run.
#   bash tests/kernel/latency.sh [FIO_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH="${1:-5}"
VM="${NBD_VM_PATH:-../shared/vm/nbd-vm}"

if [ ! -e /dev/nbd0 ] || [ "$(id -u)" != 0 ]; then
  [ -x "$VM" ] || { echo "SKIP: no /dev/nbd0 and no NBD VM at $VM"; exit 0; }
  exec "$VM" --mem 3G --timeout 1800 -- bash tests/kernel/latency.sh "$SECONDS_EACH"
fi

queue() { # DEVICE
  local q=/sys/block/$1/queue
  echo "  $1 queue: scheduler=$(cat $q/scheduler) nr_requests=$(cat $q/nr_requests)" \
    "max_sectors_kb=$(cat $q/max_sectors_kb) logical_block_size=$(cat $q/logical_block_size)" \
    "rotational=$(cat $q/rotational) add_random=$(cat $q/add_random) nomerges=$(cat $q/nomerges)" \
    "wbt_lat_usec=$(cat $q/wbt_lat_usec 2>/dev/null || echo -) write_cache=$(cat $q/write_cache)"
}

cpu_ticks() { # PID: user + system clock ticks so far (0 when not ours to read)
  awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

run_fio() { # DEVICE LABEL SERVER_PID
  local device=$1 label=$2 server=$3 rw depth before
  for job in "randwrite 8" "randread 1" "randwrite 1"; do
    read -r rw depth <<<"$job"
    before=$(cpu_ticks "$server")
    fio --name=t --filename="/dev/$device" --rw="$rw" --bs=4k --iodepth="$depth" \
      --ioengine=libaio --direct=1 --runtime="$SECONDS_EACH" --time_based --size=256M \
      --output-format=terse --terse-version=3 >/tmp/fio.out
    # The server's CPU time per request says whether it is busy or waiting.
    # terse v3: field 6 read ios, 8 read iops, 40 read clat mean us; 47, 49, 81 for writes.
    awk -F';' -v label="$label $rw qd$depth" -v ticks=$(($(cpu_ticks "$server") - before)) \
      -v hz="$(getconf CLK_TCK)" '{ ios = $6 + $47
        printf "%s: %d IOPS, clat mean %.0f us, server CPU %.0f us/request\n", label, $8 + $49,
          ($8 > 0 ? $40 : $81), (ios > 0 ? ticks * 1e6 / hz / ios : 0) }' /tmp/fio.out
  done
}

for tree in ${LATENCY_TREES:-.}; do
  (cd "$tree" && exec deno run --allow-all main.ts attach --device /dev/nbd0 --memory 1G) \
    2>/tmp/attach.err &
  attach=$!
  for _ in $(seq 1 300); do [ -e /sys/block/nbd0/pid ] && break; sleep 0.2; done
  sleep 1 # attach sets max_sectors_kb right after the pid file appears
  queue nbd0
  run_fio nbd0 "ivbsnetd attach --memory ($tree)" "$attach"
  kill -INT "$attach"
  wait "$attach" || true
  grep -i "warn\|error" /tmp/attach.err | tail -5 || true
done

if command -v nbdkit >/dev/null && command -v nbd-client >/dev/null; then
  nbdkit -P /tmp/latency.pid -U /tmp/latency.sock memory 1G
  nbd-client -unix /tmp/latency.sock /dev/nbd1 -b 4096 >/dev/null 2>&1
  queue nbd1
  run_fio nbd1 "nbdkit memory + nbd-client" "$(cat /tmp/latency.pid)"
  nbd-client -d /dev/nbd1 >/dev/null 2>&1
else
  echo "nbdkit or nbd-client missing: no reference numbers"
fi
