/**
 * Starting and measuring the processes a benchmark compares: ivbsnetd, its
 * IVBS test server and the nbdkit peers. CPU time and peak RSS come from
 * /proc, read just before a process is stopped.
 * @module
 */

export interface Usage {
  cpuSeconds: number;
  peakRssMiB: number;
}

/** A child process with a readable name, stopped with SIGTERM. */
export class Child {
  readonly #process: Deno.ChildProcess;
  readonly name: string;

  constructor(name: string, command: string, args: string[]) {
    this.name = name;
    this.#process = new Deno.Command(command, {
      args,
      stdin: "null",
      stdout: "null",
      stderr: "inherit",
    }).spawn();
  }

  get pid(): number {
    return this.#process.pid;
  }

  /** CPU time (user + system) and peak RSS so far, from /proc. */
  usage(): Usage {
    const stat = Deno.readTextFileSync(`/proc/${this.pid}/stat`);
    // Fields after the command name, which is in parentheses and may hold spaces.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticksPerSecond = 100; // Linux USER_HZ
    const cpuSeconds = (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
    const status = Deno.readTextFileSync(`/proc/${this.pid}/status`);
    const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
    return { cpuSeconds, peakRssMiB: hwm ? Number(hwm[1]) / 1024 : 0 };
  }

  async stop(): Promise<void> {
    try {
      this.#process.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    const timer = setTimeout(() => {
      try {
        this.#process.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    }, 10_000);
    await this.#process.status;
    clearTimeout(timer);
  }
}

/** Waits until `check` holds, polling; throws after `timeoutMs`. */
export async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 60_000,
) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** True once a TCP port on 127.0.0.1 accepts connections. */
export async function portOpen(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/** A free TCP port on 127.0.0.1 (bound, then released). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}
