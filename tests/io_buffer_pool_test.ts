import assert from "node:assert/strict";
import { BufferPool } from "../src/io/buffer_pool.ts";

Deno.test("BufferPool hands back a given buffer for the next request of its size class", () => {
  const pool = new BufferPool(8 * 1024 * 1024);
  const first = pool.take(1000 * 1024);
  assert.equal(first.length, 1000 * 1024);
  assert.equal(first.buffer.byteLength, 1024 * 1024);
  pool.give(first);
  assert.equal(pool.pooledBytes, 1024 * 1024);
  const second = pool.take(1024 * 1024);
  assert.equal(second.buffer, first.buffer);
  assert.equal(pool.pooledBytes, 0);
  // Another size class does not get it.
  pool.give(second);
  assert.notEqual(pool.take(512 * 1024).buffer, first.buffer);
});

Deno.test("BufferPool pools page-sized buffers: a 4 KiB read reuses the last one", () => {
  const pool = new BufferPool(1024 * 1024);
  const page = pool.take(4096);
  pool.give(page);
  assert.equal(pool.pooledBytes, 4096);
  assert.equal(pool.take(4096).buffer, page.buffer);
  // A 4 KiB WRITE with the IVBS offset prefix falls in the next class.
  const write = pool.take(4096 + 8);
  assert.equal(write.buffer.byteLength, 8192);
});

Deno.test("BufferPool neither pools sub-page buffers nor holds more than its bound", () => {
  const pool = new BufferPool(2 * 1024 * 1024);
  const small = pool.take(4095);
  pool.give(small);
  assert.equal(pool.pooledBytes, 0);
  const buffers = [pool.take(1 << 20), pool.take(1 << 20), pool.take(1 << 20)];
  for (const buffer of buffers) pool.give(buffer);
  assert.equal(pool.pooledBytes, 2 * 1024 * 1024);
  // A buffer that is not a whole size class (not from take) is ignored.
  pool.give(new Uint8Array(3 * 65536));
  assert.equal(pool.pooledBytes, 2 * 1024 * 1024);
});
