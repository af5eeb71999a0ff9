/**
 * The processes of a kernel failover run, as a person would start them: the
 * IVBS test server (`ivbsnetd ivbs-server`, several proxies and the admin API)
 * and `ivbsnetd attach` on /dev/nbdN; the admin calls that fault the proxies;
 * and the kernel log lines that would mean the device saw an error. Shared by
 * tests/kernel/failover_test.ts and bench/kernel_failover_stall.ts.
 * @module
 */
import type { ProxyView } from "../../src/ivbs/server/proxy.ts";
import { sh } from "./sh.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;
const TAIL_LINES = 400;

/** A child `deno run main.ts …` whose output is read line by line (stdout and stderr). */
export class LineChild {
  readonly name: string;
  readonly #process: Deno.ChildProcess;
  readonly #pumps: Promise<void>[];
  readonly #tail: string[] = [];
  readonly #counters = new Map<RegExp, number>();
  #waiters: { pattern: RegExp; resolve: (line: string) => void }[] = [];
  #exited = false;
  readonly status: Promise<Deno.CommandStatus>;

  constructor(name: string, args: string[]) {
    this.name = name;
    this.#process = new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-all", "--no-check", MAIN, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#pumps = [this.#pump(this.#process.stdout), this.#pump(this.#process.stderr)];
    this.status = this.#process.status.then((status) => {
      this.#exited = true;
      return status;
    });
  }

  get pid(): number {
    return this.#process.pid;
  }

  /** Counts lines matching `pattern` from now on (read with `count`). */
  watch(pattern: RegExp): void {
    this.#counters.set(pattern, 0);
  }

  count(pattern: RegExp): number {
    return this.#counters.get(pattern) ?? 0;
  }

  /** The last lines it printed, for failure messages. */
  tail(lines = 40): string {
    return this.#tail.slice(-lines).join("\n");
  }

  /** The first line (already printed or to come) matching `pattern`; rejects if it exits first. */
  async waitForLine(pattern: RegExp, timeoutMs: number): Promise<string> {
    const seen = this.#tail.find((line) => pattern.test(line));
    if (seen !== undefined) return seen;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let waiter: { pattern: RegExp; resolve: (line: string) => void } | undefined;
    try {
      // Every contender resolves (never rejects): a loser must not reject unhandled later.
      const outcome = await Promise.race([
        new Promise<{ line: string }>((resolve) => {
          waiter = { pattern, resolve: (line) => resolve({ line }) };
          this.#waiters.push(waiter);
        }),
        this.status.then((status) => ({ exited: status.code })),
        new Promise<{ timedOut: true }>((resolve) => {
          timer = setTimeout(() => resolve({ timedOut: true }), timeoutMs);
        }),
      ]);
      if ("line" in outcome) return outcome.line;
      const why = "exited" in outcome
        ? `exited (code ${outcome.exited}) before printing`
        : `printed nothing within ${timeoutMs} ms matching`;
      throw new Error(`${this.name} ${why} ${pattern}:\n${this.tail()}`);
    } finally {
      clearTimeout(timer);
      this.#waiters = this.#waiters.filter((w) => w !== waiter);
    }
  }

  /** Sends `signal` and waits for the exit; SIGKILL after `killAfterMs`. Idempotent. */
  async stop(signal: Deno.Signal = "SIGTERM", killAfterMs = 60_000): Promise<Deno.CommandStatus> {
    if (!this.#exited) {
      try {
        this.#process.kill(signal);
      } catch {
        // Exited meanwhile.
      }
    }
    const timer = setTimeout(() => {
      try {
        this.#process.kill("SIGKILL");
      } catch {
        // Exited meanwhile.
      }
    }, killAfterMs);
    try {
      const status = await this.status;
      await Promise.all(this.#pumps);
      return status;
    } finally {
      clearTimeout(timer);
    }
  }

  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    let partial = "";
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      const lines = (partial + text).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) this.#line(line);
    }
    if (partial) this.#line(partial);
  }

  #line(line: string): void {
    this.#tail.push(line);
    if (this.#tail.length > TAIL_LINES) this.#tail.shift();
    for (const [pattern, n] of this.#counters) {
      if (pattern.test(line)) this.#counters.set(pattern, n + 1);
    }
    for (const waiter of this.#waiters) {
      if (waiter.pattern.test(line)) waiter.resolve(line);
    }
  }
}

/** The IVBS test server as a subprocess, with its admin API. */
export interface ServerProcess {
  child: LineChild;
  proxies: { host: string; port: number }[];
  adminPort: number;
  /** GET /proxies. */
  proxyStates(): Promise<ProxyView[]>;
  /** POST /proxies/N/ACTION. */
  proxyAction(
    index: number,
    action: "stop" | "start" | "stall" | "unstall" | "drop",
  ): Promise<void>;
  /** POST /inject: the next `count` reads/writes get `status` instead of service. */
  inject(status: "USE_ANOTHER_PROXY" | "EXPIRED" | "TEMPORARY_ERROR", count: number): Promise<void>;
  /** GET /stats. */
  stats(): Promise<
    { connectionsAccepted: number; requests: Record<string, number>; injected: number }
  >;
  /** The proxy the client is connected to now, or null while it reconnects. */
  serving(): Promise<number | null>;
  stop(): Promise<void>;
}

async function adminCall<T>(
  port: number,
  method: string,
  path: string,
  body?: unknown,
): Promise<T> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: body === undefined ? undefined : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`admin ${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text) as T;
}

/**
 * Starts `ivbsnetd ivbs-server` with `proxies` proxies on free ports, a memory
 * image `image` of `size` (like "1G") for user `user`, and the admin API on a
 * free port; resolves once it is ready.
 */
export async function startServerProcess(options: {
  proxies: number;
  image: string;
  size: string;
  user: string;
  usersFile: string;
}): Promise<ServerProcess> {
  const child = new LineChild("ivbs-server", [
    "ivbs-server",
    "--port",
    "0",
    "--proxies",
    String(options.proxies),
    "--users-file",
    options.usersFile,
    "--create",
    `${options.image}:${options.size}`,
    "--admin-port",
    "0",
  ]);
  try {
    await child.waitForLine(/^ready/, 120_000);
  } catch (error) {
    await child.stop("SIGKILL");
    throw error;
  }
  const text = child.tail(TAIL_LINES);
  const proxies = [...text.matchAll(/listening on ([\d.]+):(\d+)/g)].map((m) => ({
    host: m[1],
    port: Number(m[2]),
  }));
  const adminPort = Number(/admin API on http:\/\/127\.0\.0\.1:(\d+)/.exec(text)?.[1]);
  if (proxies.length !== options.proxies || !adminPort) {
    await child.stop();
    throw new Error(`cannot read the proxy and admin ports from ivbs-server:\n${text}`);
  }
  const proxyStates = () => adminCall<ProxyView[]>(adminPort, "GET", "/proxies");
  return {
    child,
    proxies,
    adminPort,
    proxyStates,
    async proxyAction(index, action) {
      await adminCall(adminPort, "POST", `/proxies/${index}/${action}`);
    },
    async inject(status, count) {
      await adminCall(adminPort, "POST", "/inject", { status, count });
    },
    stats: () => adminCall(adminPort, "GET", "/stats"),
    async serving() {
      const states = await proxyStates();
      return states.find((p) => p.running && p.connections > 0)?.index ?? null;
    },
    async stop() {
      await child.stop();
    },
  };
}

/** The faults a run injects, in the order it cycles through them. */
export const FAULTS = ["stop", "use-another-proxy", "expired", "drop"] as const;
export type Fault = typeof FAULTS[number];

/**
 * Applies one fault to the proxy the client uses (stop: restarted after
 * `downMs`; drop: its connections closed) or to the next requests
 * (USE_ANOTHER_PROXY / EXPIRED, 3 of them). `turn` picks a proxy when none is
 * connected (between a failover and the next connection). Returns whether the
 * proxy hit was the serving one.
 */
export async function applyFault(
  server: ServerProcess,
  fault: Fault,
  turn: number,
  downMs = 1_500,
): Promise<{ proxy: number | null; wasServing: boolean }> {
  const serving = await server.serving();
  const target = serving ?? turn % server.proxies.length;
  switch (fault) {
    case "stop":
      await server.proxyAction(target, "stop");
      await sleep(downMs);
      await server.proxyAction(target, "start");
      return { proxy: target, wasServing: serving !== null };
    case "drop":
      await server.proxyAction(target, "drop");
      return { proxy: target, wasServing: serving !== null };
    case "use-another-proxy":
      await server.inject("USE_ANOTHER_PROXY", 3);
      return { proxy: null, wasServing: false };
    case "expired":
      await server.inject("EXPIRED", 3);
      return { proxy: null, wasServing: false };
  }
}

/**
 * A silent proxy: the serving proxy reads and answers nothing for `stallMs`
 * (the client should leave it long before), then it is stopped, released and
 * restarted (stopped first, so it cannot apply replayed writes late).
 */
export async function stallServing(
  server: ServerProcess,
  turn: number,
  stallMs = 3_000,
): Promise<{ proxy: number | null; wasServing: boolean }> {
  const serving = await server.serving();
  const target = serving ?? turn % server.proxies.length;
  await server.proxyAction(target, "stall");
  await sleep(stallMs);
  await server.proxyAction(target, "stop");
  await server.proxyAction(target, "unstall");
  await server.proxyAction(target, "start");
  return { proxy: target, wasServing: serving !== null };
}

/** Lines the attach process logs once per failover (src/ivbs/failover.ts) and retry (session.ts). */
export const FAILOVER_LINE = /IVBS connection failed; failing over/;
export const RETRY_LINE = /IVBS request retried/;

/**
 * Starts `ivbsnetd attach` for an IVBS image on `device` and resolves once it
 * printed "attached". Counts the failover and retry lines it logs.
 */
export async function startAttachProcess(options: {
  device: string;
  image: string;
  user: string;
  passwordFile: string;
  proxies: { host: string; port: number }[];
}): Promise<LineChild> {
  const child = new LineChild("attach", [
    "attach",
    "--device",
    options.device,
    "--image",
    options.image,
    "--user",
    options.user,
    "--password-file",
    options.passwordFile,
    ...options.proxies.flatMap((p) => ["--proxy", `${p.host}:${p.port}`]),
  ]);
  child.watch(FAILOVER_LINE);
  child.watch(RETRY_LINE);
  try {
    await child.waitForLine(/^attached /, 120_000);
  } catch (error) {
    await child.stop("SIGKILL");
    throw error;
  }
  return child;
}

/** Kernel log lines that mean `device` (e.g. "nbd3") saw an error or a dead connection. */
export function deviceErrors(lines: string[], device: string): string[] {
  const name = new RegExp(`\\b${device.replace(/^\/dev\//, "")}\\b`);
  const trouble =
    /I\/O error|Connection timed out|Receive control failed|Send control failed|Dead connection|timed out|Double reply|Unexpected reply/i;
  return lines.filter((line) => name.test(line) && trouble.test(line));
}

/** A mark in the kernel log: `since(mark)` returns only the lines logged after it. */
export interface KernelLog {
  since(): Promise<string[]>;
}

const STAMP = /^\[\s*(\d+\.\d+)\]/;

/**
 * Marks the current end of `dmesg`. Lines carry timestamps ("[  12.345678]"),
 * so lines after the mark are those with a later stamp, which holds even if
 * the ring buffer wraps; without stamps it falls back to counting lines.
 */
export async function markKernelLog(): Promise<KernelLog> {
  const read = async () => {
    const ran = await sh("dmesg");
    if (ran.code !== 0) throw new Error(`dmesg exited ${ran.code}: ${ran.stderr.trim()}`);
    return ran.stdout.split("\n").filter((line) => line !== "");
  };
  const before = await read();
  const lastStamp = before.length ? STAMP.exec(before[before.length - 1])?.[1] : "0";
  return {
    async since() {
      const now = await read();
      if (lastStamp === undefined) return now.slice(before.length);
      return now.filter((line) => Number(STAMP.exec(line)?.[1] ?? Infinity) > Number(lastStamp));
    },
  };
}

/** Whether /sys/block/nbdN/pid exists (the device is attached). */
export async function devicePidPresent(device: string): Promise<boolean> {
  try {
    await Deno.stat(`/sys/block/${device.replace(/^\/dev\//, "")}/pid`);
    return true;
  } catch {
    return false;
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
