/**
 * CPU per 1 MiB frame of two checkouts' FrameReader, alternating: one process
 * writes frames of a 28-byte header + 1 MiB to a unix socket and reads them
 * back with the FrameReader of TREE_A, then TREE_B, three rounds. Host load
 * hits both alike; the CPU counts reader and writer (/proc/self/stat ticks).
 *
 * usage: deno run -A bench/frame_reader_bench.ts TREE_A TREE_B [--frames 1500]
 * @module
 */
import { parseArgs } from "node:util";

interface Reader {
  readFull(target: Uint8Array, what: string, atBoundary?: boolean): Promise<boolean>;
}
type ReaderClass = new (stream: Deno.Conn) => Reader;

const MiB = 1024 * 1024;
const HEADER = 28;

function cpuMs(): number {
  const fields = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function run(label: string, Reader: ReaderClass, frames: number): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "frame_reader_bench_" });
  const listener = Deno.listen({ transport: "unix", path: `${dir}/s.sock` });
  const [server, client] = await Promise.all([
    listener.accept(),
    Deno.connect({ transport: "unix", path: `${dir}/s.sock` }),
  ]);
  const frame = new Uint8Array(HEADER + MiB).fill(1);
  const writing = (async () => {
    for (let i = 0; i < frames; i++) {
      for (let done = 0; done < frame.length;) done += await client.write(frame.subarray(done));
    }
  })();
  const reader = new Reader(server);
  const header = new Uint8Array(HEADER);
  const payload = new Uint8Array(MiB);
  const cpu0 = cpuMs();
  const t0 = performance.now();
  for (let i = 0; i < frames; i++) {
    await reader.readFull(header, "header", true);
    await reader.readFull(payload, "payload");
  }
  const cpu = cpuMs() - cpu0;
  const seconds = (performance.now() - t0) / 1000;
  await writing;
  client.close();
  server.close();
  listener.close();
  await Deno.remove(dir, { recursive: true });
  console.log(
    `${label}: ${(cpu * 1000 / frames).toFixed(0)} µs CPU per frame, ` +
      `${(frames / seconds).toFixed(0)} frames/s`,
  );
}

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { frames: { type: "string", default: "1500" } },
});
if (positionals.length !== 2) {
  console.error("usage: frame_reader_bench.ts TREE_A TREE_B [--frames N]");
  Deno.exit(2);
}
const readers: [string, ReaderClass][] = [];
for (const tree of positionals) {
  const module = await import(`${tree}/src/io/frame_reader.ts`);
  readers.push([tree, module.FrameReader as ReaderClass]);
}
for (let round = 0; round < 3; round++) {
  for (const [label, Reader] of readers) await run(label, Reader, Number(values.frames));
}
