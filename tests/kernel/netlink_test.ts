/**
 * Generic-netlink attachment against the kernel's nbd driver (in the NBD VM):
 * CONNECT lets the kernel pick the device, the backend identifier shows in
 * sysfs, STATUS reports it, DISCONNECT frees it, and a released device takes a
 * new socket through RECONFIGURE while I/O waits instead of failing.
 */
import assert from "node:assert/strict";
import { MemoryBackend } from "../../src/block/backend.ts";
import { NbdNetlink } from "../../src/nbd/netlink.ts";
import {
  attachNetlink,
  newBackendId,
  readBackendId,
  reattachNetlink,
} from "../../src/nbd/netlink_attach.ts";
import { MiB, quiet, run, sh, skipReason, within } from "./helpers.ts";

const skip = skipReason();
if (skip) console.log(`SKIP kernel netlink tests: ${skip}`);
const ignore = skip !== null;

async function sysfs(index: number, name: string): Promise<string | null> {
  try {
    return (await Deno.readTextFile(`/sys/block/nbd${index}/${name}`)).trim();
  } catch {
    return null;
  }
}

Deno.test({
  name: "netlink CONNECT without an index: the kernel picks a device that shows our backend id",
  ignore,
  async fn() {
    const netlink = await NbdNetlink.open();
    assert.ok(netlink, "the nbd generic-netlink family exists once the module is loaded");
    const backendId = newBackendId();
    const backend = new MemoryBackend(64 * MiB);
    const device = await attachNetlink(netlink, [backend], {
      backendId,
      deadConnTimeoutS: 30,
      log: quiet,
    });
    try {
      assert.equal(await readBackendId(device.index), backendId);
      assert.equal(await sysfs(device.index, "size"), String((64 * MiB) / 512));
      assert.equal(await sysfs(device.index, "queue/io_timeout"), "5000");
      assert.deepEqual(await netlink.status(device.index), [
        { index: device.index, connected: true },
      ]);
      await run(
        "dd",
        "if=/dev/urandom",
        `of=${device.device}`,
        "bs=1M",
        "count=8",
        "oflag=direct",
        "status=none",
      );
    } finally {
      await within(60_000, "netlink detach", device.detach());
      netlink.close();
    }
    assert.equal(await sysfs(device.index, "size"), "0");
    assert.equal(await readBackendId(device.index), null);
  },
});

Deno.test({
  name: "a released netlink device takes a new socket by RECONFIGURE and I/O in between waits",
  ignore,
  async fn() {
    const netlink = (await NbdNetlink.open())!;
    const backendId = newBackendId();
    const backend = new MemoryBackend(64 * MiB);
    const options = { backendId, deadConnTimeoutS: 60, requeueAfterS: 2, log: quiet };
    const first = await attachNetlink(netlink, [backend], options);
    const dev = first.device;
    const tmp = await Deno.makeTempDir();
    try {
      await run("dd", "if=/dev/urandom", `of=${tmp}/data`, "bs=1M", "count=32", "status=none");
      // A writer keeps going while the daemon side goes away and comes back.
      const writer = new Deno.Command("dd", {
        args: [`if=${tmp}/data`, `of=${dev}`, "bs=64k", "oflag=direct", "status=none"],
        stderr: "piped",
      }).output();
      await new Promise((r) => setTimeout(r, 300));
      await first.release();
      assert.equal(await readBackendId(first.index), backendId, "device left configured");
      // RECONFIGURE with the wrong identifier is refused.
      await assert.rejects(
        reattachNetlink(netlink, first.index, [backend], { ...options, backendId: "other" }),
      );
      const second = await reattachNetlink(netlink, first.index, [backend], options);
      try {
        const done = await within(60_000, "dd across the restart", writer);
        assert.equal(done.code, 0, new TextDecoder().decode(done.stderr));
        const back = await run("cmp", `${tmp}/data`, dev, "-n", String(32 * MiB)).catch((e) => e);
        assert.ok(!(back instanceof Error), `data intact: ${back}`);
        assert.equal(second.stats.errors, 0);
      } finally {
        await within(60_000, "detach", second.detach());
      }
    } finally {
      netlink.close();
      await sh("rm", "-rf", tmp);
    }
  },
});

Deno.test({
  name:
    "when the kernel's request timer kills a live socket (TIMEOUT 1), the device gets a new one",
  ignore,
  async fn() {
    const netlink = (await NbdNetlink.open())!;
    const memory = new MemoryBackend(16 * MiB);
    let stalls = 1;
    // The first read answers after 4 s: past TIMEOUT, so the kernel shuts our socket.
    const backend = {
      get size() {
        return memory.size;
      },
      readOnly: false,
      read: async (offset: number, length: number) => {
        if (stalls-- > 0) await new Promise((resolve) => setTimeout(resolve, 4_000));
        return await memory.read(offset, length);
      },
      write: (offset: number, data: Uint8Array) => memory.write(offset, data),
      close: () => Promise.resolve(),
    };
    const device = await attachNetlink(netlink, [backend], {
      backendId: newBackendId(),
      timeoutS: 1,
      deadConnTimeoutS: 30,
      log: quiet,
    });
    try {
      const read = await within(
        60_000,
        "a read across the socket's death",
        sh("dd", `if=${device.device}`, "of=/dev/null", "bs=4k", "count=1", "iflag=direct"),
      );
      assert.equal(read.code, 0, read.stderr);
      assert.equal(device.stats.errors, 0);
    } finally {
      await within(60_000, "detach", device.detach());
      netlink.close();
    }
  },
});
