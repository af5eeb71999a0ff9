/**
 * Restarting the daemon under a mounted, busy filesystem costs a pause and
 * never an error (netlink attachment, in the NBD VM): ext4 on a device the
 * kernel picked takes a continuous fio write+verify job (crc32c, iodepth 16)
 * while the daemon is killed with SIGKILL, or stopped with SIGTERM, and started
 * again; fio finishes with verification passing, no I/O error, and no nbd
 * error in the kernel log (tests/kernel/kernel_log.ts says which lines count).
 * Also: a device whose daemon never returns fails its I/O after D and can be
 * detached with nbd-client -d; a state file naming devices that are gone is
 * cleaned up with one log line per mount.
 *
 * FIO_MB (default 384) sets the fio file size; the VM runs about 20-40 MB/s.
 */
import assert from "node:assert/strict";
import {
  attachedNbdDevices,
  DaemonProcess,
  kernelSkipReason,
  startIvbs,
  USER,
  writeConfig,
} from "../daemon_harness.ts";
import { errorLines, logMark } from "./kernel_log.ts";
import { record, sh } from "./helpers.ts";

const MIB = 1024 * 1024;
const skip = kernelSkipReason();
if (skip) console.warn(`restart_test: skipped: ${skip}`);
const ignore = skip !== null;
const FIO_MB = Number(Deno.env.get("FIO_MB") ?? "384");

interface Mount {
  device: string;
  image: string;
  state: string;
  bytesWritten: number;
}

async function mounts(url: string): Promise<Mount[]> {
  const reply = await fetch(`${url}/api/mounts`);
  return (await reply.json()).mounts;
}

/** Polls (bounded) until `check` returns a value. */
async function until<T>(what: string, check: () => Promise<T | null>, ms = 120_000): Promise<T> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const value = await check().catch(() => null);
    if (value !== null) return value;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${what}: not within ${ms} ms`);
}

async function mountedOn(url: string): Promise<Mount> {
  return await until("the mount comes up", async () => {
    const [mount] = (await mounts(url)).filter((m) => m.state === "mounted");
    return mount ?? null;
  });
}

/** fio write+verify on a file of the filesystem; the latency log gives the longest stall. */
function startFio(directory: string, out: string): Promise<Deno.CommandOutput> {
  return new Deno.Command("fio", {
    args: [
      "--name=restart",
      `--directory=${directory}`,
      "--filename=data",
      `--size=${FIO_MB}M`,
      "--bs=64k",
      "--rw=randwrite",
      "--ioengine=libaio",
      "--direct=1",
      "--iodepth=16",
      "--verify=crc32c",
      "--verify_fatal=1",
      "--do_verify=1",
      "--verify_state_save=0",
      `--write_lat_log=${out}/fio`,
      "--log_avg_msec=0",
      "--output-format=json",
      `--output=${out}/fio.json`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
}

/** The longest completion latency in fio's per-I/O log, in ms. */
async function longestStallMs(out: string): Promise<number> {
  let longest = 0;
  for await (const entry of Deno.readDir(out)) {
    if (!/^fio_clat\.\d+\.log$/.test(entry.name)) continue;
    for (const line of (await Deno.readTextFile(`${out}/${entry.name}`)).split("\n")) {
      const ns = Number(line.split(",")[1]);
      if (Number.isFinite(ns)) longest = Math.max(longest, ns / 1e6);
    }
  }
  return longest;
}

async function run(program: string, ...args: string[]): Promise<string> {
  const ran = await sh(program, ...args);
  assert.equal(ran.code, 0, `${program} ${args.join(" ")}: ${ran.stderr}`);
  return ran.stdout;
}

/**
 * Ends the old daemon its way and starts a new one (`start(args)`); resolves
 * with the new one, the old one's output and when the old one was gone.
 */
type Restart = (
  old: DaemonProcess,
  start: (args?: string[]) => Promise<DaemonProcess>,
) => Promise<{ daemon: DaemonProcess; oldLog: string; oldGone: number }>;

/** Stop (`signal`), then start a new daemon. */
function stopThenStart(signal: Deno.Signal): Restart {
  return async (old, start) => {
    const { code, stderr } = await old.stop(signal);
    if (signal === "SIGTERM") {
      assert.equal(code, 0, stderr);
      assert.match(stderr, /left attached for the next daemon device=\/dev\/nbd\d+/);
    }
    const oldGone = performance.now();
    return { daemon: await start(), oldLog: stderr, oldGone };
  };
}

/**
 * A daemon with one IVBS image mounted through netlink, ext4 on it, mounted at
 * `mnt`, fio on it; `restart` replaces the daemon under fio.
 */
async function restartUnderFio(name: string, restart: Restart): Promise<void> {
  assert.deepEqual(await attachedNbdDevices(), [], "no nbd device attached before the test");
  const ivbs = await startIvbs([{ name: "disk", size: FIO_MB * MIB + 256 * MIB }]);
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-state-" });
  const { dir, path } = await writeConfig({
    http: { listen: "127.0.0.1:0" },
    ivbs: { proxies: ivbs.addresses() },
    nbd: { attach: "netlink", deadConnTimeoutS: 120, requeueAfterS: 2 },
    users: [USER],
    mounts: [{ device: "auto", image: "disk", user: USER.username }],
    stateDir,
  });
  const mnt = `${dir}/mnt`;
  await Deno.mkdir(mnt);
  let daemon = await DaemonProcess.start(path);
  let mounted = false;
  const logs: string[] = [];
  try {
    const { device } = await mountedOn(daemon.url);
    const backendId = (await Deno.readTextFile(`/sys/block/${device.slice(5)}/backend`)).trim();
    assert.match(backendId, /^ivbsnetd:[0-9a-f]{16}$/);
    await run("mkfs.ext4", "-q", "-F", device);
    await run("mount", device, mnt);
    mounted = true;
    const mark = await logMark();
    const fio = startFio(mnt, dir);
    // Let fio get going, then restart the daemon under it.
    await until("fio writes", async () => {
      const [m] = await mounts(daemon.url);
      return m && m.bytesWritten > 32 * MIB ? m : null;
    });
    const stopped = performance.now();
    const next = await restart(daemon, (args) => DaemonProcess.start(path, args));
    daemon = next.daemon;
    logs.push(next.oldLog);
    const exited = next.oldGone;
    const listening = performance.now();
    const again = await mountedOn(daemon.url);
    const back = performance.now();
    assert.equal(again.device, device, "the new daemon serves the same device");
    assert.equal(
      (await Deno.readTextFile(`/sys/block/${device.slice(5)}/backend`)).trim(),
      backendId,
    );
    const result = await fio;
    const report = new TextDecoder().decode(result.stderr);
    assert.equal(result.code, 0, `fio failed: ${report}`);
    const job = JSON.parse(await Deno.readTextFile(`${dir}/fio.json`)).jobs[0];
    assert.equal(job.error, 0, "fio saw no I/O error");
    assert.ok(job.read.io_bytes >= FIO_MB * MIB, "the verify phase read everything back");
    const stall = await longestStallMs(dir);
    const kernelErrors = errorLines(await mark.since());
    assert.deepEqual(kernelErrors, [], "no nbd or I/O error in the kernel log");
    await record(
      `restart (${name}) under fio ${FIO_MB} MiB randwrite 64k qd16 + crc32c verify: ` +
        `0 errors, longest I/O stall ${stall.toFixed(0)} ms; device back ` +
        `${(back - stopped).toFixed(0)} ms after the restart began (old daemon gone at ` +
        `${(exited - stopped).toFixed(0)} ms, new one listening at ` +
        `${(listening - stopped).toFixed(0)} ms)`,
    );
  } finally {
    if (mounted) await sh("umount", mnt);
    const last = await daemon.stop("SIGINT"); // detach everything
    logs.push(last.stderr);
    await ivbs.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(stateDir, { recursive: true });
  }
  assert.deepEqual(await attachedNbdDevices(), [], "SIGINT detached the device");
  const lifecycle = (log: string) =>
    log.split("\n").filter((line) =>
      /daemon started|shutting down|left attached|stopped;|--replace|taking over|taken over|NBD device|devices taken over/
        .test(line)
    );
  console.log([...lifecycle(logs[0] ?? ""), "--", ...lifecycle(logs[1] ?? "")].join("\n"));
  assert.match(logs[1] ?? "", /taken over device=\/dev\/nbd\d+ image=disk/);
}

Deno.test({
  name: "kill -9 of the daemon under fio on ext4: a new daemon takes the device over, 0 errors",
  ignore,
  async fn() {
    await restartUnderFio("kill -9", stopThenStart("SIGKILL"));
  },
});

Deno.test({
  name:
    "SIGTERM (planned restart) under fio on ext4: the device waits for the next daemon, 0 errors",
  ignore,
  async fn() {
    await restartUnderFio("SIGTERM", stopThenStart("SIGTERM"));
  },
});

Deno.test({
  name:
    "serve --replace (upgrade) under fio on ext4: the new daemon stops the old one once ready, 0 errors",
  ignore,
  async fn() {
    await restartUnderFio("serve --replace", async (old, start) => {
      let oldGone = 0;
      const exited = old.wait().then((result) => {
        oldGone = performance.now();
        return result;
      });
      const daemon = await start(["--replace"]);
      const { code, stderr } = await exited;
      assert.equal(code, 0, stderr);
      assert.match(stderr, /left attached for the next daemon device=\/dev\/nbd\d+/);
      return { daemon, oldLog: stderr, oldGone };
    });
  },
});

Deno.test({
  name: "a device whose daemon never returns fails its I/O after D and nbd-client -d detaches it",
  ignore,
  async fn() {
    const ivbs = await startIvbs([{ name: "disk", size: 64 * MIB }]);
    const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-state-" });
    const { dir, path } = await writeConfig({
      http: { listen: "127.0.0.1:0" },
      ivbs: { proxies: ivbs.addresses() },
      nbd: { attach: "netlink", deadConnTimeoutS: 3, requeueAfterS: 1 },
      users: [USER],
      mounts: [{ device: "auto", image: "disk", user: USER.username }],
      stateDir,
    });
    const daemon = await DaemonProcess.start(path);
    try {
      const { device } = await mountedOn(daemon.url);
      await daemon.stop("SIGKILL");
      const started = performance.now();
      const read = await sh(
        "dd",
        `if=${device}`,
        "of=/dev/null",
        "bs=4k",
        "count=1",
        "iflag=direct",
      );
      const waited = performance.now() - started;
      assert.notEqual(read.code, 0, "the read fails once nobody serves the device");
      assert.match(read.stderr, /Input\/output error/);
      assert.ok(waited >= 2_500, `it waited for a daemon first (${waited.toFixed(0)} ms)`);
      await record(
        `orphaned device: a read failed with EIO after ${waited.toFixed(0)} ms (D = 3 s)`,
      );
      assert.deepEqual(await attachedNbdDevices(), [device], "still attached until detached");
      const detach = await sh("nbd-client", "-d", device);
      assert.equal(detach.code, 0, detach.stderr);
      await until(
        "the device is released",
        async () => (await attachedNbdDevices()).includes(device) ? null : true,
        30_000,
      );
    } finally {
      await ivbs.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(stateDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a state file whose devices are gone is cleaned up with one log line per mount",
  ignore,
  async fn() {
    const ivbs = await startIvbs([{ name: "disk", size: 16 * MIB }]);
    const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-state-" });
    const { dir, path } = await writeConfig({
      http: { listen: "127.0.0.1:0" },
      ivbs: { proxies: ivbs.addresses() },
      nbd: { attach: "netlink" },
      users: [USER],
      stateDir,
    });
    const options = { blockSize: 4096, timeoutS: 0, deadConnTimeoutS: 120 };
    const gone = [5, 6].map((index) => ({
      device: `/dev/nbd${index}`,
      index,
      backendId: `ivbsnetd:00000000000000${index}${index}`,
      image: "disk",
      username: USER.username,
      readOnly: false,
      sizeBytes: 16 * MIB,
      options,
    }));
    await Deno.writeTextFile(
      `${stateDir}/mounts.json`,
      JSON.stringify({ version: 1, pid: 999_999, writtenAt: "2026-01-01T00:00:00Z", mounts: gone }),
      { mode: 0o600 },
    );
    const daemon = await DaemonProcess.start(path);
    let stderr = "";
    try {
      await until("the state file is rewritten", async () => {
        try {
          await Deno.stat(`${stateDir}/mounts.json`);
          return null;
        } catch {
          return true;
        }
      }, 30_000);
      assert.deepEqual(await mounts(daemon.url), []);
    } finally {
      stderr = (await daemon.stop("SIGINT")).stderr;
      await ivbs.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(stateDir, { recursive: true });
    }
    const lines = stderr.split("\n").filter((l) => /device of the previous daemon is gone/.test(l));
    assert.equal(lines.length, 2, stderr);
    assert.match(lines.join("\n"), /device=\/dev\/nbd5/);
    assert.match(lines.join("\n"), /device=\/dev\/nbd6/);
  },
});
