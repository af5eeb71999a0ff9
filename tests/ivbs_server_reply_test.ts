import assert from "node:assert/strict";
import { startIvbsServer } from "../src/ivbs/server/mod.ts";
import { MEMORY_CHUNK_SIZE, MemoryStore } from "../src/ivbs/server/store.ts";
import { IvbsSession } from "../src/ivbs/session.ts";
import {
  encodeReadReply,
  encodeReadReplyHeader,
  HEADER_SIZE,
  IvbsProtocolError,
  MAX_IO_LENGTH,
} from "../src/ivbs/wire.ts";
import { captureLog } from "./support/ivbs_fake_proxy.ts";

const MiB = 1024 * 1024;
const USER = { username: "alice", password: "correct horse" };

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 13 + seed) % 253;
  return bytes;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

Deno.test("encodeReadReplyHeader writes the header encodeReadReply puts before the data", () => {
  const sessionId = pattern(32, 1);
  const data = pattern(5000, 2);
  const whole = encodeReadReply(sessionId, 77, data);
  assert.deepEqual(
    encodeReadReplyHeader(sessionId, 77, data.length),
    whole.subarray(0, HEADER_SIZE),
  );
  assert.throws(() => encodeReadReplyHeader(sessionId, 1, MAX_IO_LENGTH + 1), IvbsProtocolError);
});

Deno.test("MemoryStore views show the stored bytes without a copy, zeroes where never written", async () => {
  const store = new MemoryStore();
  const image = await store.create({ name: "disk", size: 4 * MiB });
  const data = pattern(MiB, 3);
  await image.write(MEMORY_CHUNK_SIZE - 100, data); // spans chunks 0 and 1
  const offset = MEMORY_CHUNK_SIZE - 200;
  const length = 2 * MiB + 300; // reaches into never-written chunk 2
  const parts = image.views!(offset, length);
  const copied = new Uint8Array(length);
  await image.readInto(offset, copied);
  assert.deepEqual(concat(parts), copied);
  assert.deepEqual(copied.subarray(0, 100), new Uint8Array(100));
  assert.deepEqual(copied.subarray(100, 100 + MiB), data);
  assert.ok(copied.subarray(100 + MiB).every((b) => b === 0));
  // The first view aliases the stored chunk: a later write shows through it.
  await image.write(offset, new Uint8Array([42]));
  assert.equal(parts[0][0], 42);
  await store.close();
});

for (const backing of ["memory", "file"] as const) {
  Deno.test(`IVBS test server (${backing}) answers pipelined large and small READs byte for byte`, async () => {
    const dir = backing === "file" ? await Deno.makeTempDir({ prefix: "ivbs-reply-" }) : undefined;
    const size = 8 * MiB;
    const server = await startIvbsServer({
      users: [USER],
      images: [{ name: "disk", size }],
      listProxiesIntervalMs: 0,
      log: captureLog(),
      ...(dir ? { dataDir: dir } : {}),
    });
    const session = await IvbsSession.open({
      proxies: server.addresses(),
      image: "disk",
      ...USER,
      log: captureLog(),
    });
    try {
      const model = new Uint8Array(size);
      // Written pieces that leave holes and straddle chunk boundaries.
      for (const [at, length, seed] of [[100, 3 * MiB, 1], [5 * MiB - 7, MiB + 9, 2]]) {
        const data = pattern(length, seed);
        await session.write(at, data);
        model.set(data, at);
      }
      const ranges: [number, number][] = [];
      for (let i = 0; i < 64; i++) {
        const length = i % 3 === 0 ? MiB + (i * 4099) % MiB : 4096 + i;
        const at = (i * 1_234_567) % (size - length);
        ranges.push([at, length]);
      }
      const targets = ranges.map(([, length]) => new Uint8Array(length));
      await Promise.all(ranges.map(([at], i) => session.readInto(at, targets[i])));
      ranges.forEach(([at, length], i) => {
        assert.ok(
          targets[i].every((b, j) => b === model[at + j]),
          `READ ${at}+${length} matches what was written`,
        );
      });
    } finally {
      await session.close();
      await server.close();
      if (dir) await Deno.remove(dir, { recursive: true });
    }
  });
}
