/**
 * The kernel NBD driver against our data path, inside the NBD VM (or any
 * Linux host with `modprobe nbd`, as root). Elsewhere these tests skip: run
 * `deno task test:kernel`, which boots the VM.
 */
import assert from "node:assert/strict";
import { MemoryBackend } from "../../src/block/backend.ts";
import type { Backend } from "../../src/block/backend.ts";
import { attachDevice } from "../../src/nbd/ioctl_attach.ts";
import { NbdAttachError } from "../../src/nbd/device_setup.ts";
import { findFreeDevice, listNbdDevices } from "../../src/nbd/devices.ts";
import {
  assertReleased,
  ddRate,
  DEVICE,
  ivbsImage,
  MiB,
  quiet,
  readSys,
  record,
  run,
  sh,
  sha256,
  skipReason,
  threadsInDoIt,
  within,
} from "./helpers.ts";
import { eventually } from "../support/wait.ts";

const skip = skipReason();
if (skip) console.log(`SKIP kernel NBD tests: ${skip}`);
const ignore = skip !== null;

/** Generous bound that turns a detach hang (the zombie bug) into a failure. */
const DETACH_LIMIT_MS = 120_000;

Deno.test({
  name: "an IVBS image on /dev/nbd0 takes 256 MiB of random data with O_DIRECT and reads it back",
  ignore,
  async fn() {
    const tmp = await Deno.makeTempDir();
    const image = await ivbsImage(512 * MiB);
    const session = await image.open();
    const device = await attachDevice(DEVICE, session, { log: quiet });
    try {
      assert.equal(await readSys("size"), String((512 * MiB) / 512));
      await run("dd", "if=/dev/urandom", `of=${tmp}/random`, "bs=1M", "count=256", "status=none");
      const write = await run("dd", `if=${tmp}/random`, `of=${DEVICE}`, "bs=1M", "oflag=direct");
      const read = await run(
        "dd",
        `if=${DEVICE}`,
        `of=${tmp}/back`,
        "bs=1M",
        "count=256",
        "iflag=direct",
      );
      assert.equal(await sha256(`${tmp}/back`), await sha256(`${tmp}/random`));
      await record(
        `IVBS image via ivbsnetd, dd 1 MiB O_DIRECT 256 MiB: write ${ddRate(write.stderr)} MB/s, ` +
          `read ${ddRate(read.stderr)} MB/s`,
      );
      assert.equal(device.stats.errors, 0);
      assert.ok(device.stats.bytesWritten >= 256 * MiB);
    } finally {
      await within(DETACH_LIMIT_MS, "detach", device.detach());
      await session.close();
      await image.close();
      await Deno.remove(tmp, { recursive: true });
    }
    await assertReleased();
  },
});

Deno.test({
  name: "a memory disk on /dev/nbd0 measures the NBD data path alone (dd 1 MiB O_DIRECT)",
  ignore,
  async fn() {
    const tmp = await Deno.makeTempDir();
    const device = await attachDevice(DEVICE, new MemoryBackend(300 * MiB), { log: quiet });
    try {
      await run("dd", "if=/dev/urandom", `of=${tmp}/random`, "bs=1M", "count=256", "status=none");
      const rates: string[] = [];
      for (let round = 0; round < 2; round++) {
        const write = await run("dd", `if=${tmp}/random`, `of=${DEVICE}`, "bs=1M", "oflag=direct");
        const read = await run(
          "dd",
          `if=${DEVICE}`,
          "of=/dev/null",
          "bs=1M",
          "count=256",
          "iflag=direct",
        );
        rates.push(`write ${ddRate(write.stderr)} / read ${ddRate(read.stderr)}`);
      }
      const back = await run(
        "dd",
        `if=${DEVICE}`,
        `of=${tmp}/back`,
        "bs=1M",
        "count=256",
        "iflag=direct",
      );
      assert.equal(back.code, 0);
      assert.equal(await sha256(`${tmp}/back`), await sha256(`${tmp}/random`));
      await record(
        `memory disk via ivbsnetd, dd 1 MiB O_DIRECT 256 MiB (MB/s): ${rates.join("; ")}`,
      );
    } finally {
      await within(DETACH_LIMIT_MS, "detach", device.detach());
      await Deno.remove(tmp, { recursive: true });
    }
    await assertReleased();
  },
});

/** sha256 of every file under `dir`, as "hash  ./path" lines, sorted. */
async function checksums(dir: string): Promise<string> {
  const ran = await run(
    "bash",
    "-c",
    `cd '${dir}' && find . -type f -print0 | sort -z | xargs -0 sha256sum`,
  );
  return ran.stdout;
}

Deno.test({
  name: "ext4 on an IVBS image keeps its files across unmount, remount, detach and re-attach",
  ignore,
  async fn() {
    const mnt = await Deno.makeTempDir();
    const image = await ivbsImage(256 * MiB);
    let session = await image.open();
    let device = await attachDevice(DEVICE, session, { log: quiet });
    try {
      await run("mkfs.ext4", "-q", "-F", DEVICE);
      await run("mount", DEVICE, mnt);
      for (let i = 0; i < 3; i++) {
        await run(
          "dd",
          "if=/dev/urandom",
          `of=${mnt}/random${i}`,
          "bs=1M",
          "count=16",
          "status=none",
        );
      }
      await run("cp", "-r", new URL("../../src", import.meta.url).pathname, `${mnt}/src`);
      const written = await checksums(mnt);
      assert.ok(written.split("\n").length > 10, "too few files written");
      await run("umount", mnt);

      await run("mount", DEVICE, mnt);
      assert.equal(await checksums(mnt), written, "files differ after remount");
      await run("umount", mnt);

      await within(DETACH_LIMIT_MS, "detach", device.detach());
      await session.close();
      await assertReleased();

      session = await image.open();
      device = await attachDevice(DEVICE, session, { log: quiet });
      await run("mount", DEVICE, mnt);
      assert.equal(await checksums(mnt), written, "files differ after re-attach");
      await run("umount", mnt);
      await run("fsck.ext4", "-n", "-f", DEVICE);
    } finally {
      await sh("umount", mnt);
      await within(DETACH_LIMIT_MS, "detach", device.detach());
      await session.close();
      await image.close();
      await Deno.remove(mnt, { recursive: true });
    }
    await assertReleased();
  },
});

for (const how of ["an image read-only on the server", "a read-only mount of a writable image"]) {
  Deno.test({
    name: `${how} is a read-only /dev/nbd0 that refuses writes and sends none to IVBS`,
    ignore,
    async fn() {
      const serverReadOnly = how.startsWith("an image");
      const image = await ivbsImage(64 * MiB, { readOnly: serverReadOnly });
      const session = await image.open({ readOnly: !serverReadOnly });
      assert.equal(session.readOnly, true);
      const device = await attachDevice(DEVICE, session, { log: quiet });
      try {
        assert.equal(await readSys("ro"), "1");
        const write = await sh(
          "dd",
          "if=/dev/zero",
          `of=${DEVICE}`,
          "bs=4096",
          "count=1",
          "oflag=direct",
        );
        assert.notEqual(write.code, 0, "a write to the read-only device succeeded");
        const read = await sh(
          "dd",
          `if=${DEVICE}`,
          "of=/dev/null",
          "bs=4096",
          "count=16",
          "iflag=direct",
        );
        assert.equal(read.code, 0, read.stderr);
        assert.equal(image.server.stats.requests["WRITE"] ?? 0, 0);
        assert.ok((image.server.stats.requests["READ"] ?? 0) > 0, "reads never reached IVBS");
      } finally {
        await within(DETACH_LIMIT_MS, "detach", device.detach());
        await session.close();
        await image.close();
      }
      await assertReleased();
    },
  });
}

/** Starts `ivbsnetd attach` and waits for its "attached" line. */
async function startAttachCommand(...args: string[]) {
  const main = new URL("../../main.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--no-check", main, "attach", "--device", DEVICE, ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("attached")) {
    const { value, done } = await lines.read();
    if (done) {
      await child.status;
      throw new Error(`attach exited before attaching: ${await stderr}`);
    }
    out += value;
  }
  const drained = (async () => {
    while (!(await lines.read()).done) { /* keep the pipe flowing */ }
  })();
  return {
    child,
    async exit() {
      const status = await child.status;
      await drained;
      return { code: status.code, stderr: await stderr };
    },
  };
}

async function processGone(pid: number): Promise<boolean> {
  try {
    await Deno.stat(`/proc/${pid}`);
    return false;
  } catch {
    return true;
  }
}

Deno.test({
  name:
    "attach command detaches on SIGTERM, exits 0 and leaves no process, thread or device behind",
  ignore,
  async fn() {
    const attached = await startAttachCommand("--memory", "64M");
    const servingTid = Number(await readSys("pid"));
    assert.ok(servingTid > 0, "no pid file while attached");
    assert.deepEqual(await threadsInDoIt(attached.child.pid), [servingTid]);
    await run(
      "dd",
      "if=/dev/urandom",
      `of=${DEVICE}`,
      "bs=1M",
      "count=8",
      "oflag=direct",
      "status=none",
    );

    attached.child.kill("SIGTERM");
    const { code, stderr } = await within(DETACH_LIMIT_MS, "attach exit", attached.exit());
    assert.equal(code, 0, stderr);
    await assertReleased();
    assert.ok(await processGone(attached.child.pid), "attach process still exists");
    assert.ok(await processGone(servingTid), "the DO_IT thread still exists");

    // The same device attaches again at once, in this process.
    const device = await attachDevice(DEVICE, new MemoryBackend(16 * MiB), { log: quiet });
    try {
      assert.equal((await threadsInDoIt()).length, 1);
      await run(
        "dd",
        "if=/dev/zero",
        `of=${DEVICE}`,
        "bs=1M",
        "count=4",
        "oflag=direct",
        "status=none",
      );
      assert.equal(device.stats.errors, 0);
    } finally {
      await within(DETACH_LIMIT_MS, "detach", device.detach());
    }
    await assertReleased();
    assert.deepEqual(await threadsInDoIt(), [], "a thread is still in NBD_DO_IT after detach");
  },
});

Deno.test({
  name: "a disconnect from outside (nbd-client -d) tears the attachment down and attach exits 1",
  ignore: ignore || (await sh("bash", "-c", "command -v nbd-client")).code !== 0,
  async fn() {
    const attached = await startAttachCommand("--memory", "32M");
    await run("nbd-client", "-d", DEVICE);
    const { code } = await within(DETACH_LIMIT_MS, "attach exit", attached.exit());
    assert.equal(code, 1);
    await assertReleased();
  },
});

/** A memory backend whose calls take `delayMs`, so requests are in flight at detach. */
class SlowBackend implements Backend {
  readonly #inner: MemoryBackend;
  readonly readOnly = false;
  calls = 0;
  finished = 0;
  constructor(size: number, readonly delayMs: number) {
    this.#inner = new MemoryBackend(size);
  }
  get size(): number {
    return this.#inner.size;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    this.calls++;
    await new Promise((resolve) => setTimeout(resolve, this.delayMs));
    this.finished++;
    return this.#inner.read(offset, length);
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.calls++;
    await new Promise((resolve) => setTimeout(resolve, this.delayMs));
    this.finished++;
    return this.#inner.write(offset, data);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

Deno.test({
  name: "detach with reads in flight answers every one of them and returns (no zombie)",
  ignore,
  async fn() {
    const backend = new SlowBackend(64 * MiB, 300);
    const device = await attachDevice(DEVICE, backend, { log: quiet });
    const reader = new Deno.Command("dd", {
      args: [`if=${DEVICE}`, "of=/dev/null", "bs=4M", "count=16", "iflag=direct"],
      stdout: "null",
      stderr: "null",
    }).spawn();
    await eventually("a read in flight", () => device.stats.inFlight > 0);
    await within(DETACH_LIMIT_MS, "detach", device.detach());
    await reader.status; // it may fail: requests after the disconnect get EIO
    assert.ok(backend.calls > 0);
    assert.equal(backend.finished, backend.calls, "a backend call was still running");
    assert.equal(device.stats.inFlight, 0, "a request was left unanswered");
    assert.equal(device.stats.errors, 0, "an in-flight request was answered with an error");
    await assertReleased();
  },
});

Deno.test({
  name: "detach completes while the kernel is blocked sending into a full socket",
  ignore,
  async fn() {
    // Two requests admitted at a time, 4 MiB each, slow writes: the serve loop
    // stops reading and the kernel blocks in send holding the socket's lock,
    // the lock NBD_DISCONNECT needs to send DISC. With NBD_DISCONNECT called on
    // the main thread this deadlocks the event loop itself (seen: the VM run
    // hit nbd-vm --timeout), so a regression shows as run.sh timing out.
    const backend = new SlowBackend(256 * MiB, 200);
    const device = await attachDevice(DEVICE, backend, {
      log: quiet,
      maxInFlight: 2,
      maxRequestKb: 4096,
    });
    const writer = new Deno.Command("dd", {
      args: ["if=/dev/zero", `of=${DEVICE}`, "bs=16M", "count=16", "oflag=direct"],
      stdout: "null",
      stderr: "null",
    }).spawn();
    await eventually("two writes in flight", () => device.stats.inFlight >= 2);
    await within(DETACH_LIMIT_MS, "detach", device.detach());
    await writer.status;
    assert.equal(backend.finished, backend.calls, "a backend call was still running");
    assert.equal(device.stats.inFlight, 0, "a request was left unanswered");
    assert.equal(device.stats.errors, 0);
    await assertReleased();
  },
});

Deno.test({
  name: "attachDevice refuses a busy device and a device that does not exist, with typed codes",
  ignore,
  async fn() {
    const device = await attachDevice(DEVICE, new MemoryBackend(8 * MiB), { log: quiet });
    try {
      await assert.rejects(
        () => attachDevice(DEVICE, new MemoryBackend(8 * MiB), { log: quiet }),
        (e: unknown) => e instanceof NbdAttachError && e.code === "BUSY",
      );
      const listed = (await listNbdDevices()).find((d) => d.device === DEVICE);
      assert.equal(listed?.inUse, true);
      assert.equal(listed?.sizeBytes, 8 * MiB);
      const free = await findFreeDevice();
      assert.ok(free !== null && free !== DEVICE, `findFreeDevice chose ${free}`);
      assert.equal(await findFreeDevice(new Set([free])) === free, false);
      await assert.rejects(
        () => attachDevice("/dev/nbd999", new MemoryBackend(8 * MiB), { log: quiet }),
        (e: unknown) => e instanceof NbdAttachError && e.code === "NO_DEVICE",
      );
    } finally {
      await within(DETACH_LIMIT_MS, "detach", device.detach());
    }
    await assertReleased();
  },
});
