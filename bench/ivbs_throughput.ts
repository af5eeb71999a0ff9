/**
 * Pipelined IVBS throughput on loopback: IvbsSession against the project's IVBS
 * test server (memory store), `--depth` requests of `--block-kib` in flight,
 * writes for `--seconds`, then reads for `--seconds`. Prints MB/s for each.
 *
 *   deno run -A bench/ivbs_throughput.ts --seconds 5 --depth 16
 *
 * Client and server run in this one process (one event loop), so the figure is
 * a lower bound for the client alone. A script, not a test: it asserts nothing.
 * @module
 */
import { parseFlags } from "../src/args.ts";
import { errorMessage } from "../src/error_info.ts";
import { openBenchImage, positive, QUIET } from "./ivbs_loopback.ts";

const USAGE =
  `usage: deno run -A bench/ivbs_throughput.ts [--seconds N] [--depth N] [--block-kib N] [--image-mib N]
  --seconds    duration of each phase (default 5)
  --depth      requests in flight (default 16)
  --block-kib  request size in KiB (default 1024)
  --image-mib  image size in MiB (default 1024; memory, sparse)`;

/** Keeps `depth` requests in flight at random aligned offsets until `seconds` pass. */
async function phase(
  seconds: number,
  depth: number,
  blockBytes: number,
  blocks: number,
  run: (offset: number) => Promise<unknown>,
): Promise<{ bytes: number; ops: number; elapsedS: number; maxLatencyMs: number }> {
  const started = performance.now();
  const end = started + seconds * 1000;
  let ops = 0;
  let maxLatencyMs = 0;
  const worker = async () => {
    while (performance.now() < end) {
      const offset = Math.floor(Math.random() * blocks) * blockBytes;
      const t0 = performance.now();
      await run(offset);
      maxLatencyMs = Math.max(maxLatencyMs, performance.now() - t0);
      ops++;
    }
  };
  await Promise.all(Array.from({ length: depth }, worker));
  const elapsedS = (performance.now() - started) / 1000;
  return { bytes: ops * blockBytes, ops, elapsedS, maxLatencyMs };
}

function report(
  name: string,
  r: { bytes: number; ops: number; elapsedS: number; maxLatencyMs: number },
) {
  const mbps = r.bytes / r.elapsedS / 1e6;
  const mibps = r.bytes / r.elapsedS / (1024 * 1024);
  console.log(
    `${name.padEnd(5)} ${mbps.toFixed(1).padStart(8)} MB/s (${mibps.toFixed(1)} MiB/s)  ` +
      `${r.ops} ops in ${r.elapsedS.toFixed(2)} s, max latency ${r.maxLatencyMs.toFixed(1)} ms`,
  );
}

async function main(args: string[]): Promise<number> {
  let seconds, depth, blockBytes, imageBytes;
  try {
    const { values } = parseFlags(args, {
      seconds: { type: "string" },
      depth: { type: "string" },
      "block-kib": { type: "string" },
      "image-mib": { type: "string" },
      help: { type: "boolean", short: "h" },
    });
    if (values.help) {
      console.log(USAGE);
      return 0;
    }
    seconds = positive("seconds", values.seconds, 5);
    depth = positive("depth", values.depth, 16);
    blockBytes = positive("block-kib", values["block-kib"], 1024) * 1024;
    imageBytes = positive("image-mib", values["image-mib"], 1024) * 1024 * 1024;
  } catch (error) {
    console.error(`${errorMessage(error)}\n${USAGE}`);
    return 2;
  }
  const blocks = Math.floor(imageBytes / blockBytes);
  const { server, session } = await openBenchImage(imageBytes, { listProxiesIntervalMs: 0 }, {
    log: QUIET,
  });
  try {
    console.log(
      `IvbsSession <-> IVBS test server on loopback: ${blockBytes / 1024} KiB requests, ` +
        `depth ${depth}, ${seconds} s per phase`,
    );
    const data = crypto.getRandomValues(new Uint8Array(Math.min(blockBytes, 65536)));
    const payload = new Uint8Array(blockBytes);
    for (let at = 0; at < blockBytes; at += data.length) {
      payload.set(data.subarray(0, blockBytes - at), at);
    }
    report(
      "write",
      await phase(seconds, depth, blockBytes, blocks, (o) => session.write(o, payload)),
    );
    report(
      "read",
      await phase(seconds, depth, blockBytes, blocks, (o) => session.read(o, blockBytes)),
    );
  } finally {
    await session.close();
    await server.close();
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
