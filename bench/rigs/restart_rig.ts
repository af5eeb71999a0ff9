/**
 * The restart rig shared by tests/kernel/restart_test.ts and
 * bench/restart_stall.ts: an IVBS test server, `ivbsnetd serve` mounting one
 * image through netlink, ext4 on the device, a fio write+verify job
 * (randwrite 64k, iodepth 16, crc32c, per-I/O latency log) on it, and the
 * daemon replaced under fio one of three ways. It measures; callers judge.
 * @module
 */
import {
  attachedNbdDevices,
  DaemonProcess,
  startIvbs,
  USER,
  writeConfig,
} from "./daemon_harness.ts";
import { errorLines, logMark } from "./kernel_log.ts";
import { sh } from "./sh.ts";

const MIB = 1024 * 1024;

export type RestartKind = "kill -9" | "SIGTERM" | "serve --replace";
export const RESTART_KINDS: RestartKind[] = ["kill -9", "SIGTERM", "serve --replace"];

export interface RestartOptions {
  fioMb: number;
  /** nbd.requeueAfterS of the daemon. */
  requeueAfterS: number;
  /** nbd.deadConnTimeoutS of the daemon. */
  deadConnTimeoutS: number;
  /**
   * Stop the IVBS proxy the mount uses as the restart begins, so the old
   * daemon fails over while it drains and the new one logs in elsewhere.
   */
  stopProxyDuringRestart?: boolean;
  /** nbd.connections of the daemon (default: the daemon's default). */
  connections?: number;
  /** The restart begins once the device has seen this many MiB written (default 32). */
  restartAfterMb?: number;
  /** main.ts of the checkout whose daemons (old and new) run; default this one. */
  main?: string;
  /** main.ts of the checkout the first (old) daemon runs, for an upgrade; default `main`. */
  oldMain?: string;
  /**
   * Also serve an NBD export under a second fio job (nbd engine, crc32c) during
   * the restart, through qemu-nbd as a client that reconnects (reconnect-delay),
   * the way QEMU guests use exports.
   */
  exportUnderFio?: { fioMb: number };
}

/** What the export's fio job saw (exportUnderFio). */
export interface ExportOutcome {
  fioCode: number;
  fioStderr: string;
  fioError: number;
  verifiedBytes: number;
  /** The new daemon lists the export ready. */
  servedAgain: boolean;
  /** fio was still running when the old daemon was gone (else it did not cross the restart). */
  runningAtRestart: boolean;
  /** Bytes fio wrote through the new daemon. */
  writtenAfter: number;
}

export interface RestartOutcome {
  kind: RestartKind;
  device: string;
  /** The new daemon serves the same device with the same backend id. */
  sameDevice: boolean;
  /** Connections the new daemon's mount shows. */
  connectionsAfter: number;
  fioCode: number;
  fioStderr: string;
  /** fio's job error (0 = none) and bytes its verify phase read. */
  fioError: number;
  verifiedBytes: number;
  /** The longest completion latency in fio's per-I/O log. */
  stallMs: number;
  /** Kernel log lines that count as errors (kernel_log.ts), and the "I/O error" ones. */
  kernelErrors: string[];
  ioErrorLines: number;
  /** From the start of the restart: old daemon gone, new one listening, device taken over. */
  oldGoneMs: number;
  listeningMs: number;
  backMs: number;
  oldLog: string;
  newLog: string;
  /** The proxy stopped during the restart ("host:port"), when one was. */
  stoppedProxy: string | null;
  /** With exportUnderFio. */
  export: ExportOutcome | null;
}

export interface Mount {
  device: string;
  image: string;
  state: string;
  bytesWritten: number;
  proxy: string | null;
  connections?: { proxy: string | null }[];
}

export async function mounts(url: string): Promise<Mount[]> {
  const reply = await fetch(`${url}/api/mounts`);
  return (await reply.json()).mounts;
}

/** Polls (bounded) until `check` returns a value. */
export async function until<T>(
  what: string,
  check: () => Promise<T | null>,
  ms = 120_000,
): Promise<T> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const value = await check().catch(() => null);
    if (value !== null) return value;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${what}: not within ${ms} ms`);
}

export async function mountedOn(url: string): Promise<Mount> {
  return await until("the mount comes up", async () => {
    const [mount] = (await mounts(url)).filter((m) => m.state === "mounted");
    return mount ?? null;
  });
}

/** fio write+verify on a file of the filesystem; the latency log gives the longest stall. */
export function startFio(
  directory: string,
  out: string,
  fioMb: number,
): Promise<Deno.CommandOutput> {
  return fioWriteVerify(
    [`--directory=${directory}`, "--filename=data", "--ioengine=libaio", "--direct=1"],
    out,
    "fio",
    fioMb,
  );
}

/** fio randwrite 64k qd16 + crc32c verify on `target`; report `${out}/${name}.json`. */
function fioWriteVerify(
  target: string[],
  out: string,
  name: string,
  fioMb: number,
): Promise<Deno.CommandOutput> {
  return new Deno.Command("fio", {
    args: [
      `--name=${name}`,
      ...target,
      `--size=${fioMb}M`,
      "--bs=64k",
      "--rw=randwrite",
      "--iodepth=16",
      "--verify=crc32c",
      "--verify_fatal=1",
      "--do_verify=1",
      "--verify_state_save=0",
      `--write_lat_log=${out}/${name}`,
      "--log_avg_msec=0",
      "--output-format=json",
      `--output=${out}/${name}.json`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
}

/** fio's job error (-1 when it wrote no report) and the bytes its verify phase read. */
async function fioJob(out: string, name: string): Promise<{ error: number; verified: number }> {
  try {
    const job = JSON.parse(await Deno.readTextFile(`${out}/${name}.json`)).jobs[0];
    return { error: job.error, verified: job.read.io_bytes };
  } catch {
    return { error: -1, verified: 0 }; // fio died before writing its report
  }
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
  if (ran.code !== 0) throw new Error(`${program} ${args.join(" ")}: ${ran.stderr}`);
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
    const { stderr } = await old.stop(signal);
    const oldGone = performance.now();
    return { daemon: await start(), oldLog: stderr, oldGone };
  };
}

/** Replaces the daemon its `kind` of way. */
const RESTARTS: Record<RestartKind, Restart> = {
  "kill -9": stopThenStart("SIGKILL"),
  "SIGTERM": stopThenStart("SIGTERM"),
  "serve --replace": async (old, start) => {
    let oldGone = 0;
    const exited = old.wait().then((result) => {
      oldGone = performance.now();
      return result;
    });
    const daemon = await start(["--replace"]);
    return { daemon, oldLog: (await exited).stderr, oldGone };
  },
};

/**
 * One run: mount, mkfs, fio, replace the daemon once fio has written 32 MiB,
 * wait for fio, then unmount and detach (SIGINT) whatever happened.
 */
export async function restartUnderFio(
  kind: RestartKind,
  options: RestartOptions,
): Promise<RestartOutcome> {
  const attached = await attachedNbdDevices();
  if (attached.length > 0) throw new Error(`nbd devices attached before the run: ${attached}`);
  const exported = options.exportUnderFio;
  const ivbs = await startIvbs([
    { name: "disk", size: options.fioMb * MIB + 256 * MIB },
    ...(exported ? [{ name: "exp", size: exported.fioMb * MIB + 64 * MIB }] : []),
  ]);
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-state-" });
  const { dir, path } = await writeConfig({
    http: { listen: "127.0.0.1:0" },
    ivbs: { proxies: ivbs.addresses() },
    nbd: {
      attach: "netlink",
      deadConnTimeoutS: options.deadConnTimeoutS,
      requeueAfterS: options.requeueAfterS,
      ...(options.connections === undefined ? {} : { connections: options.connections }),
    },
    users: [USER],
    mounts: [{ device: "auto", image: "disk", user: USER.username }],
    ...(exported
      ? { exports: { items: [{ name: "vm1", image: "exp", user: USER.username }] } }
      : {}),
    stateDir,
  });
  const mnt = `${dir}/mnt`;
  await Deno.mkdir(mnt);
  const main = options.main;
  const program = (checkout: string | undefined) =>
    checkout === undefined ? undefined : [Deno.execPath(), "run", "-A", checkout];
  let daemon = await DaemonProcess.start(path, { program: program(options.oldMain ?? main) });
  let mounted = false;
  let bridge: QemuNbdBridge | null = null;
  try {
    const { device } = await mountedOn(daemon.url);
    const sysfs = `/sys/block/${device.slice("/dev/".length)}/backend`;
    const backendId = (await Deno.readTextFile(sysfs)).trim();
    await run("mkfs.ext4", "-q", "-F", device);
    await run("mount", device, mnt);
    mounted = true;
    const mark = await logMark();
    const fio = startFio(mnt, dir, options.fioMb);
    let exportFio: Promise<Deno.CommandOutput> | null = null;
    let exportFioDoneAt: number | null = null;
    if (exported) {
      await until("export vm1 ready", async () => (await exportWritten(daemon.url)) ?? null);
      bridge = await QemuNbdBridge.start(`${stateDir}/nbd.sock`, "vm1", dir);
      exportFio = fioWriteVerify(
        ["--ioengine=nbd", `--uri=nbd+unix:///?socket=${bridge.socket}`],
        dir,
        "export",
        exported.fioMb,
      ).finally(() => exportFioDoneAt = performance.now());
    }
    // Let fio get going, then restart the daemon under it.
    await until("fio writes", async () => {
      const [m] = await mounts(daemon.url);
      return m && m.bytesWritten > (options.restartAfterMb ?? 32) * MIB ? m : null;
    });
    if (exported) {
      await until(
        "fio writes through the export",
        async () => (await exportWritten(daemon.url) ?? 0) > 4 * MIB ? true : null,
      );
    }
    let stoppedProxy: string | null = null;
    if (options.stopProxyDuringRestart) {
      const [m] = await mounts(daemon.url);
      const index = ivbs.addresses().findIndex((a) => `${a.host}:${a.port}` === m.proxy);
      if (index < 0) throw new Error(`the mount's proxy ${m.proxy} is not the test server's`);
      stoppedProxy = m.proxy;
      await ivbs.stopProxy(index);
    }
    const began = performance.now();
    const next = await RESTARTS[kind](
      daemon,
      (args) => DaemonProcess.start(path, { args, program: program(main) }),
    );
    daemon = next.daemon;
    const listening = performance.now();
    const again = await mountedOn(daemon.url);
    const back = performance.now();
    const sameDevice = again.device === device &&
      (await Deno.readTextFile(sysfs)).trim() === backendId;
    const result = await fio;
    const job = await fioJob(dir, "fio");
    let exportOutcome: ExportOutcome | null = null;
    if (exportFio) {
      const ran = await exportFio;
      const exportJob = await fioJob(dir, "export");
      exportOutcome = {
        fioCode: ran.code,
        fioStderr: new TextDecoder().decode(ran.stderr),
        fioError: exportJob.error,
        verifiedBytes: exportJob.verified,
        servedAgain: (await exportWritten(daemon.url)) !== null,
        runningAtRestart: exportFioDoneAt === null || exportFioDoneAt > next.oldGone,
        writtenAfter: await exportWritten(daemon.url) ?? 0,
      };
    }
    const lines = await mark.since();
    await sh("umount", mnt);
    mounted = false;
    const last = await daemon.stop("SIGINT"); // detach everything
    return {
      kind,
      device,
      sameDevice,
      connectionsAfter: again.connections?.length ?? 1,
      fioCode: result.code,
      fioStderr: new TextDecoder().decode(result.stderr),
      fioError: job.error,
      verifiedBytes: job.verified,
      stallMs: await longestStallMs(dir),
      kernelErrors: errorLines(lines),
      ioErrorLines: lines.filter((line) => /I\/O error/.test(line)).length,
      oldGoneMs: next.oldGone - began,
      listeningMs: listening - began,
      backMs: back - began,
      oldLog: next.oldLog,
      newLog: last.stderr,
      stoppedProxy,
      export: exportOutcome,
    };
  } catch (error) {
    // What the daemon and the kernel said is what explains a failed run.
    await bridge?.stop();
    if (mounted) await sh("umount", mnt);
    mounted = false;
    const { stderr } = await daemon.stop("SIGINT");
    const kernel = (await sh("dmesg")).stdout.split("\n").slice(-30).join("\n");
    console.error(`daemon log (tail):\n${stderr.slice(-6000)}\nkernel log (tail):\n${kernel}`);
    throw error;
  } finally {
    await bridge?.stop();
    if (mounted) await sh("umount", mnt);
    await daemon.stop("SIGINT");
    await ivbs.close();
    for (const path of [dir, stateDir]) {
      // A filesystem still mounted there must not hide the run's own error.
      await Deno.remove(path, { recursive: true }).catch((error) => {
        console.error(`cannot remove ${path}: ${error.message}`);
      });
    }
  }
}

/** Bytes written through export vm1 by this daemon, or null while it is not ready. */
async function exportWritten(url: string): Promise<number | null> {
  const { exports } = await (await fetch(`${url}/api/exports`)).json() as {
    exports: { name: string; state: string; bytesWritten: number }[];
  };
  const vm1 = exports.find((e) => e.name === "vm1" && e.state === "ready");
  return vm1 ? vm1.bytesWritten : null;
}

/**
 * qemu-nbd as a client of an export that reconnects (reconnect-delay: its
 * requests wait for the daemon to come back), serving what it reads on a unix
 * socket of its own for fio's nbd engine: a QEMU guest's view of the export.
 */
class QemuNbdBridge {
  private constructor(readonly socket: string, readonly pid: number) {}

  static async start(exportSocket: string, name: string, dir: string): Promise<QemuNbdBridge> {
    const socket = `${dir}/qemu-nbd.sock`;
    const pidFile = `${dir}/qemu-nbd.pid`;
    // Its forked server keeps the parent's stdio: inherited, not piped, or
    // reading the pipes to their end would wait for the server to exit.
    const started = await new Deno.Command("qemu-nbd", {
      args: [
        "--image-opts",
        `driver=nbd,server.type=unix,server.path=${exportSocket},export=${name},reconnect-delay=120`,
        `--socket=${socket}`,
        "--persistent",
        "--fork",
        `--pid-file=${pidFile}`,
      ],
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
    }).output();
    if (!started.success) throw new Error(`qemu-nbd exited with ${started.code}`);
    return new QemuNbdBridge(socket, Number((await Deno.readTextFile(pidFile)).trim()));
  }

  async stop(): Promise<void> {
    try {
      Deno.kill(this.pid, "SIGTERM");
    } catch {
      return; // already gone
    }
    await until("qemu-nbd exits", async () => {
      try {
        await Deno.stat(`/proc/${this.pid}`);
        return null;
      } catch {
        return true;
      }
    }, 10_000).catch(() => {});
  }
}

/** The daemon's lifecycle lines (start, shutdown, take-over) of a log. */
export function lifecycle(log: string): string[] {
  return log.split("\n").filter((line) =>
    /daemon started|shutting down|left attached|stopped;|--replace|taking over|taken over|NBD device|devices taken over/
      .test(line)
  );
}
