import assert from "node:assert/strict";
import { type Backend, backendWithClose, MemoryBackend } from "../src/block/backend.ts";

Deno.test("backendWithClose forwards reads, writes and every optional capability", async () => {
  const memory = new MemoryBackend(8192);
  const view = backendWithClose(memory, () => Promise.resolve());
  assert.equal(view.size, 8192);
  assert.equal(view.readOnly, false);
  await view.write(0, new Uint8Array([1, 2, 3]));
  assert.deepEqual(await view.read(0, 3), new Uint8Array([1, 2, 3]));
  const target = new Uint8Array(3);
  assert.ok(view.readInto, "readInto is forwarded");
  await view.readInto(0, target);
  assert.deepEqual(target, new Uint8Array([1, 2, 3]));
  assert.ok(view.writeZeroes, "writeZeroes is forwarded");
  await view.writeZeroes(0, 2);
  assert.deepEqual(await memory.read(0, 3), new Uint8Array([0, 0, 3]));
});

Deno.test("backendWithClose leaves out capabilities the backend lacks", () => {
  const bare: Backend = {
    size: 512,
    readOnly: true,
    read: (_offset, length) => Promise.resolve(new Uint8Array(length)),
    write: () => Promise.reject(new Error("read-only")),
    close: () => Promise.resolve(),
  };
  const view = backendWithClose(bare, () => Promise.resolve());
  assert.equal(view.readInto, undefined);
  assert.equal(view.flush, undefined);
  assert.equal(view.trim, undefined);
  assert.equal(view.writeZeroes, undefined);
});

Deno.test("backendWithClose closes with the given function, not the backend's", async () => {
  let backendClosed = 0;
  let viewClosed = 0;
  const memory = new MemoryBackend(512);
  memory.close = () => {
    backendClosed++;
    return Promise.resolve();
  };
  await backendWithClose(memory, () => {
    viewClosed++;
    return Promise.resolve();
  }).close();
  assert.equal(viewClosed, 1);
  assert.equal(backendClosed, 0);
});
