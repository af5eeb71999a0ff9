/**
 * The real program run as child processes, for tests and benchmarks alike:
 * `deno run -A main.ts serve`, and the one-shot client commands as separate
 * processes, the way a script would (daemon_process_test.ts, kernel tests, the restart rig).
 * @module
 */
import { fileURLToPath } from "node:url";
import { type IvbsTestServer, startIvbsServer } from "../../src/ivbs/server/mod.ts";

export const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));
export const USER = { username: "alice", password: "alice-pw-5931" };

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `ivbsnetd ARGS` to completion (stdin optional). */
export async function ivbsnetd(args: string[], stdin?: string): Promise<RunResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  const { code, stdout, stderr } = await child.output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code, stdout: decode(stdout), stderr: decode(stderr) };
}

/** An IVBS test server with two proxies and the given images, user alice. */
export function startIvbs(images: { name: string; size: number }[]): Promise<IvbsTestServer> {
  return startIvbsServer({ users: [USER], images, listProxiesIntervalMs: 0 });
}

/** Writes a 0600 config file in a new temp dir. */
export async function writeConfig(config: unknown): Promise<{ dir: string; path: string }> {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-test-" });
  const path = `${dir}/ivbsnetd.json`;
  await Deno.writeTextFile(path, JSON.stringify(config, null, 2), { mode: 0o600 });
  return { dir, path };
}

/** `ivbsnetd serve` in a child process, with its output collected. */
export class DaemonProcess {
  readonly #child: Deno.ChildProcess;
  readonly #stdout: Promise<string>;
  readonly #stderr: Promise<string>;
  readonly url: string;

  private constructor(
    child: Deno.ChildProcess,
    url: string,
    stdout: Promise<string>,
    stderr: Promise<string>,
  ) {
    this.#child = child;
    this.url = url;
    this.#stdout = stdout;
    this.#stderr = stderr;
  }

  /**
   * Starts the daemon and waits for its "listening on URL" line. `args` are
   * more serve flags (e.g. ["--replace"]); `wrapper` runs it under another
   * command (e.g. ["prlimit", "--nofile=80:80"]); `program` replaces
   * `deno run -A main.ts` (e.g. an installed launcher).
   */
  static async start(
    configPath: string,
    { args = [], wrapper = [], env = {}, program = [Deno.execPath(), "run", "-A", MAIN] }: {
      args?: string[];
      wrapper?: string[];
      program?: string[];
      /** More environment variables (e.g. NOTIFY_SOCKET). */
      env?: Record<string, string>;
    } = {},
  ): Promise<DaemonProcess> {
    const command = [
      ...wrapper,
      ...program,
      "serve",
      "--config",
      configPath,
      ...args,
    ];
    const child = new Deno.Command(command[0], {
      args: command.slice(1),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1", IVBSNETD_LOG: "info", ...env },
    }).spawn();
    const stderr = new Response(child.stderr).text();
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    let url: string | null = null;
    while (url === null) {
      const { value, done } = await lines.read();
      if (done) {
        const status = await child.status;
        throw new Error(
          `serve exited (${status.code}) before listening:\n${seen}\n${await stderr}`,
        );
      }
      seen += value;
      url = /listening on (http:\/\/\S+)/.exec(seen)?.[1] ?? null;
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    const rest = (async () => {
      let text = seen;
      for (;;) {
        const { value, done } = await lines.read();
        if (done) return text;
        text += value;
      }
    })();
    return new DaemonProcess(child, url, rest, stderr);
  }

  /** The process id (with `wrapper`, the wrapper's until it execs). */
  get pid(): number {
    return this.#child.pid;
  }

  /** Sends `signal` and waits for the exit; resolves with the code and all output. */
  async stop(signal: Deno.Signal = "SIGTERM"): Promise<RunResult> {
    try {
      this.#child.kill(signal);
    } catch {
      // Already gone (e.g. after POST /api/shutdown): the status says how it ended.
    }
    return await this.wait();
  }

  async wait(): Promise<RunResult> {
    const status = await this.#child.status;
    return { code: status.code, stdout: await this.#stdout, stderr: await this.#stderr };
  }
}

/** The attached nbd devices per sysfs (a `pid` file exists while NBD_DO_IT runs). */
export async function attachedNbdDevices(): Promise<string[]> {
  const attached: string[] = [];
  try {
    for await (const entry of Deno.readDir("/sys/block")) {
      if (!/^nbd\d+$/.test(entry.name)) continue;
      try {
        await Deno.stat(`/sys/block/${entry.name}/pid`);
        attached.push(`/dev/${entry.name}`);
      } catch {
        // No pid file: not attached.
      }
    }
  } catch {
    // No /sys/block (not Linux): nothing attached.
  }
  return attached.sort();
}

/** Why a real kernel mount cannot run here, or null when it can. */
export function kernelSkipReason(): string | null {
  try {
    Deno.statSync("/dev/nbd0");
  } catch {
    return "no /dev/nbd0 (nbd module not loaded; run inside /work/shared/vm/nbd-vm)";
  }
  if (Deno.uid() !== 0) return "not root (attaching /dev/nbdX needs root)";
  return null;
}
