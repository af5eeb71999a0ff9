#!/usr/bin/env bash
# `deno task bench`: ivbsnetd beside nbdkit/nbd-client in one run.
#   A. host: fio's nbd engine over unix sockets (native speed, no kernel)
#   A1. host, one hop: the serve loop alone (export --memory) vs nbdkit memory
#   B. kernel: /dev/nbdX inside ../shared/vm/nbd-vm (TCG emulation: compare
#      ratios within the run, not absolute figures)
# Writes bench/results.md. Usage: bench/run.sh [SECONDS_PER_JOB] (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_JOB=${1:-10}
mkdir -p bench/results
for tool in fio nbdkit nbd-client; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool: apt-get install -y nbdkit nbd-client fio" >&2; exit 2; }
done

echo "== A. host (fio nbd engine)"
deno run --allow-all bench/bench.ts host --seconds "$SECONDS_PER_JOB" --out bench/results/host.md

echo "== A1. one hop (ivbsnetd export --memory vs nbdkit memory, interleaved rounds)"
deno run --allow-all bench/one_hop.ts --rounds 3 --seconds "$SECONDS_PER_JOB" --out bench/results/one_hop.md

VM=../shared/vm/nbd-vm
if [ -e /dev/nbd2 ] && [ "$(id -u)" = 0 ]; then
  echo "== B. kernel (/dev/nbdX on this host)"
  deno run --allow-all bench/bench.ts kernel --seconds "$SECONDS_PER_JOB" --out bench/results/kernel.md
elif [ -x "$VM" ]; then
  echo "== B. kernel (inside $VM, TCG emulation)"
  "$VM" --mem 6G --timeout 2400 -- deno run --allow-all bench/bench.ts kernel \
    --seconds "$SECONDS_PER_JOB" --out bench/results/kernel.md
else
  echo "== B. kernel skipped: no /dev/nbdX and no $VM" | tee bench/results/kernel.md
fi

{
  echo "# ivbsnetd benchmark results"
  echo
  echo "Produced by \`deno task bench\` (bench/run.sh $SECONDS_PER_JOB). Ratios compare figures"
  echo "from the same run; the kernel setting runs under TCG emulation."
  echo
  cat bench/results/host.md
  echo
  cat bench/results/one_hop.md
  echo
  cat bench/results/kernel.md
} >bench/results.md
deno fmt bench/results.md >/dev/null 2>&1 || true
echo "wrote bench/results.md"
