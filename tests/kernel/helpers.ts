/**
 * Shared pieces of the kernel tests: whether they can run here, shell
 * commands, dd throughput, an IVBS image from the test server, sysfs checks.
 */
import { startIvbsServer } from "../../src/ivbs/server/mod.ts";
import type { IvbsTestServer } from "../../src/ivbs/server/mod.ts";
import { IvbsSession } from "../../src/ivbs/session.ts";
import type { Logger } from "../../src/log.ts";
import { type Ran, sh } from "../../bench/rigs/sh.ts";

export const MiB = 1024 * 1024;
export const DEVICE = "/dev/nbd0";
export const SYSFS = "/sys/block/nbd0";

/** Why the kernel tests cannot run here, or null when they can. */
export function skipReason(): string | null {
  try {
    Deno.statSync(DEVICE);
  } catch {
    return `no ${DEVICE} (needs the nbd module: run tests/kernel/run.sh, which boots the NBD VM)`;
  }
  try {
    if (Deno.uid() !== 0) return "not root (NBD ioctls need CAP_SYS_ADMIN)";
  } catch {
    return "cannot tell whether we are root (needs --allow-sys)";
  }
  return null;
}

export const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

export { type Ran, sh };

/** Like sh, but throws with the output when the program fails. */
export async function run(program: string, ...args: string[]): Promise<Ran> {
  const ran = await sh(program, ...args);
  if (ran.code !== 0) {
    throw new Error(`${program} ${args.join(" ")} exited ${ran.code}: ${ran.stderr.trim()}`);
  }
  return ran;
}

/** MB/s from dd's closing line ("… copied, 4.5 s, 29.6 MB/s"; GB/s and kB/s too). */
export function ddRate(stderr: string): number {
  const match = /copied, [\d.]+ s, ([\d.]+) ([kMG])B\/s/.exec(stderr);
  if (!match) throw new Error(`no rate in dd output: ${stderr}`);
  const scale = { k: 0.001, M: 1, G: 1000 }[match[2] as "k" | "M" | "G"];
  return Number(match[1]) * scale;
}

export async function sha256(path: string): Promise<string> {
  return (await run("sha256sum", path)).stdout.split(" ")[0];
}

/** Appends a line to tests/kernel/out/results.txt (the numbers for the report). */
export async function record(line: string): Promise<void> {
  console.log(line);
  const dir = new URL("./out/", import.meta.url);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(new URL("results.txt", dir), `${new Date().toISOString()} ${line}\n`, {
    append: true,
  });
}

export interface IvbsImage {
  server: IvbsTestServer;
  open(options?: { readOnly?: boolean }): Promise<IvbsSession>;
  close(): Promise<void>;
}

/** An IVBS test server (in memory) with one image "disk" for user "alice". */
export async function ivbsImage(
  size: number,
  options: { readOnly?: boolean } = {},
): Promise<IvbsImage> {
  const server = await startIvbsServer({
    users: [{ username: "alice", password: "kernel-test" }],
    images: [{ name: "disk", size, readOnly: options.readOnly }],
    listProxiesIntervalMs: 0,
    log: quiet,
  });
  return {
    server,
    open: (open = {}) =>
      IvbsSession.open({
        proxies: server.addresses(),
        image: "disk",
        username: "alice",
        password: "kernel-test",
        readOnly: open.readOnly,
      }),
    close: () => server.close(),
  };
}

export async function readSys(name: string): Promise<string | null> {
  try {
    return (await Deno.readTextFile(`${SYSFS}/${name}`)).trim();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

/** The device is fully released: no `pid` file and size 0. */
export async function assertReleased(): Promise<void> {
  const pid = await readSys("pid");
  const size = await readSys("size");
  if (pid !== null || size !== "0") {
    throw new Error(`${DEVICE} still configured: pid=${pid} size=${size}`);
  }
}

/**
 * Threads of process `pid` currently blocked in ioctl(fd, NBD_DO_IT): read
 * from /proc/PID/task/TID/syscall ("NR fd request …"; ioctl is 16 on x86-64,
 * 29 on aarch64).
 */
export async function threadsInDoIt(pid: number | "self" = "self"): Promise<number[]> {
  const ioctlNr = Deno.build.arch === "aarch64" ? "29" : "16";
  const found: number[] = [];
  for await (const task of Deno.readDir(`/proc/${pid}/task`)) {
    try {
      const fields = (await Deno.readTextFile(`/proc/${pid}/task/${task.name}/syscall`)).split(
        " ",
      );
      if (fields[0] === ioctlNr && fields[2] === "0xab03") found.push(Number(task.name));
    } catch {
      // The thread ended while we looked.
    }
  }
  return found;
}

/** Rejects if `promise` has not settled within `ms`: turns a hang into a failure. */
export async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads `length` bytes of a block device at `offset` (fewer at its end). */
export async function readBlock(
  device: string,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  using file = await Deno.open(device, { read: true });
  await file.seek(offset, Deno.SeekMode.Start);
  const data = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = await file.read(data.subarray(done));
    if (n === null) break;
    done += n;
  }
  return data.subarray(0, done);
}
