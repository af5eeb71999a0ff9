/**
 * The kernel attachment's socket plumbing over a real unix socket (no kernel
 * NBD needed): the libc wrappers it calls, a raw fd connected to a Deno
 * listener the way src/nbd/device_setup.ts pairs them (the raw end goes to the kernel), and
 * ConnStream on our end.
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
  POLLIN,
  pollOnWorker,
  recvNow,
  sendNow,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  socket,
} from "../ffi/libc.ts";
import { ConnStream, StreamClosedError } from "../src/io/conn_stream.ts";
import { FrameReader } from "../src/io/frame_reader.ts";
import { writeAll } from "../src/io/stream.ts";

const KiB = 1024;

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + seed) & 0xff;
  return bytes;
}

/** A raw-fd socket connected to a Deno unix listener, as src/nbd/device_setup.ts pairs them. */
async function rawToConn(): Promise<{ raw: number; conn: ConnStream; dir: string }> {
  const dir = await Deno.makeTempDir();
  const listener = Deno.listen({ transport: "unix", path: `${dir}/socket` });
  try {
    const fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
    connectUnix(fd, `${dir}/socket`);
    return { raw: fd, conn: new ConnStream(await listener.accept(), "test"), dir };
  } finally {
    listener.close();
  }
}

/** Reads from the raw fd until `target` is full or the stream ends; returns bytes read. */
async function readRaw(fd: number, target: Uint8Array): Promise<number> {
  let filled = 0;
  while (filled < target.length) {
    const n = recvNow(fd, target.subarray(filled));
    if (n === 0) break;
    if (n === null) await pollOnWorker(fd, POLLIN);
    else filled += n;
  }
  return filled;
}

Deno.test("libc wrappers name the call and errno when they fail", async () => {
  assert.throws(() => open("/nonexistent/nbd0", O_RDWR), (e: unknown) => {
    assert.ok(e instanceof LibcError);
    assert.equal(e.message, "open(/nonexistent/nbd0) failed: ENOENT");
    assert.equal(e.errno, 2);
    return true;
  });
  const { raw, conn, dir } = await rawToConn();
  try {
    // A socket is not an NBD device: the kernel answers ENOTTY.
    assert.throws(
      () => ioctl(raw, NbdIoctl.SET_SOCK, raw),
      { message: "ioctl(NBD_SET_SOCK) failed: ENOTTY" },
    );
  } finally {
    close(raw);
    conn.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("connectUnix links a raw fd to a Deno listener; bytes cross both ways", async () => {
  const { raw, conn, dir } = await rawToConn();
  try {
    // Small enough for the socket buffer, so one non-blocking send takes it all.
    const data = pattern(16 * KiB, 7);
    assert.equal(sendNow(raw, data), data.length);
    const received = new Uint8Array(data.length);
    await new FrameReader(conn).readFull(received, "test data");
    assert.deepEqual(received, data);
    await writeAll(conn, pattern(100, 1));
    const back = new Uint8Array(100);
    assert.equal(await readRaw(raw, back), 100);
    assert.deepEqual(back, pattern(100, 1));
  } finally {
    close(raw);
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
  // The raw end (the kernel's) sees the close as end of stream.
  assert.equal(await readRaw(raw, new Uint8Array(1)), 0);
  close(raw);
  await Deno.remove(dir, { recursive: true });
});
