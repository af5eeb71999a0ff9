/**
 * The numbers behind the liveness defaults (src/ivbs/liveness.ts): on one
 * IvbsConnection under a steady pipelined read/write load against the IVBS
 * test server, how long a KEEPALIVE sent as a probe takes to be answered
 * (bounds probeTimeoutMs from below) and the longest silence between two
 * replies while requests wait (bounds silenceMs from below). Run it with a
 * healthy proxy, with large requests, and with --reply-delay.
 *
 *   deno run -A bench/ivbs_probe_rtt.ts --seconds 10 --depth 32 --block-kib 64
 *   deno run -A bench/ivbs_probe_rtt.ts --reply-delay 300-500
 *
 * A measurement script, not a test.
 * @module
 */
import { parseFlags } from "../src/args.ts";
import { errorMessage } from "../src/error_info.ts";
import { IvbsConnection } from "../src/ivbs/connection.ts";
import { startIvbsServer } from "../src/ivbs/server/mod.ts";
import {
  encodeEmpty,
  encodeReadRequest,
  encodeWriteRequest,
  hashPassword,
  Op,
  SESSION_ID_SIZE,
  Status,
} from "../src/ivbs/wire.ts";
import { positive, QUIET } from "./ivbs_loopback.ts";

const USAGE = `usage: deno run -A bench/ivbs_probe_rtt.ts [options]
  --seconds N          load length (default 10)
  --depth N            requests in flight (default 32)
  --block-kib N        request size (default 64)
  --probe-every-ms N   one probe this often (default 100)
  --reply-delay MIN-MAX  the test server delays every reply by MIN..MAX ms (default none)`;

const NO_ID = new Uint8Array(SESSION_ID_SIZE);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil(sorted.length * q) - 1)];
}

async function main(args: string[]): Promise<number> {
  let opts;
  try {
    const { values } = parseFlags(args, {
      seconds: { type: "string" },
      depth: { type: "string" },
      "block-kib": { type: "string" },
      "probe-every-ms": { type: "string" },
      "reply-delay": { type: "string" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(USAGE);
      return 0;
    }
    const delay = values["reply-delay"]?.match(/^(\d+)-(\d+)$/);
    if (values["reply-delay"] !== undefined && !delay) throw new Error("--reply-delay MIN-MAX");
    opts = {
      seconds: positive("seconds", values.seconds, 10),
      depth: positive("depth", values.depth, 32),
      blockBytes: positive("block-kib", values["block-kib"], 64) * 1024,
      probeEveryMs: positive("probe-every-ms", values["probe-every-ms"], 100),
      replyDelayMs: delay ? { min: Number(delay[1]), max: Number(delay[2]) } : undefined,
    };
  } catch (error) {
    console.error(`${errorMessage(error)}\n${USAGE}`);
    return 2;
  }
  const imageBytes = 256 * 1024 * 1024;
  const server = await startIvbsServer({
    users: [{ username: "bench", password: "bench" }],
    images: [{ name: "bench", size: imageBytes }],
    ports: [0],
    listProxiesIntervalMs: 0,
    replyDelayMs: opts.replyDelayMs,
    log: QUIET,
  });
  const conn = await IvbsConnection.open(server.addresses()[0], { log: QUIET });
  try {
    if ((await conn.login("bench", hashPassword("bench"))).status !== Status.OK) {
      throw new Error("login refused");
    }
    if ((await conn.attach("bench")).status !== Status.OK) throw new Error("attach refused");

    let running = true;
    let lastReplyAt = performance.now();
    let longestGap = 0;
    let requests = 0;
    const payload = new Uint8Array(opts.blockBytes).map((_, i) => (i * 131) & 0xff);
    const blocks = Math.floor(imageBytes / opts.blockBytes);
    const worker = async (id: number) => {
      const target = new Uint8Array(opts.blockBytes);
      for (let n = 0; running; n++) {
        const offset = Math.floor(Math.random() * blocks) * opts.blockBytes;
        const packet = (n + id) % 2 === 0
          ? encodeWriteRequest(NO_ID, 0, offset, payload)
          : encodeReadRequest(NO_ID, 0, offset, opts.blockBytes);
        await conn.request(packet, { target: (n + id) % 2 === 0 ? undefined : target });
        const now = performance.now();
        longestGap = Math.max(longestGap, now - lastReplyAt);
        lastReplyAt = now;
        requests++;
      }
    };
    const workers = Array.from({ length: opts.depth }, (_, i) => worker(i));
    await sleep(500); // warm-up: not measured
    longestGap = 0;
    lastReplyAt = performance.now();

    const rtts: number[] = [];
    const end = performance.now() + opts.seconds * 1000;
    while (performance.now() < end) {
      const sent = performance.now();
      await conn.request(encodeEmpty(NO_ID, Op.KEEPALIVE, 0), { probe: true });
      rtts.push(performance.now() - sent);
      await sleep(Math.max(0, opts.probeEveryMs - (performance.now() - sent)));
    }
    running = false;
    await Promise.all(workers);
    rtts.sort((a, b) => a - b);
    const delay = opts.replyDelayMs
      ? `${opts.replyDelayMs.min}-${opts.replyDelayMs.max} ms`
      : "none";
    console.log(
      `load: depth ${opts.depth}, ${
        opts.blockBytes / 1024
      } KiB reads+writes, reply delay ${delay}, ` +
        `${opts.seconds} s, ${requests} requests`,
    );
    console.log(
      `probe round trip: ${rtts.length} probes, median ${quantile(rtts, 0.5).toFixed(2)} ms, ` +
        `p99 ${quantile(rtts, 0.99).toFixed(2)} ms, max ${rtts[rtts.length - 1].toFixed(2)} ms`,
    );
    console.log(`longest silence between replies under load: ${longestGap.toFixed(1)} ms`);
    return 0;
  } finally {
    await conn.close();
    await server.close();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
