/**
 * A client may reuse a handle as soon as it has read the reply that carried it
 * (qemu-img does). The serve loop must count the handle as free from the moment
 * the reply is queued, not from when the writer's promise settles later.
 */
import assert from "node:assert/strict";
import { MemoryBackend } from "../src/block/backend.ts";
import { serveTransmission } from "../src/nbd/serve.ts";
import type { ByteStream } from "../src/io/stream.ts";
import { Command, decodeReply, encodeRequest, REPLY_SIZE } from "../src/nbd/wire.ts";

/**
 * Plays a client that answers every reply at once with its next request: the
 * request is handed to the pending read before `write` returns, so the serve
 * loop's reader resumes before its writer does (the ordering that exposed the race).
 */
class EagerClient implements ByteStream {
  readonly replies: { handle: bigint; error: number }[] = [];
  #input: Uint8Array[] = [];
  #pendingRead: { target: Uint8Array; resolve: (n: number | null) => void } | null = null;
  #closed = false;

  constructor(first: Uint8Array, readonly next: () => Uint8Array | null) {
    this.#input.push(first);
  }

  read(target: Uint8Array): Promise<number | null> {
    const chunk = this.#input.shift();
    if (chunk) return Promise.resolve(this.#copy(chunk, target));
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#pendingRead = { target, resolve });
  }

  write(data: Uint8Array): Promise<number> {
    for (let at = 0; at + REPLY_SIZE <= data.length; at += REPLY_SIZE) {
      this.replies.push(decodeReply(data.subarray(at, at + REPLY_SIZE)));
    }
    const request = this.next();
    if (request === null) this.#closed = true;
    const pending = this.#pendingRead;
    if (pending) {
      this.#pendingRead = null;
      pending.resolve(request ? this.#copy(request, pending.target) : null);
    } else if (request) {
      this.#input.push(request);
    }
    return Promise.resolve(data.length);
  }

  close(): void {
    this.#closed = true;
  }

  #copy(chunk: Uint8Array, target: Uint8Array): number {
    if (chunk.length > target.length) {
      this.#input.unshift(chunk.subarray(target.length));
      chunk = chunk.subarray(0, target.length);
    }
    target.set(chunk);
    return chunk.length;
  }
}

Deno.test("serveTransmission accepts a handle reused right after its reply was sent", async () => {
  const handle = 7n;
  // A reply with no data after it, so the client sees only headers.
  const zero = () => encodeRequest({ type: Command.WRITE_ZEROES, handle, offset: 0, length: 512 });
  let sent = 1;
  const client = new EagerClient(zero(), () => sent++ < 20 ? zero() : null);
  await serveTransmission(client, new MemoryBackend(4096));
  assert.equal(client.replies.length, 20);
  assert.ok(client.replies.every((r) => r.handle === handle && r.error === 0));
});
