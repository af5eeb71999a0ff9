#!/usr/bin/env bash
# Kernel NBD tests (deno task test:kernel).
# - Where /dev/nbd0 exists and we are root (inside ../shared/vm/nbd-vm, or a
#   real Linux host with `modprobe nbd`): runs tests/kernel/*_test.ts.
# - Elsewhere, when the NBD VM exists: type-checks here, then boots the VM and
#   runs this same script inside it.
# - Otherwise: prints why it skips and exits 0.
# Results (dd throughput) go to tests/kernel/out/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."

VM="${NBD_VM_PATH:-../shared/vm/nbd-vm}"

if [ -e /dev/nbd0 ] && [ "$(id -u)" = 0 ]; then
  mkdir -p tests/kernel/out
  echo "kernel tests on $(uname -r) ($([ -n "${NBD_VM:-}" ] && echo "NBD VM" || echo "this host"))"
  # Type-checked on the host already; under emulation checking costs minutes.
  exec deno test --allow-all --no-check tests/kernel/
fi

if [ -x "$VM" ]; then
  echo "no /dev/nbd0 here (or not root): running the kernel tests in $VM"
  deno check tests/kernel/
  exec "$VM" --mem "${NBD_VM_MEM:-3G}" --timeout "${NBD_VM_TIMEOUT:-3600}" -- bash tests/kernel/run.sh
fi

echo "SKIP kernel tests: no /dev/nbd0 (modprobe nbd, as root) and no NBD VM at $VM"
exit 0
