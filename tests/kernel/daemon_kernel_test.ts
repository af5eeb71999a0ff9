/**
 * The daemon with a real kernel: `ivbsnetd serve` mounts IVBS images on
 * /dev/nbdX (from the config and through the one-shot client), the data goes
 * through to IVBS, and after SIGTERM no nbd device is left attached. Needs root
 * and /dev/nbd0 (run inside /work/shared/vm/nbd-vm); skips with the reason otherwise.
 */
import assert from "node:assert/strict";
import {
  attachedNbdDevices,
  DaemonProcess,
  ivbsnetd,
  kernelSkipReason,
  startIvbs,
  USER,
  writeConfig,
} from "../../bench/rigs/daemon_harness.ts";
import { readBlock } from "./helpers.ts";
import { eventually } from "../support/wait.ts";

const MIB = 1024 * 1024;
const skip = kernelSkipReason();
if (skip) console.warn(`daemon_kernel_test: skipped: ${skip}`);

interface Mount {
  device: string;
  image: string;
  state: string;
  sizeBytes: number;
}

async function mounts(url: string): Promise<Mount[]> {
  const run = await ivbsnetd(["list", "--server", url, "--json"]);
  assert.equal(run.code, 0, run.stderr);
  return JSON.parse(run.stdout);
}

/** Waits (bounded) for the configured mounts, which run after the daemon starts listening. */
async function waitForMounts(url: string, count: number): Promise<Mount[]> {
  return await eventually(`${count} mounts up`, async () => {
    const now = (await mounts(url)).filter((m) => m.state === "mounted");
    return now.length >= count && now;
  }, 20_000);
}

/** A recognizable 1 MiB block. */
function pattern(seed: number): Uint8Array {
  const data = new Uint8Array(MIB);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + seed) & 0xff;
  return data;
}

async function writeBlock(device: string, offset: number, data: Uint8Array): Promise<void> {
  using file = await Deno.open(device, { write: true });
  await file.seek(offset, Deno.SeekMode.Start);
  let done = 0;
  while (done < data.length) done += await file.write(data.subarray(done));
  await file.syncData();
}

Deno.test({
  name: "serve mounts real /dev/nbdX, data reaches IVBS, and SIGTERM leaves nothing attached",
  ignore: skip !== null,
  async fn() {
    assert.deepEqual(await attachedNbdDevices(), [], "no nbd device attached before the test");
    const ivbs = await startIvbs([
      { name: "data", size: 64 * MIB },
      { name: "extra", size: 16 * MIB },
    ]);
    const { dir, path } = await writeConfig({
      http: { listen: "127.0.0.1:0" },
      ivbs: { proxies: ivbs.addresses() },
      // The ioctl fallback: its devices go with the daemon, so SIGTERM detaches them
      // (netlink devices stay for the next daemon: restart_test.ts).
      nbd: { devices: 8, attach: "ioctl" },
      users: [USER],
      mounts: [{ device: "auto", image: "data", user: USER.username }],
    });
    const daemon = await DaemonProcess.start(path);
    try {
      const server = ["--server", daemon.url];
      const [configured] = await waitForMounts(daemon.url, 1);
      assert.equal(configured.image, "data");
      assert.equal(configured.sizeBytes, 64 * MIB);

      // A second image through the client, on an explicit device.
      const free = (await attachedNbdDevices()).includes("/dev/nbd3") ? "nbd4" : "nbd3";
      const mount = await ivbsnetd(
        ["mount", ...server, "--password-stdin", free, "extra", USER.username],
        USER.password,
      );
      assert.equal(mount.code, 0, mount.stderr);
      assert.match(mount.stdout, new RegExp(`mounted extra on /dev/${free} \\(16 MiB, read-write`));

      // Data written to the device is served by IVBS: unmount, mount the same
      // image on another device (no shared page cache), and read it back.
      const block = pattern(7);
      await writeBlock(configured.device, 5 * MIB, block);
      const unmount = await ivbsnetd(["unmount", ...server, configured.device]);
      assert.equal(unmount.code, 0, unmount.stderr);
      assert.ok(!(await attachedNbdDevices()).includes(configured.device), "detached");
      const again = await ivbsnetd(
        ["mount", ...server, "--json", "--password-stdin", "auto", "data", USER.username],
        USER.password,
      );
      assert.equal(again.code, 0, again.stderr);
      const remounted = JSON.parse(again.stdout).device as string;
      assert.deepEqual(await readBlock(remounted, 5 * MIB, MIB), block);

      const metrics = await (await fetch(`${daemon.url}/metrics`)).text();
      assert.match(
        metrics,
        new RegExp(
          `ivbsnetd_io_bytes_total\\{device="${remounted}",image="data",direction="read"\\} [1-9]`,
        ),
      );
      assert.equal((await mounts(daemon.url)).length, 2);
      assert.deepEqual((await attachedNbdDevices()).length, 2);
    } finally {
      const { code, stderr } = await daemon.stop("SIGTERM");
      await ivbs.close();
      await Deno.remove(dir, { recursive: true });
      assert.equal(code, 0, stderr);
      assert.match(stderr, /stopped; every device detached/);
    }
    assert.deepEqual(await attachedNbdDevices(), [], "no nbd device left attached after SIGTERM");
  },
});
