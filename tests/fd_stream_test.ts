/**
 * FdStream and the libc wrappers over a real socketpair (no kernel NBD needed):
 * the transport the kernel attachment uses, with serveTransmission on top.
 */
import assert from "node:assert/strict";
import {
  AF_UNIX,
  close,
  connectUnix,
  ioctl,
  LibcError,
  NbdIoctl,
  O_RDWR,
  open,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  socket,
  socketpair,
} from "../ffi/libc.ts";
import { ConnStream, FdStream, StreamClosedError } from "../src/io/fd_stream.ts";
import { FrameReader } from "../src/io/frame_reader.ts";
import { writeAll } from "../src/io/stream.ts";
import { MemoryBackend } from "../src/block/backend.ts";
import { serveTransmission } from "../src/nbd/serve.ts";
import { Command, decodeReply, encodeRequest, REPLY_SIZE } from "../src/nbd/wire.ts";
import type { Logger } from "../src/log.ts";

const MiB = 1024 * 1024;
const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

function pair(): [FdStream, FdStream] {
  const [a, b] = socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  return [new FdStream(a), new FdStream(b)];
}

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + seed) & 0xff;
  return bytes;
}

Deno.test("libc wrappers name the call and errno when they fail", () => {
  assert.throws(() => open("/nonexistent/nbd0", O_RDWR), (e: unknown) => {
    assert.ok(e instanceof LibcError);
    assert.equal(e.message, "open(/nonexistent/nbd0) failed: ENOENT");
    assert.equal(e.errno, 2);
    return true;
  });
  const [a, b] = pair();
  try {
    // A socket is not an NBD device: the kernel answers ENOTTY.
    assert.throws(
      () => ioctl(a.fd, NbdIoctl.SET_SOCK, b.fd),
      { message: "ioctl(NBD_SET_SOCK) failed: ENOTTY" },
    );
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("FdStream moves 8 MiB across a socketpair byte for byte", async () => {
  const [a, b] = pair();
  const data = pattern(8 * MiB, 3);
  const received = new Uint8Array(data.length);
  const reading = new FrameReader(b).readFull(received, "test data");
  await writeAll(a, data);
  await reading;
  assert.ok(received.every((byte, i) => byte === data[i]), "bytes differ");
  a.close();
  b.close();
});

Deno.test("FdStream read resolves null at the peer's close", async () => {
  const [a, b] = pair();
  const pending = b.read(new Uint8Array(16));
  a.close();
  assert.equal(await pending, null);
  b.close();
});

Deno.test("FdStream close wakes its own pending read and refuses later writes", async () => {
  const [a, b] = pair();
  const pending = b.read(new Uint8Array(16));
  b.close();
  assert.equal(await pending, null);
  await assert.rejects(() => b.write(new Uint8Array(1)), StreamClosedError);
  assert.equal(await b.read(new Uint8Array(1)), null);
  b.close(); // idempotent
  a.close();
});

Deno.test("FdStream write waits for room when the peer is slow, then completes", async () => {
  const [a, b] = pair();
  // Far more than a socket buffer holds: the writer must wait in poll.
  const data = pattern(4 * MiB, 9);
  const writing = writeAll(a, data);
  await new Promise((resolve) => setTimeout(resolve, 20));
  const received = new Uint8Array(data.length);
  await new FrameReader(b).readFull(received, "slow read");
  await writing;
  assert.ok(a.waits.write > 0, "the writer never had to wait");
  assert.ok(received.every((byte, i) => byte === data[i]), "bytes differ");
  a.close();
  b.close();
});

Deno.test("serveTransmission over an FdStream socketpair serves pipelined 32 MiB requests", async () => {
  const [served, kernel] = pair();
  const backend = new MemoryBackend(96 * MiB);
  const serving = serveTransmission(served, backend, { log: silent });
  const data = pattern(32 * MiB, 5);
  // Two writes and a read pipelined before any reply is read.
  const requests = new Uint8Array(28 * 3 + data.length * 2);
  encodeRequest({ type: Command.WRITE, handle: 1n, offset: 0, length: data.length }, requests, 0);
  requests.set(data, 28);
  const second = 28 + data.length;
  encodeRequest(
    { type: Command.WRITE, handle: 2n, offset: 64 * MiB, length: data.length },
    requests,
    second,
  );
  requests.set(data, second + 28);
  encodeRequest(
    { type: Command.READ, handle: 3n, offset: 0, length: data.length },
    requests,
    second + 28 + data.length,
  );
  const sending = writeAll(kernel, requests);
  const reader = new FrameReader(kernel);
  const header = new Uint8Array(REPLY_SIZE);
  const seen = new Set<bigint>();
  for (let i = 0; i < 3; i++) {
    await reader.readFull(header, "reply");
    const reply = decodeReply(header);
    assert.equal(reply.error, 0);
    seen.add(reply.handle);
    if (reply.handle === 3n) {
      const got = new Uint8Array(data.length);
      await reader.readFull(got, "read data");
      assert.ok(got.every((byte, j) => byte === data[j]), "read data differs");
    }
  }
  assert.deepEqual(seen, new Set([1n, 2n, 3n]));
  await sending;
  assert.deepEqual(await backend.read(64 * MiB, 4096), data.subarray(0, 4096));
  await writeAll(kernel, encodeRequest({ type: Command.DISC, handle: 4n }));
  await serving;
  served.close();
  kernel.close();
});

/** A raw-fd socket connected to a Deno unix listener, as kernel.ts pairs them. */
async function rawToConn(): Promise<{ raw: FdStream; conn: ConnStream; dir: string }> {
  const dir = await Deno.makeTempDir();
  const listener = Deno.listen({ transport: "unix", path: `${dir}/socket` });
  try {
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    connectUnix(fd, `${dir}/socket`);
    return { raw: new FdStream(fd), conn: new ConnStream(await listener.accept(), "test"), dir };
  } finally {
    listener.close();
  }
}

Deno.test("connectUnix links a raw fd to a Deno listener; bytes cross both ways", async () => {
  const { raw, conn, dir } = await rawToConn();
  try {
    const data = pattern(3 * MiB, 7);
    const received = new Uint8Array(data.length);
    const reading = new FrameReader(conn).readFull(received, "test data");
    await writeAll(raw, data);
    await reading;
    assert.deepEqual(received, data);
    await writeAll(conn, pattern(100, 1));
    const back = new Uint8Array(100);
    await new FrameReader(raw).readFull(back, "reply");
    assert.deepEqual(back, pattern(100, 1));
  } finally {
    raw.close();
    conn.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("connectUnix names a path too long for sockaddr_un", () => {
  const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
  try {
    assert.throws(() => connectUnix(fd, "/tmp/" + "x".repeat(200)), RangeError);
  } finally {
    close(fd);
  }
});

Deno.test("ConnStream close ends its own pending read and refuses later writes", async () => {
  const { raw, conn, dir } = await rawToConn();
  const pending = conn.read(new Uint8Array(16));
  conn.close();
  assert.equal(await pending, null);
  await assert.rejects(() => conn.write(new Uint8Array(1)), StreamClosedError);
  assert.equal(await conn.read(new Uint8Array(1)), null);
  conn.close(); // idempotent
  // The raw end sees the close as end of stream.
  assert.equal(await raw.read(new Uint8Array(1)), null);
  raw.close();
  await Deno.remove(dir, { recursive: true });
});
