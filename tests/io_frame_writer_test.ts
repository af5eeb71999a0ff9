/** The serialized frame writer every connection kind uses (src/io/frame_writer.ts). */
import assert from "node:assert/strict";
import { type Frame, FrameWriter } from "../src/io/frame_writer.ts";
import type { ByteStream } from "../src/io/stream.ts";

/**
 * A stream whose writes complete only when the test says so: each write is
 * recorded (as the very buffer given) and waits in `pending`.
 */
class HeldStream implements ByteStream {
  readonly writes: Uint8Array[] = [];
  readonly pending: { resolve: (n: number) => void; reject: (e: Error) => void }[] = [];
  /** Written bytes, snapshotted when each write was issued (the writer may reuse its buffer). */
  readonly copies: Uint8Array[] = [];
  #wake: (() => void) | null = null;

  write(data: Uint8Array): Promise<number> {
    this.writes.push(data);
    this.copies.push(data.slice());
    this.#wake?.();
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }
  read(): Promise<number | null> {
    return Promise.resolve(null);
  }
  close(): void {}

  /** Waits until `count` writes have been issued. */
  async issued(count: number): Promise<void> {
    while (this.writes.length < count) {
      await new Promise<void>((resolve) => this.#wake = resolve);
      this.#wake = null;
    }
  }
  /** Completes the oldest write in full. */
  complete(): void {
    const write = this.pending.shift()!;
    write.resolve(this.writes[this.writes.length - this.pending.length - 1].length);
  }
  fail(error: Error): void {
    this.pending.shift()!.reject(error);
  }
}

interface TestFrame extends Frame {
  name: string;
  outcome?: boolean;
  abandoned?: boolean;
}

function frame(name: string, head: number, body?: Uint8Array | Uint8Array[]): TestFrame {
  return {
    name,
    head: new Uint8Array(head).fill(name.charCodeAt(0)),
    body,
    written(ok: boolean) {
      this.outcome = ok;
    },
  };
}

function bytes(length: number, fill: number): Uint8Array {
  return new Uint8Array(length).fill(fill);
}

Deno.test("FrameWriter coalesces frames queued during a write into one write, in order", async () => {
  const stream = new HeldStream();
  const writer = new FrameWriter<TestFrame>(stream);
  const a = frame("a", 16, bytes(4096, 1));
  writer.send(a);
  await stream.issued(1);
  const rest = [frame("b", 16, bytes(4096, 2)), frame("c", 16), frame("d", 16, bytes(10, 3))];
  for (const f of rest) writer.send(f);
  assert.equal(stream.writes.length, 1, "nothing else starts while a write is in progress");
  stream.complete();
  await stream.issued(2);
  assert.equal(a.outcome, true);
  assert.equal(stream.writes[1].length, 16 + 4096 + 16 + 16 + 10, "the three frames, one write");
  const second = stream.copies[1];
  assert.equal(second[0], "b".charCodeAt(0));
  assert.equal(second[16], 2);
  assert.equal(second[16 + 4096], "c".charCodeAt(0));
  assert.equal(second[16 + 4096 + 16 + 16], 3);
  assert.equal(rest[0].outcome, undefined, "settled only once written");
  stream.complete();
  await writer.flushed();
  assert.deepEqual(rest.map((f) => f.outcome), [true, true, true]);
});

Deno.test("FrameWriter sends a large payload's header with its first data and the rest uncopied", async () => {
  const stream = new HeldStream();
  const writer = new FrameWriter<TestFrame>(stream, { headDataBytes: 1024, copyBytes: 512 });
  const data = bytes(10_000, 7);
  const big = frame("r", 16, data);
  writer.send(big);
  await stream.issued(1);
  assert.equal(stream.writes[0].length, 16 + 1024, "header plus the first 1 KiB of data");
  assert.equal(stream.copies[0][16], 7);
  stream.complete();
  await stream.issued(2);
  assert.equal(stream.writes[1].buffer, data.buffer, "the rest is the caller's buffer, not a copy");
  assert.equal(stream.writes[1].byteOffset, 1024);
  assert.equal(stream.writes[1].length, 10_000 - 1024);
  assert.equal(big.outcome, undefined, "not written until its last byte is");
  stream.complete();
  await writer.flushed();
  assert.equal(big.outcome, true);
});

Deno.test("FrameWriter gathers small frames ahead of a large one and ends the batch with it", async () => {
  const stream = new HeldStream();
  const writer = new FrameWriter<TestFrame>(stream, { headDataBytes: 100, copyBytes: 200 });
  const first = frame("x", 8);
  writer.send(first); // goes alone: the writer was idle
  await stream.issued(1);
  writer.send(frame("s", 8, bytes(50, 1)));
  writer.send(frame("l", 8, [bytes(60, 2), bytes(300, 3)])); // body in parts
  writer.send(frame("t", 8));
  stream.complete();
  await stream.issued(2);
  assert.equal(stream.writes[1].length, 58 + 8 + 100, "small, then header and 100 data bytes");
  assert.equal(stream.copies[1][58 + 8 + 59], 2);
  assert.equal(stream.copies[1][58 + 8 + 60], 3);
  stream.complete();
  await stream.issued(3);
  assert.equal(stream.writes[2].length, 260, "the rest of the second part, uncopied");
  stream.complete();
  await stream.issued(4);
  assert.equal(stream.writes[3].length, 8, "the frame after the large one: next batch");
  stream.complete();
  await writer.flushed();
});

Deno.test("FrameWriter puts an urgent frame ahead of every queued one", async () => {
  const stream = new HeldStream();
  const writer = new FrameWriter<TestFrame>(stream, { gatherBytes: 16, copyBytes: 16 });
  writer.send(frame("a", 16));
  await stream.issued(1);
  writer.send(frame("b", 16));
  writer.send(frame("c", 16));
  writer.send(frame("p", 16), true);
  const order: string[] = [];
  for (let i = 1; i <= 4; i++) {
    stream.complete();
    if (i < 4) {
      await stream.issued(i + 1);
      order.push(String.fromCharCode(stream.copies[i][0]));
    }
  }
  await writer.flushed();
  assert.deepEqual(order, ["p", "b", "c"]);
});

Deno.test("FrameWriter drops an abandoned frame unsent and tells it so", async () => {
  const stream = new HeldStream();
  const writer = new FrameWriter<TestFrame>(stream);
  writer.send(frame("a", 16));
  await stream.issued(1);
  const gone = frame("g", 16);
  const kept = frame("k", 16);
  writer.send(gone);
  writer.send(kept);
  gone.abandoned = true;
  stream.complete();
  await stream.issued(2);
  assert.equal(stream.writes[1].length, 16);
  assert.equal(stream.copies[1][0], "k".charCodeAt(0));
  assert.equal(gone.outcome, false);
  stream.complete();
  await writer.flushed();
  assert.equal(kept.outcome, true);
});

Deno.test("FrameWriter: a failed write kills the writer, reports once, drops the rest", async () => {
  const stream = new HeldStream();
  const errors: unknown[] = [];
  const writer = new FrameWriter<TestFrame>(stream, { onError: (e) => errors.push(e) });
  const a = frame("a", 16);
  writer.send(a);
  await stream.issued(1);
  const b = frame("b", 16);
  writer.send(b);
  stream.fail(new Error("broken pipe"));
  await writer.flushed();
  assert.equal(errors.length, 1);
  assert.match(String(writer.error), /broken pipe/);
  assert.equal(a.outcome, false);
  assert.equal(b.outcome, false);
  const later = frame("c", 16);
  writer.send(later);
  assert.equal(later.outcome, false, "dropped at once");
  assert.equal(stream.writes.length, 1);
});

Deno.test("FrameWriter.close drops what is queued; the write in progress still settles", async () => {
  const stream = new HeldStream();
  const writer = new FrameWriter<TestFrame>(stream);
  const a = frame("a", 16);
  const b = frame("b", 16);
  writer.send(a);
  await stream.issued(1);
  writer.send(b);
  writer.close();
  assert.equal(b.outcome, false);
  const done = writer.flushed();
  stream.complete();
  await done;
  assert.equal(a.outcome, true);
  assert.equal(stream.writes.length, 1);
});

Deno.test("FrameWriter holds its output while the gate says so", async () => {
  const stream = new HeldStream();
  const open = Promise.withResolvers<void>();
  let held = true;
  const writer = new FrameWriter<TestFrame>(stream, {
    gate: () => held ? open.promise : undefined,
  });
  const a = frame("a", 16);
  writer.send(a);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(stream.writes.length, 0);
  held = false;
  open.resolve();
  await stream.issued(1);
  stream.complete();
  await writer.flushed();
  assert.equal(a.outcome, true);
});

Deno.test("FrameWriter accepts a send from inside a written callback", async () => {
  const stream = new HeldStream();
  const writer = new FrameWriter<TestFrame>(stream);
  const next = frame("n", 16);
  const first: TestFrame = {
    name: "f",
    head: new Uint8Array(16),
    written: () => writer.send(next),
  };
  writer.send(first);
  await stream.issued(1);
  stream.complete();
  await stream.issued(2);
  stream.complete();
  await writer.flushed();
  assert.equal(next.outcome, true);
});
