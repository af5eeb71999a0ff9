import assert from "node:assert/strict";
import { BackendError } from "../src/block/backend.ts";
import { type IvbsTestServer, startIvbsServer } from "../src/ivbs/server/mod.ts";
import { IvbsSession, type IvbsSessionOptions } from "../src/ivbs/session.ts";
import { ManualClock } from "./support/manual_clock.ts";
import {
  decodeReadRequest,
  encodeHeader,
  encodeReadReply,
  HEADER_SIZE,
  MAX_IO_LENGTH,
  Op,
  Status,
} from "../src/ivbs/wire.ts";
import {
  captureLog,
  FAKE_USER,
  fakeProxy,
  type Packet,
  serveWell,
} from "./support/ivbs_fake_proxy.ts";

const MiB = 1024 * 1024;
const USER = { username: "alice", password: "correct horse" };

/** Short timeouts so every fault resolves within a fraction of a second. */
const FAST: Partial<IvbsSessionOptions> = {
  deadPeerTimeoutMs: 250,
  connectTimeoutMs: 250,
  backoff: { initialMs: 10, maxMs: 100 },
  failureMemoryMs: 1_000,
};

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 7 + seed) % 251;
  return bytes;
}

/** A test server with one image of `size` bytes and a session on it, closed after `fn`. */
async function withTestServerSession(
  size: number,
  fn: (session: IvbsSession, server: IvbsTestServer) => Promise<void>,
): Promise<void> {
  const server = await startIvbsServer({
    users: [USER],
    images: [{ name: "disk", size }],
    listProxiesIntervalMs: 0,
    log: captureLog(),
  });
  try {
    const session = await IvbsSession.open({
      proxies: server.addresses(),
      image: "disk",
      ...USER,
      log: captureLog(),
    });
    try {
      await fn(session, server);
    } finally {
      await session.close();
    }
  } finally {
    await server.close();
  }
}

Deno.test("IvbsSession.readInto fills the caller's buffer in place and leaves the bytes around it", () =>
  withTestServerSession(4 * MiB, async (session, server) => {
    const data = pattern(MiB + 3, 1);
    await session.write(12_345, data);
    const outer = new Uint8Array(data.length + 20).fill(0xee);
    const target = outer.subarray(10, 10 + data.length);
    await session.readInto(12_345, target);
    assert.deepEqual(target, data);
    assert.ok(outer.subarray(0, 10).every((b) => b === 0xee), "bytes before the target kept");
    assert.ok(outer.subarray(10 + data.length).every((b) => b === 0xee), "bytes after it kept");
    assert.equal(session.stats.reads, 1);
    assert.equal(session.stats.bytesRead, data.length);
    // A zero-length target sends nothing and is no error.
    await session.readInto(0, new Uint8Array(0));
    assert.equal(server.stats.requests.READ, 1);
  }));

Deno.test("IvbsSession.readInto rejects a range outside the image with EINVAL and leaves the target", () =>
  withTestServerSession(1 * MiB, async (session, server) => {
    const target = new Uint8Array(4096).fill(9);
    await assert.rejects(
      session.readInto(MiB - 100, target),
      (error) => error instanceof BackendError && error.errno === "EINVAL",
    );
    assert.ok(target.every((b) => b === 9));
    assert.equal(server.stats.requests.READ ?? 0, 0);
  }));

Deno.test("IvbsSession.readInto over 32 MiB sends two READs that fill one target", () =>
  withTestServerSession(40 * MiB, async (session, server) => {
    const offset = 4097;
    const data = pattern(MAX_IO_LENGTH + 12_345, 3);
    await session.write(offset, data);
    const target = new Uint8Array(data.length);
    await session.readInto(offset, target);
    assert.equal(server.stats.requests.READ, 2, "one READ of 32 MiB and one of the rest");
    assert.ok(target.every((byte, i) => byte === data[i]), "both pieces landed in place");
  }));

Deno.test("IvbsSession.readInto replays a READ cut mid-data on the next proxy into the same target", async () => {
  const memoryB = pattern(1 * MiB, 5);
  const length = 256 * 1024;
  const offset = 4096;
  let cutSent = false;
  // Proxy A sends the header and half of wrong data, then drops the connection.
  const proxyA = fakeProxy((peer) =>
    serveWell(peer, new Uint8Array(1 * MiB), async (request: Packet) => {
      const { length } = decodeReadRequest(request.payload);
      const header = encodeHeader({
        sessionId: peer.sessionId,
        op: Op.READ,
        status: Status.OK,
        dataLen: length,
        sequence: request.header.sequence,
      });
      const half = new Uint8Array(HEADER_SIZE + length / 2).fill(0xaa);
      half.set(header);
      await peer.send(half);
      cutSent = true;
      peer.close();
      return true;
    })
  );
  const proxyB = fakeProxy((peer) => serveWell(peer, memoryB));
  const session = await IvbsSession.open({
    proxies: [proxyA.address, proxyB.address],
    image: "disk",
    ...FAKE_USER,
    log: captureLog(),
    ...FAST,
  });
  try {
    const target = new Uint8Array(length);
    await session.readInto(offset, target);
    assert.ok(cutSent, "proxy A sent part of the data before dropping");
    assert.deepEqual(target, memoryB.subarray(offset, offset + length));
    assert.equal(session.stats.failovers, 1);
  } finally {
    await session.close();
    await proxyA.close();
    await proxyB.close();
  }
});

Deno.test("IvbsSession.readInto never writes to the target after it failed with an I/O timeout", async () => {
  const memory = pattern(1 * MiB, 7);
  const late = Promise.withResolvers<void>();
  let held = 0;
  const proxy = fakeProxy((peer) =>
    serveWell(peer, memory, async (request: Packet) => {
      if (held > 0) return false;
      held++;
      // Hold the first READ until the client gave up on it, then answer it anyway.
      await late.promise;
      const { offset, length } = decodeReadRequest(request.payload);
      await peer.send(
        encodeReadReply(
          peer.sessionId,
          request.header.sequence,
          memory.slice(offset, offset + length),
        ),
      );
      return true;
    })
  );
  const clock = new ManualClock();
  const session = await IvbsSession.open({
    proxies: [proxy.address],
    image: "disk",
    ...FAKE_USER,
    log: captureLog(),
    ...FAST,
    deadPeerTimeoutMs: 60_000,
    ioTimeoutMs: 50,
    clock,
  });
  try {
    const target = new Uint8Array(64 * 1024);
    const reading = session.readInto(0, target);
    clock.advance(50); // the I/O timeout
    await assert.rejects(
      reading,
      (error) => error instanceof BackendError && error.errno === "EIO",
    );
    late.resolve();
    // Served in order after the late reply: once it is back, the late data has been read.
    const next = new Uint8Array(100);
    await session.readInto(1000, next);
    assert.deepEqual(next, memory.subarray(1000, 1100));
    assert.ok(target.every((b) => b === 0), "the late reply did not land in the old target");
  } finally {
    late.resolve();
    await session.close();
    await proxy.close();
  }
});
