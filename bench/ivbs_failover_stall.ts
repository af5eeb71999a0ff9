/**
 * How long a proxy fault stalls I/O: a steady pipelined workload through
 * IvbsSession against the IVBS test server (3 proxies), with a fault every
 * `--every-ms` on the proxy in use: stop (then restart), stall (a silent proxy:
 * it stays stalled until the session leaves it, then restarts), USE_ANOTHER_PROXY,
 * EXPIRED, dropped connections. For each kind of fault it reports the stall: the
 * longest time a request waited between that fault and the next one. Every
 * session setting is the production default unless a flag says otherwise.
 *
 *   deno run -A bench/ivbs_failover_stall.ts --seconds 10
 *
 * A measurement script, not a test: it asserts nothing, but it counts errors.
 * @module
 */
import { parseFlags } from "../src/args.ts";
import { errorMessage } from "../src/error_info.ts";
import { logger } from "../src/log.ts";
import { Status } from "../src/ivbs/wire.ts";
import { openBenchImage, positive, QUIET } from "./ivbs_loopback.ts";

const USAGE = `usage: deno run -A bench/ivbs_failover_stall.ts [options]
  --seconds N        faults phase length (default 10)
  --every-ms N       one fault this often (default 1000)
  --dead-peer-ms N   session deadPeerTimeoutMs (default: the session's, 15000)
  --probe-timeout-ms N  liveness probeTimeoutMs (default: the session's; 0 = no probes)
  --depth N          requests in flight (default 16)
  --block-kib N      request size (default 64)
  --verbose          print the session's log (failovers, retries) on stderr`;

function nonNegative(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be an integer >= 0`);
  return n;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Span {
  start: number;
  end: number;
}

async function main(args: string[]): Promise<number> {
  let opts;
  try {
    const { values } = parseFlags(args, {
      seconds: { type: "string" },
      "every-ms": { type: "string" },
      "dead-peer-ms": { type: "string" },
      "probe-timeout-ms": { type: "string" },
      depth: { type: "string" },
      "block-kib": { type: "string" },
      verbose: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(USAGE);
      return 0;
    }
    opts = {
      seconds: positive("seconds", values.seconds, 10),
      everyMs: positive("every-ms", values["every-ms"], 1000),
      deadPeerMs: positive("dead-peer-ms", values["dead-peer-ms"], 15_000),
      probeTimeoutMs: values["probe-timeout-ms"] === undefined
        ? undefined
        : nonNegative("probe-timeout-ms", values["probe-timeout-ms"]),
      depth: positive("depth", values.depth, 16),
      blockBytes: positive("block-kib", values["block-kib"], 64) * 1024,
      verbose: values.verbose ?? false,
    };
  } catch (error) {
    console.error(`${errorMessage(error)}\n${USAGE}`);
    return 2;
  }
  const imageBytes = 256 * 1024 * 1024;
  const { server, session } = await openBenchImage(
    imageBytes,
    { ports: [0, 0, 0], listProxiesIntervalMs: 1000 },
    {
      deadPeerTimeoutMs: opts.deadPeerMs,
      liveness: { probeTimeoutMs: opts.probeTimeoutMs },
      log: opts.verbose ? logger("ivbs") : QUIET,
    },
  );
  const inUse = () =>
    Math.max(0, server.proxies.findIndex((p) => session.proxy === `127.0.0.1:${p.port}`));

  const spans: Span[] = [];
  const errors: string[] = [];
  let running = true;
  const payload = crypto.getRandomValues(new Uint8Array(opts.blockBytes));
  const blocks = Math.floor(imageBytes / opts.blockBytes);
  const worker = async (id: number) => {
    for (let n = 0; running; n++) {
      const offset = Math.floor(Math.random() * blocks) * opts.blockBytes;
      const start = performance.now();
      try {
        if ((n + id) % 2 === 0) await session.write(offset, payload);
        else await session.read(offset, opts.blockBytes);
      } catch (error) {
        errors.push(String(error));
      }
      spans.push({ start, end: performance.now() });
    }
  };
  const workers = Array.from({ length: opts.depth }, (_, i) => worker(i));

  const faults: { kind: string; at: number }[] = [];
  const kinds: [string, () => Promise<void>][] = [
    ["stop+restart", async () => {
      const i = inUse();
      await server.stopProxy(i);
      setTimeout(() => server.startProxy(i).catch(() => {}), opts.everyMs / 2);
    }],
    ["stall (silent proxy)", async () => {
      const i = inUse();
      const failovers = session.stats.failovers;
      server.stallProxy(i, true);
      // Silent until the session leaves it (or, at worst, the dead-peer timeout).
      const giveUp = performance.now() + opts.deadPeerMs + 200;
      while (session.stats.failovers === failovers && performance.now() < giveUp) await sleep(10);
      await sleep(200);
      // Stop before resuming so the stalled proxy cannot apply old writes late.
      await server.stopProxy(i);
      server.stallProxy(i, false);
      await server.startProxy(i);
    }],
    ["USE_ANOTHER_PROXY", () => Promise.resolve(server.injectStatus(Status.USE_ANOTHER_PROXY, 1))],
    ["EXPIRED", () => Promise.resolve(server.injectStatus(Status.EXPIRED, 1))],
    ["dropped connection", () => Promise.resolve(server.dropConnections(inUse()))],
  ];

  await sleep(1000); // baseline without faults
  const baselineEnd = performance.now();
  const phaseEnd = baselineEnd + opts.seconds * 1000;
  for (let k = 0; performance.now() < phaseEnd; k++) {
    const [kind, act] = kinds[k % kinds.length];
    const at = performance.now();
    faults.push({ kind, at });
    if (opts.verbose) {
      console.error(`${new Date().toISOString()} fault: ${kind} on proxy ${inUse()}`);
    }
    await act();
    const left = opts.everyMs - (performance.now() - at);
    if (left > 0) await sleep(left);
  }
  await sleep(Math.max(opts.deadPeerMs, 500)); // let the last fault settle
  running = false;
  await Promise.all(workers);
  const stats = session.stats;
  await session.close();
  await server.close();

  const baseline = spans.filter((s) => s.end <= baselineEnd).map((s) => s.end - s.start);
  console.log(
    `workload: depth ${opts.depth}, ${opts.blockBytes / 1024} KiB reads+writes; ` +
      `deadPeerTimeoutMs ${opts.deadPeerMs}, probeTimeoutMs ${
        opts.probeTimeoutMs ?? "default"
      }; one fault every ${opts.everyMs} ms for ${opts.seconds} s`,
  );
  console.log(
    `baseline (no fault): ${baseline.length} requests, max latency ${
      Math.max(...baseline).toFixed(1)
    } ms`,
  );
  const worst = new Map<string, number>();
  faults.forEach((fault, i) => {
    // Every request waiting during this fault's window (in flight when it hit, or
    // issued before the next fault), counted from the later of the fault and its
    // start, up to the next fault so one fault's stall is not charged to another.
    const next = faults[i + 1]?.at ?? Infinity;
    let stall = 0;
    for (const s of spans) {
      if (s.end <= fault.at || s.start >= next) continue;
      stall = Math.max(stall, Math.min(s.end, next) - Math.max(s.start, fault.at));
    }
    worst.set(fault.kind, Math.max(worst.get(fault.kind) ?? 0, stall));
  });
  for (const [kind, ms] of worst) {
    console.log(`  ${kind.padEnd(20)} longest stall ${ms.toFixed(1).padStart(8)} ms`);
  }
  console.log(
    `faults ${faults.length}, requests ${spans.length}, errors ${errors.length}, ` +
      `failovers ${stats.failovers}, reconnects ${stats.reconnects}, retries ${stats.retries}`,
  );
  const causes = Object.entries(stats.failoverCauses).filter(([, n]) => n > 0);
  console.log(
    `failovers by cause: ${causes.map(([cause, n]) => `${cause} ${n}`).join(", ") || "none"}; ` +
      `probes sent ${stats.probesSent}, answered ${stats.probesAnswered}`,
  );
  for (const error of errors.slice(0, 5)) console.log(`  error: ${error}`);
  return errors.length === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
