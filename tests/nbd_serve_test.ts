/**
 * serveTransmission against a test that plays the kernel over a loopback TCP
 * pair: pipelining, out-of-order completion, 32 MiB requests, DISC, bad
 * magic, edge validation and backpressure.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { type Backend, BackendError, MemoryBackend } from "../src/block/backend.ts";
import { canMultiConn, transmissionFlags } from "../src/nbd/flags.ts";
import { serveTransmission } from "../src/nbd/serve.ts";
import { IoStats } from "../src/nbd/stats.ts";
import {
  Command,
  CommandFlag,
  decodeReply,
  encodeRequest,
  NbdError,
  NbdProtocolError,
  REPLY_SIZE,
  REQUEST_SIZE,
  TransmissionFlag,
} from "../src/nbd/wire.ts";
import { FrameReader } from "../src/io/frame_reader.ts";
import { UnexpectedEofError, writeAll } from "../src/io/stream.ts";
import type { Logger } from "../src/log.ts";

const MiB = 1024 * 1024;

/** Collects log lines instead of printing them (rejections are expected here). */
function quietLog(): Logger & { lines: string[]; waitFor(text: string): Promise<void> } {
  const lines: string[] = [];
  let changed: (() => void) | null = null;
  const put = (m: string) => {
    lines.push(m);
    changed?.();
  };
  return {
    lines,
    debug: put,
    info: put,
    warn: put,
    error: put,
    async waitFor(text: string) {
      while (!lines.some((line) => line.includes(text))) {
        await new Promise<void>((resolve) => changed = resolve);
      }
    },
  };
}

/** A connected loopback TCP pair: [served side, kernel side]. */
async function tcpPair(): Promise<[Deno.TcpConn, Deno.TcpConn]> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [served, peer] = await Promise.all([
    listener.accept(),
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
  ]);
  listener.close();
  return [served, peer];
}

interface Reply {
  handle: bigint;
  error: number;
  data: Uint8Array | null;
}

/** Plays the kernel: sends requests, reads replies (with data for successful READs). */
class KernelPeer {
  readonly #conn: Deno.TcpConn;
  readonly #reader: FrameReader;
  /** Expected data length of each outstanding READ, by handle. */
  readonly #reads = new Map<bigint, number>();
  #nextHandle = 1n;

  constructor(conn: Deno.TcpConn) {
    this.#conn = conn;
    this.#reader = new FrameReader(conn);
  }

  async send(
    type: number,
    offset: number,
    length: number,
    options: { data?: Uint8Array; flags?: number; handle?: bigint } = {},
  ): Promise<bigint> {
    const handle = options.handle ?? this.#nextHandle++;
    if (type === Command.READ) this.#reads.set(handle, length);
    const header = encodeRequest({ type, handle, offset, length, flags: options.flags });
    await writeAll(this.#conn, header);
    if (options.data) await writeAll(this.#conn, options.data);
    return handle;
  }

  /** Registers a READ sent as raw bytes, so its reply's data is read. */
  expectRead(handle: bigint, length: number): void {
    this.#reads.set(handle, length);
  }

  async reply(): Promise<Reply> {
    const header = new Uint8Array(REPLY_SIZE);
    await this.#reader.readFull(header, "reply header");
    const { handle, error } = decodeReply(header);
    const length = this.#reads.get(handle);
    this.#reads.delete(handle);
    let data: Uint8Array | null = null;
    if (error === 0 && length !== undefined) {
      data = new Uint8Array(length);
      await this.#reader.readFull(data, "reply data");
    }
    return { handle, error, data };
  }

  /** True once the served side has closed or shut the stream (EOF at a reply boundary). */
  async atEof(): Promise<boolean> {
    return !await this.#reader.readFull(new Uint8Array(REPLY_SIZE), "reply header", true);
  }

  writeRaw(bytes: Uint8Array): Promise<void> {
    return writeAll(this.#conn, bytes);
  }

  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }

  close(): void {
    this.#conn.close();
  }
}

/** Starts serveTransmission on a fresh pair; `finish` waits for it and closes both ends. */
async function start(backend: Backend, options: Parameters<typeof serveTransmission>[2] = {}) {
  const [served, peerConn] = await tcpPair();
  const log = quietLog();
  const serving = serveTransmission(served, backend, { log, ...options });
  // Settled state, observed without awaiting, so a test can assert "still running".
  const state: { settled: boolean; error: unknown } = { settled: false, error: null };
  const outcome = serving.then(
    () => state.settled = true,
    (error) => {
      state.settled = true;
      state.error = error;
    },
  ).finally(() => served.close());
  const peer = new KernelPeer(peerConn);
  return {
    peer,
    log,
    state,
    serving,
    async finish() {
      await outcome;
      peer.close();
    },
  };
}

/** Byte equality without a per-byte closure (the images here are tens of MiB). */
function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length)
    .equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

/** A backend whose calls wait until the test releases them, in any order. */
class GatedBackend implements Backend {
  readonly inner: MemoryBackend;
  readonly waiting: { op: string; offset: number; release: () => void }[] = [];
  active = 0;
  maxActive = 0;
  #changed: (() => void) | null = null;

  constructor(size: number) {
    this.inner = new MemoryBackend(size);
  }
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return false;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    await this.#gate("read", offset);
    return this.inner.read(offset, length);
  }
  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.#gate("write", offset);
    return this.inner.write(offset, data);
  }
  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Resolves once at least `count` calls are waiting. */
  async waitFor(count: number): Promise<void> {
    while (this.waiting.length < count) await new Promise<void>((r) => this.#changed = r);
  }

  release(index: number): void {
    const [call] = this.waiting.splice(index, 1);
    call.release();
  }

  async #gate(op: string, offset: number): Promise<void> {
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    await new Promise<void>((release) => {
      this.waiting.push({ op, offset, release });
      const changed = this.#changed;
      this.#changed = null;
      changed?.();
    });
    this.active--;
  }
}

Deno.test("serveTransmission answers pipelined reads in completion order with the right bytes", async () => {
  const backend = new GatedBackend(1 * MiB);
  const content = pattern(1 * MiB, 7);
  await backend.inner.write(0, content);
  const { peer, finish } = await start(backend);
  const handles: bigint[] = [];
  for (let i = 0; i < 8; i++) handles.push(await peer.send(Command.READ, i * 4096, 4096));
  await backend.waitFor(8);
  // Complete them newest first: replies must follow completion, not request order.
  for (let i = 7; i >= 0; i--) {
    backend.release(backend.waiting.length - 1);
    const reply = await peer.reply();
    assert.equal(reply.handle, handles[i]);
    assert.equal(reply.error, NbdError.OK);
    assert.deepEqual(reply.data, content.subarray(i * 4096, (i + 1) * 4096));
  }
  await peer.send(Command.DISC, 0, 0);
  await finish();
});

Deno.test("serveTransmission writes and reads back 32 MiB requests byte for byte", async () => {
  const backend = new MemoryBackend(64 * MiB);
  const { peer, finish, serving } = await start(backend);
  const data = pattern(32 * MiB, 32);
  const write = await peer.send(Command.WRITE, 16 * MiB, data.length, { data });
  assert.deepEqual(await peer.reply(), { handle: write, error: 0, data: null });
  const read = await peer.send(Command.READ, 16 * MiB, data.length);
  const reply = await peer.reply();
  assert.equal(reply.handle, read);
  assert.equal(reply.error, 0);
  assert.ok(reply.data !== null && reply.data.length === data.length);
  assert.ok(sameBytes(reply.data, data), "read data differs from written");
  await peer.send(Command.DISC, 0, 0);
  await serving;
  await finish();
});

Deno.test("serveTransmission reuses read buffers without mixing up pipelined replies", async () => {
  const backend = new MemoryBackend(16 * MiB);
  const content = pattern(16 * MiB, 21);
  await backend.write(0, content);
  const { peer, finish } = await start(backend);
  const offsets = new Map<bigint, number>();
  for (let round = 0; round < 3; round++) {
    // Pooled sizes (from a 4 KiB page up), several size classes, all in flight at once.
    for (let i = 0; i < 48; i++) {
      const length = [4, 64, 8, 128, 192, 1024][i % 6] * 1024;
      const offset = ((i * 7 + round * 13) % 64) * 128 * 1024;
      offsets.set(await peer.send(Command.READ, offset, length), offset);
    }
    for (let i = 0; i < 48; i++) {
      const reply = await peer.reply();
      const offset = offsets.get(reply.handle)!;
      const expected = content.subarray(offset, offset + reply.data!.length);
      assert.ok(sameBytes(reply.data!, expected), `round ${round}: wrong bytes at ${offset}`);
    }
  }
  await peer.send(Command.DISC, 0, 0);
  await finish();
});

Deno.test("serveTransmission answers every request in flight after DISC, then resolves", async () => {
  const backend = new GatedBackend(1 * MiB);
  const { peer, finish, state, serving } = await start(backend);
  const sent = new Set<bigint>();
  for (let i = 0; i < 5; i++) sent.add(await peer.send(Command.READ, i * 512, 512));
  sent.add(await peer.send(Command.WRITE, 0, 512, { data: pattern(512, 1) }));
  await backend.waitFor(6);
  await peer.send(Command.DISC, 0, 0);
  // A request after DISC must not be read.
  await peer.send(Command.READ, 0, 512);
  await Promise.resolve();
  assert.equal(state.settled, false, "resolved before in-flight requests were answered");
  while (backend.waiting.length > 0) backend.release(0);
  const answered = new Set<bigint>();
  for (let i = 0; i < 6; i++) answered.add((await peer.reply()).handle);
  assert.deepEqual(answered, sent);
  await serving;
  assert.equal(backend.waiting.length, 0, "a request sent after DISC reached the backend");
  await finish();
});

Deno.test("serveTransmission rejects bad magic after answering what is in flight", async () => {
  const backend = new GatedBackend(1 * MiB);
  const { peer, finish, state, log } = await start(backend);
  const read = await peer.send(Command.READ, 0, 512);
  await backend.waitFor(1);
  const bad = encodeRequest({ type: Command.READ, handle: 99n, offset: 0, length: 512 });
  bad[0] ^= 0xff;
  await peer.writeRaw(bad);
  backend.release(0);
  const reply = await peer.reply();
  assert.equal(reply.handle, read);
  assert.equal(reply.error, 0);
  await finish();
  assert.ok(state.error instanceof NbdProtocolError, `got ${state.error}`);
  assert.match(String(state.error), /bad NBD request magic/);
  assert.ok(log.lines.some((line) => line.includes("stream failed")), "bad magic not logged");
});

Deno.test("serveTransmission skips a rejected WRITE's payload and serves the next request", async () => {
  const backend = new MemoryBackend(1 * MiB, { readOnly: true });
  const { peer, finish } = await start(backend);
  const write = await peer.send(Command.WRITE, 0, 300_000, { data: pattern(300_000, 3) });
  const read = await peer.send(Command.READ, 4096, 4096);
  assert.deepEqual(await peer.reply(), { handle: write, error: NbdError.EPERM, data: null });
  const reply = await peer.reply();
  assert.equal(reply.handle, read);
  assert.equal(reply.error, 0);
  assert.deepEqual(reply.data, new Uint8Array(4096));
  await peer.send(Command.DISC, 0, 0);
  await finish();
});

Deno.test("serveTransmission refuses TRIM and WRITE_ZEROES on a read-only backend with EPERM", async () => {
  const backend = new MemoryBackend(1 * MiB, { readOnly: true });
  const { peer, finish } = await start(backend);
  await peer.send(Command.WRITE_ZEROES, 0, 4096);
  assert.equal((await peer.reply()).error, NbdError.EPERM);
  await peer.send(Command.DISC, 0, 0);
  await finish();
});

Deno.test("serveTransmission rejects out-of-range, oversize and unknown requests at the edge", async () => {
  const backend = new MemoryBackend(1 * MiB);
  const { peer, finish } = await start(backend);
  const cases: [string, () => Promise<bigint>, number][] = [
    ["read past the end", () => peer.send(Command.READ, 1 * MiB - 512, 1024), NbdError.EINVAL],
    [
      "write past the end",
      () => peer.send(Command.WRITE, 1 * MiB, 512, { data: pattern(512, 9) }),
      NbdError.ENOSPC,
    ],
    ["offset beyond 2^53", () => sendHugeOffset(peer), NbdError.EINVAL],
    ["read over 32 MiB", () => peer.send(Command.READ, 0, 32 * MiB + 1), NbdError.EINVAL],
    ["unknown command", () => peer.send(42, 0, 0), NbdError.EINVAL],
    ["TRIM the backend lacks", () => peer.send(Command.TRIM, 0, 4096), NbdError.EINVAL],
    ["unknown flag", () => peer.send(Command.READ, 0, 512, { flags: 1 << 9 }), NbdError.EINVAL],
    ["zero-length READ", () => peer.send(Command.READ, 0, 0), NbdError.EINVAL],
    ["zero-length WRITE", () => peer.send(Command.WRITE, 0, 0), NbdError.ENOSPC],
    ["zero-length WRITE_ZEROES", () => peer.send(Command.WRITE_ZEROES, 0, 0), NbdError.ENOSPC],
    [
      "NO_HOLE on READ",
      () => peer.send(Command.READ, 0, 512, { flags: CommandFlag.NO_HOLE }),
      NbdError.EINVAL,
    ],
    [
      "NO_HOLE on WRITE, payload skipped",
      () => peer.send(Command.WRITE, 0, 512, { data: pattern(512, 1), flags: CommandFlag.NO_HOLE }),
      NbdError.EINVAL,
    ],
    [
      "FAST_ZERO on WRITE, payload skipped",
      () =>
        peer.send(Command.WRITE, 0, 512, { data: pattern(512, 2), flags: CommandFlag.FAST_ZERO }),
      NbdError.EINVAL,
    ],
    [
      "DF on WRITE, payload skipped",
      () => peer.send(Command.WRITE, 0, 512, { data: pattern(512, 3), flags: CommandFlag.DF }),
      NbdError.EINVAL,
    ],
    [
      "DF on READ without structured replies",
      () => peer.send(Command.READ, 0, 512, { flags: CommandFlag.DF }),
      NbdError.EINVAL,
    ],
    [
      "FUA on WRITE when SEND_FUA was not advertised",
      () => peer.send(Command.WRITE, 0, 512, { data: pattern(512, 4), flags: CommandFlag.FUA }),
      NbdError.EINVAL,
    ],
    [
      "FLUSH when SEND_FLUSH was not advertised",
      () => peer.send(Command.FLUSH, 0, 0),
      NbdError.EINVAL,
    ],
  ];
  for (const [what, send, error] of cases) {
    const handle = await send();
    const reply = await peer.reply();
    assert.equal(reply.handle, handle, what);
    assert.equal(reply.error, error, what);
  }
  // Still in sync and serving.
  await peer.send(Command.WRITE, 0, 512, { data: pattern(512, 5) });
  assert.equal((await peer.reply()).error, 0);
  await peer.send(Command.DISC, 0, 0);
  await finish();
});

/** A READ whose u64 offset does not fit a double exactly. */
async function sendHugeOffset(peer: KernelPeer): Promise<bigint> {
  const header = encodeRequest({ type: Command.FLUSH, handle: 77n });
  const dv = new DataView(header.buffer);
  dv.setUint16(6, Command.READ);
  dv.setBigUint64(16, 0xffff_ffff_ffff_f000n);
  dv.setUint32(24, 512);
  await peer.writeRaw(header);
  return 77n;
}

Deno.test("serveTransmission answers a WRITE over 32 MiB with EINVAL and closes", async () => {
  const backend = new MemoryBackend(64 * MiB);
  const { peer, finish, state } = await start(backend);
  const handle = await peer.send(Command.WRITE, 0, 32 * MiB + 4096);
  assert.deepEqual(await peer.reply(), { handle, error: NbdError.EINVAL, data: null });
  await finish();
  assert.ok(state.error instanceof NbdProtocolError, `got ${state.error}`);
});

Deno.test("serveTransmission never lets the backend see more than maxInFlight calls", async () => {
  const backend = new GatedBackend(1 * MiB);
  const { peer, finish } = await start(backend, { maxInFlight: 4 });
  const total = 40;
  for (let i = 0; i < total; i++) {
    if (i % 2 === 0) await peer.send(Command.READ, i * 512, 512);
    else await peer.send(Command.WRITE, i * 512, 512, { data: pattern(512, i) });
  }
  for (let answered = 0; answered < total; answered++) {
    await backend.waitFor(Math.min(4, total - answered));
    assert.ok(backend.active <= 4, `backend saw ${backend.active} concurrent calls`);
    backend.release(0);
    assert.equal((await peer.reply()).error, 0);
  }
  assert.equal(backend.maxActive, 4);
  await peer.send(Command.DISC, 0, 0);
  await finish();
});

Deno.test("serveTransmission bounds payload bytes in flight but admits one oversize request", async () => {
  const backend = new GatedBackend(4 * MiB);
  const { peer, finish } = await start(backend, { maxInFlightBytes: 64 * 1024 });
  for (let i = 0; i < 4; i++) await peer.send(Command.READ, i * 32768, 32768);
  await backend.waitFor(2);
  assert.equal(backend.waiting.length, 2, "more than 64 KiB of reads admitted");
  backend.release(0);
  await peer.reply();
  await backend.waitFor(2);
  backend.release(0);
  backend.release(0);
  await peer.reply();
  await peer.reply();
  await backend.waitFor(1);
  backend.release(0);
  await peer.reply();
  assert.equal(backend.maxActive, 2, "more than 64 KiB of reads were in flight");
  // One request larger than the whole bound still gets through.
  await peer.send(Command.READ, 0, 1 * MiB);
  await backend.waitFor(1);
  backend.release(0);
  assert.equal((await peer.reply()).data?.length, 1 * MiB);
  await peer.send(Command.DISC, 0, 0);
  await finish();
});

Deno.test("serveTransmission maps backend errors to NBD errors and unknown failures to EIO", async () => {
  const failures: unknown[] = [
    new BackendError("image is read-only", "EPERM"),
    new BackendError("session closed", "ESHUTDOWN"),
    new BackendError("no space", "ENOSPC"),
    new TypeError("bug in the backend"),
  ];
  const backend: Backend = {
    size: 1 * MiB,
    readOnly: false,
    read: () => Promise.reject(failures.shift()),
    write: () => Promise.reject(failures.shift()),
    close: () => Promise.resolve(),
  };
  const { peer, finish, log } = await start(backend);
  const expected = [NbdError.EPERM, NbdError.ESHUTDOWN, NbdError.ENOSPC, NbdError.EIO];
  for (const error of expected) {
    await peer.send(Command.READ, 0, 4096);
    const reply = await peer.reply();
    assert.equal(reply.error, error);
    assert.equal(reply.data, null);
  }
  assert.ok(log.lines.some((line) => line.includes("unexpectedly")), "unknown failure not logged");
  await peer.send(Command.DISC, 0, 0);
  await finish();
});

Deno.test("serveTransmission answers EIO when the backend returns a short read", async () => {
  const backend: Backend = {
    size: 1 * MiB,
    readOnly: false,
    read: () => Promise.resolve(new Uint8Array(10)),
    write: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
  const { peer, finish } = await start(backend);
  await peer.send(Command.READ, 0, 4096);
  assert.deepEqual((await peer.reply()).error, NbdError.EIO);
  await peer.send(Command.DISC, 0, 0);
  await finish();
});

Deno.test("serveTransmission resolves on EOF at a request boundary", async () => {
  const { peer, finish, state } = await start(new MemoryBackend(1 * MiB));
  await peer.send(Command.READ, 0, 512);
  await peer.reply();
  await peer.closeWrite();
  await finish();
  assert.equal(state.error, null);
});

Deno.test("serveTransmission rejects EOF inside a request", async () => {
  const { peer, finish, state } = await start(new MemoryBackend(1 * MiB));
  await peer.writeRaw(encodeRequest({ type: Command.READ, handle: 1n }).subarray(0, 10));
  await peer.closeWrite();
  await finish();
  assert.ok(state.error instanceof UnexpectedEofError, `got ${state.error}`);
});

Deno.test("serveTransmission rejects EOF inside a WRITE payload", async () => {
  const { peer, finish, state } = await start(new MemoryBackend(1 * MiB));
  await peer.send(Command.WRITE, 0, 4096, { data: new Uint8Array(100) });
  await peer.closeWrite();
  await finish();
  assert.ok(state.error instanceof UnexpectedEofError, `got ${state.error}`);
});

Deno.test("serveTransmission treats a duplicate in-flight handle as a protocol error", async () => {
  const backend = new GatedBackend(1 * MiB);
  const { peer, finish, state, log } = await start(backend);
  await peer.send(Command.READ, 0, 512, { handle: 5n });
  await backend.waitFor(1);
  await peer.send(Command.READ, 512, 512, { handle: 5n });
  // Once the loop has seen the duplicate it stops reading; release the first so it can finish.
  await log.waitFor("stream failed");
  backend.release(0);
  assert.equal((await peer.reply()).handle, 5n);
  await finish();
  assert.ok(state.error instanceof NbdProtocolError, `got ${state.error}`);
  assert.match(String(state.error), /duplicate/);
});

Deno.test("serveTransmission serves FLUSH, FUA writes and WRITE_ZEROES through the backend", async () => {
  const calls: string[] = [];
  const memory = new MemoryBackend(1 * MiB);
  const backend: Backend = {
    size: memory.size,
    readOnly: false,
    read: (o, l) => memory.read(o, l),
    write: (o, d) => (calls.push("write"), memory.write(o, d)),
    writeZeroes: (o, l) => (calls.push("zeroes"), memory.writeZeroes(o, l)),
    flush: () => (calls.push("flush"), Promise.resolve()),
    close: () => Promise.resolve(),
  };
  const stats = new IoStats();
  const { peer, finish } = await start(backend, { stats });
  await peer.send(Command.WRITE, 0, 4096, { data: pattern(4096, 2), flags: CommandFlag.FUA });
  assert.equal((await peer.reply()).error, 0);
  await peer.send(Command.WRITE_ZEROES, 0, 1024);
  assert.equal((await peer.reply()).error, 0);
  await peer.send(Command.FLUSH, 0, 0);
  assert.equal((await peer.reply()).error, 0);
  const read = await peer.send(Command.READ, 0, 2048);
  const reply = await peer.reply();
  assert.equal(reply.handle, read);
  assert.deepEqual(reply.data?.subarray(0, 1024), new Uint8Array(1024));
  assert.deepEqual(reply.data?.subarray(1024), pattern(4096, 2).subarray(1024, 2048));
  assert.deepEqual(calls, ["write", "flush", "zeroes", "flush"]);
  await peer.send(Command.DISC, 0, 0);
  await finish();
  assert.equal(stats.writes, 1);
  assert.equal(stats.zeroes, 1);
  assert.equal(stats.flushes, 1);
  assert.equal(stats.reads, 1);
  assert.equal(stats.bytesWritten, 4096);
  assert.equal(stats.bytesRead, 2048);
  assert.equal(stats.inFlight, 0);
  assert.equal(stats.latencyCount, 4);
});

Deno.test("serveTransmission counts rejected requests as errors in the stats", async () => {
  const stats = new IoStats();
  const { peer, finish } = await start(new MemoryBackend(4096, { readOnly: true }), { stats });
  await peer.send(Command.WRITE, 0, 512, { data: pattern(512, 1) });
  await peer.reply();
  await peer.send(Command.DISC, 0, 0);
  await finish();
  assert.equal(stats.writes, 1);
  assert.equal(stats.errors, 1);
  assert.equal(stats.bytesWritten, 0);
});

Deno.test("serveTransmission uses a given reader that already holds buffered request bytes", async () => {
  const [served, peerConn] = await tcpPair();
  const peer = new KernelPeer(peerConn);
  const backend = new MemoryBackend(4096);
  await backend.write(0, pattern(8, 4));
  // A 5-byte "handshake", then a READ and a DISC, all in one write.
  const bytes = new Uint8Array(5 + REQUEST_SIZE * 2);
  bytes.set(new TextEncoder().encode("HELLO"));
  encodeRequest({ type: Command.READ, handle: 1n, offset: 0, length: 8 }, bytes, 5);
  encodeRequest({ type: Command.DISC, handle: 2n }, bytes, 5 + REQUEST_SIZE);
  peer.expectRead(1n, 8);
  await peer.writeRaw(bytes);
  await peer.closeWrite();
  // The "handshake" takes its 5 bytes; the reader has buffered the requests behind them.
  const reader = new FrameReader(served);
  const hello = new Uint8Array(5);
  await reader.readFull(hello, "hello");
  assert.equal(new TextDecoder().decode(hello), "HELLO");
  const serving = serveTransmission(served, backend, { reader, log: quietLog() });
  const reply = await peer.reply();
  assert.equal(reply.handle, 1n);
  assert.deepEqual(reply.data, pattern(8, 4));
  await serving;
  served.close();
  peer.close();
});

Deno.test("transmissionFlags advertises only what the backend supports", () => {
  const F = TransmissionFlag;
  assert.equal(
    transmissionFlags(new MemoryBackend(4096)),
    F.HAS_FLAGS | F.SEND_WRITE_ZEROES | F.CAN_MULTI_CONN,
  );
  assert.equal(
    transmissionFlags(new MemoryBackend(4096, { readOnly: true })),
    F.HAS_FLAGS | F.READ_ONLY | F.CAN_MULTI_CONN,
  );
  const full: Backend = {
    size: 4096,
    readOnly: false,
    read: () => Promise.resolve(new Uint8Array(0)),
    write: () => Promise.resolve(),
    flush: () => Promise.resolve(),
    trim: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
  assert.equal(
    transmissionFlags(full),
    F.HAS_FLAGS | F.SEND_FLUSH | F.SEND_FUA | F.SEND_TRIM,
    "a backend with a volatile cache of its own is not multi-conn: a FLUSH could not reach it",
  );
});

Deno.test("canMultiConn holds for backends whose answered writes are stored (no flush)", () => {
  assert.equal(canMultiConn(new MemoryBackend(4096)), true);
  const memory = new MemoryBackend(4096);
  const cached: Backend = {
    size: memory.size,
    readOnly: false,
    read: (offset, length) => memory.read(offset, length),
    write: (offset, data) => memory.write(offset, data),
    flush: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
  assert.equal(canMultiConn(cached), false);
});

Deno.test("serveTransmission serves an IVBS image from the test server, every byte checked", async () => {
  const { startIvbsServer } = await import("../src/ivbs/server/mod.ts");
  const { IvbsSession } = await import("../src/ivbs/session.ts");
  const silent = quietLog();
  const server = await startIvbsServer({
    users: [{ username: "alice", password: "s3cret" }],
    images: [{ name: "disk", size: 80 * MiB }],
    replyDelayMs: { min: 0, max: 3 }, // replies come back out of order
    listProxiesIntervalMs: 0,
    log: silent,
  });
  const session = await IvbsSession.open({
    proxies: server.addresses(),
    image: "disk",
    username: "alice",
    password: "s3cret",
  });
  const { peer, finish } = await start(session);
  try {
    // A model of the image: what every byte must read back as.
    const model = new Uint8Array(session.size);
    const big = pattern(32 * MiB, 11);
    const handles = new Map<bigint, { offset: number; length: number } | null>();
    handles.set(await peer.send(Command.WRITE, 40 * MiB, big.length, { data: big }), null);
    model.set(big, 40 * MiB);
    // 200 pipelined 4 KiB-aligned writes of varied sizes, no overlap with each other.
    for (let i = 0; i < 200; i++) {
      const offset = i * 160 * 1024;
      const data = pattern(4096 * (1 + (i % 32)), i);
      handles.set(await peer.send(Command.WRITE, offset, data.length, { data }), null);
      model.set(data, offset);
    }
    for (let i = 0; i < handles.size; i++) {
      const reply = await peer.reply();
      assert.equal(reply.error, 0, `write ${reply.handle} failed`);
    }
    // Read the whole image back: 2 × 32 MiB + the rest, pipelined.
    const reads = new Map<bigint, number>();
    for (let offset = 0; offset < model.length; offset += 32 * MiB) {
      const length = Math.min(32 * MiB, model.length - offset);
      reads.set(await peer.send(Command.READ, offset, length), offset);
    }
    for (let i = 0; i < reads.size; i++) {
      const reply = await peer.reply();
      assert.equal(reply.error, 0);
      const offset = reads.get(reply.handle)!;
      const expected = model.subarray(offset, offset + reply.data!.length);
      assert.ok(sameBytes(reply.data!, expected), `bytes differ in the read at ${offset}`);
    }
    await peer.send(Command.DISC, 0, 0);
  } finally {
    await finish();
    await session.close();
    await server.close();
  }
});
