/**
 * FrameReader over a scripted stream that has every byte ready: frames arrive
 * whole and in order, EOF at a boundary is clean and inside a frame an error,
 * and a skipped payload leaves the stream in sync.
 */
import assert from "node:assert/strict";
import { FrameReader } from "../src/io/frame_reader.ts";
import type { ByteStream } from "../src/io/stream.ts";
import { UnexpectedEofError } from "../src/io/stream.ts";

const KiB = 1024;
const BUFFER = 256 * KiB;

/** Serves `bytes` as fast as asked. */
class ReadyStream implements ByteStream {
  #at = 0;
  constructor(readonly bytes: Uint8Array) {}

  read(target: Uint8Array): Promise<number | null> {
    if (this.#at >= this.bytes.length) return Promise.resolve(null);
    const n = Math.min(target.length, this.bytes.length - this.#at);
    target.set(this.bytes.subarray(this.#at, this.#at + n));
    this.#at += n;
    return Promise.resolve(n);
  }

  write(data: Uint8Array): Promise<number> {
    return Promise.resolve(data.length);
  }

  close(): void {}
}

/** Frames of a 16-byte header (filled with `tag`) and `size` payload bytes (tag + 1). */
function frames(sizes: number[]): Uint8Array {
  const total = sizes.reduce((sum, size) => sum + 16 + size, 0);
  const bytes = new Uint8Array(total);
  let at = 0;
  sizes.forEach((size, i) => {
    bytes.fill(2 * i, at, at + 16);
    bytes.fill(2 * i + 1, at + 16, at + 16 + size);
    at += 16 + size;
  });
  return bytes;
}

async function readFrames(reader: FrameReader, sizes: number[]): Promise<void> {
  for (const [i, size] of sizes.entries()) {
    const header = new Uint8Array(16);
    assert.equal(await reader.readFull(header, "header", true), true);
    assert.ok(header.every((b) => b === (2 * i) % 256), `header ${i}`);
    const payload = new Uint8Array(size);
    await reader.readFull(payload, "payload");
    assert.ok(payload.every((b) => b === (2 * i + 1) % 256), `payload ${i}`);
  }
}

Deno.test("FrameReader hands over frames whole and in order, large and small", async () => {
  const sizes = [1024 * KiB, 512, 300 * KiB, 16, 0, 2 * 1024 * KiB];
  const reader = new FrameReader(new ReadyStream(frames(sizes)), BUFFER);
  await readFrames(reader, sizes);
  assert.equal(await reader.readFull(new Uint8Array(16), "header", true), false);
});

Deno.test("FrameReader reports a clean EOF at a boundary and a cut frame as an error", async () => {
  const reader = new FrameReader(new ReadyStream(frames([100])), BUFFER);
  await readFrames(reader, [100]);
  assert.equal(await reader.readFull(new Uint8Array(16), "header", true), false);
  const cut = new FrameReader(new ReadyStream(frames([100]).subarray(0, 50)), BUFFER);
  assert.equal(await cut.readFull(new Uint8Array(16), "header", true), true);
  await assert.rejects(cut.readFull(new Uint8Array(100), "payload"), UnexpectedEofError);
});

Deno.test("FrameReader skips a large payload and stays in sync", async () => {
  const sizes = [600 * KiB, 300];
  const stream = new ReadyStream(frames(sizes));
  const reader = new FrameReader(stream, BUFFER);
  const header = new Uint8Array(16);
  await reader.readFull(header, "header", true);
  await reader.skip(sizes[0], "payload");
  await reader.readFull(header, "header", true);
  assert.ok(header.every((b) => b === 2));
  const payload = new Uint8Array(300);
  await reader.readFull(payload, "payload");
  assert.ok(payload.every((b) => b === 3));
});
