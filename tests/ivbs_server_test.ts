/**
 * The IVBS test server, spoken to in raw bytes (src/ivbs/wire.ts over
 * Deno.connect), so these tests do not depend on the IVBS client.
 */
import assert from "node:assert/strict";
import { FrameReader } from "../src/io/frame_reader.ts";
import {
  decodeAttachReply,
  decodeGreeting,
  decodeHeader,
  decodeProxyList,
  encodeAttachRequest,
  encodeEmpty,
  encodeHeader,
  encodeLogin,
  encodeReadRequest,
  encodeWriteRequest,
  GREETING_SIZE,
  hashPassword,
  HEADER_SIZE,
  Op,
  type PacketHeader,
  SESSION_ID_SIZE,
  Status,
  statusName,
} from "../src/ivbs/wire.ts";
import { createAdminApp } from "../src/ivbs/server/admin.ts";
import { UsageError } from "../src/args.ts";
import { loadUsersFile, parseServerArgs, run } from "../src/commands/ivbs_server.ts";
import {
  type IvbsServerOptions,
  type IvbsTestServer,
  ServerConfigError,
  startIvbsServer,
} from "../src/ivbs/server/mod.ts";
import { ImageConfigError, MEMORY_CHUNK_SIZE, MemoryStore } from "../src/ivbs/server/store.ts";
import { setLogLevel } from "../src/log.ts";
import { ManualClock } from "./manual_clock.ts";
import { eventually } from "./wait.ts";

// Expected refusals are logged at info/warn; keep the test output readable.
setLogLevel("error");

const MiB = 1024 * 1024;
const USERS = [
  { username: "alice", password: "alice-pw" },
  { username: "bob", password: "bob-pw" },
];
const IMAGES = [
  { name: "disk", size: 16 * MiB },
  { name: "golden", size: MiB, readOnly: true },
  { name: "private", size: MiB, users: ["bob"] },
  { name: "huge", size: 10 * 1024 * MiB },
];

interface Packet {
  header: PacketHeader;
  payload: Uint8Array;
}

/** A bare IVBS client: sends encoded packets, reads packets back. */
class RawClient {
  readonly #reader: FrameReader;
  #sequence = 1;
  private constructor(
    readonly conn: Deno.TcpConn,
    readonly sessionId: Uint8Array,
    readonly greeting: Packet,
    reader: FrameReader,
  ) {
    this.#reader = reader;
  }

  static async connect(address: { host: string; port: number }): Promise<RawClient> {
    const conn = await Deno.connect({ hostname: address.host, port: address.port });
    const reader = new FrameReader(conn);
    const greeting = await readPacket(reader);
    assert.ok(greeting, "the proxy closed before its GREETING");
    return new RawClient(conn, greeting.header.sessionId, greeting, reader);
  }

  nextSequence(): number {
    return this.#sequence++;
  }

  async send(packet: Uint8Array): Promise<void> {
    let done = 0;
    while (done < packet.length) done += await this.conn.write(packet.subarray(done));
  }

  /** The next packet, or null when the server closed the connection. */
  next(): Promise<Packet | null> {
    return readPacket(this.#reader);
  }

  /** The next packet that is not a LIST_PROXIES push. */
  async reply(): Promise<Packet> {
    while (true) {
      const packet = await this.next();
      assert.ok(packet, "the proxy closed the connection instead of replying");
      if (packet.header.op === Op.LIST_PROXIES && packet.header.sequence === 0) continue;
      return packet;
    }
  }

  async call(packet: Uint8Array): Promise<Packet> {
    await this.send(packet);
    return await this.reply();
  }

  async login(username: string, password: string): Promise<number> {
    const seq = this.nextSequence();
    const reply = await this.call(
      encodeLogin(this.sessionId, seq, { username, passwordHash: hashPassword(password) }),
    );
    assert.equal(reply.header.op, Op.LOGIN);
    assert.equal(reply.header.sequence, seq);
    assert.equal(reply.header.dataLen, 0);
    return reply.header.status;
  }

  async attach(image: string): Promise<Packet> {
    const seq = this.nextSequence();
    const reply = await this.call(encodeAttachRequest(this.sessionId, seq, image));
    assert.equal(reply.header.op, Op.ATTACH_TO_IMAGE);
    assert.equal(reply.header.sequence, seq);
    return reply;
  }

  async read(offset: number, length: number): Promise<Packet> {
    return await this.call(encodeReadRequest(this.sessionId, this.nextSequence(), offset, length));
  }

  async write(offset: number, data: Uint8Array): Promise<Packet> {
    return await this.call(encodeWriteRequest(this.sessionId, this.nextSequence(), offset, data));
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

async function readPacket(reader: FrameReader): Promise<Packet | null> {
  const headerBytes = new Uint8Array(HEADER_SIZE);
  try {
    if (!await reader.readFull(headerBytes, "header", true)) return null;
    const header = decodeHeader(headerBytes);
    const payload = new Uint8Array(header.dataLen);
    await reader.readFull(payload, "payload");
    return { header, payload };
  } catch (error) {
    // A reset from a closed proxy means the same as EOF here.
    if (error instanceof Deno.errors.ConnectionReset) return null;
    throw error;
  }
}

/** A client logged in as alice and attached to `image`. */
async function attached(server: IvbsTestServer, image = "disk", proxy = 0): Promise<RawClient> {
  const client = await RawClient.connect(server.addresses()[proxy]);
  assert.equal(statusName(await client.login("alice", "alice-pw")), "OK");
  assert.equal(statusName((await client.attach(image)).header.status), "OK");
  return client;
}

async function withServer(
  options: Partial<IvbsServerOptions>,
  body: (server: IvbsTestServer) => Promise<void>,
): Promise<void> {
  const server = await startIvbsServer({
    users: USERS,
    images: IMAGES,
    listProxiesIntervalMs: 0,
    ...options,
  });
  try {
    await body(server);
  } finally {
    await server.close();
  }
}

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + seed * 7 + 1) & 0xff;
  return bytes;
}

/** Resolves true if `promise` settles within `ms`; the timer never outlives the call. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// ---- greeting, login, attach ----

Deno.test("GREETING is the first packet: new session id, proxy name, idle timeout in whole seconds", async () => {
  await withServer({ idleTimeoutMs: 1500 }, async (server) => {
    const a = await RawClient.connect(server.addresses()[0]);
    const b = await RawClient.connect(server.addresses()[1]);
    try {
      const { header, payload } = a.greeting;
      assert.equal(header.op, Op.GREETING);
      assert.equal(header.status, Status.OK);
      assert.equal(header.sequence, 0);
      assert.equal(header.dataLen, GREETING_SIZE);
      assert.equal(header.sessionId.length, SESSION_ID_SIZE);
      assert.ok(header.sessionId.some((byte) => byte !== 0), "session id is all zeroes");
      assert.notDeepEqual(a.sessionId, b.sessionId);
      assert.deepEqual(decodeGreeting(payload), { proxyName: "proxy-0", idleTimeoutS: 2 });
      assert.equal(decodeGreeting(b.greeting.payload).proxyName, "proxy-1");
      assert.equal(server.stats.connectionsAccepted, 2);
    } finally {
      a.close();
      b.close();
    }
  });
});

Deno.test("LOGIN accepts the right password and denies a wrong one or an unknown user", async () => {
  await withServer({}, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      assert.equal(await client.login("alice", "wrong"), Status.PERMISSION_DENIED);
      assert.equal(await client.login("mallory", "alice-pw"), Status.PERMISSION_DENIED);
      assert.equal(await client.login("alice", "alice-pw"), Status.OK);
    } finally {
      client.close();
    }
  });
});

Deno.test("ATTACH_TO_IMAGE before LOGIN answers NOT_LOGGEDIN", async () => {
  await withServer({}, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      assert.equal((await client.attach("disk")).header.status, Status.NOT_LOGGEDIN);
    } finally {
      client.close();
    }
  });
});

Deno.test("ATTACH_TO_IMAGE refuses an unknown image and a user the image does not allow", async () => {
  await withServer({}, async (server) => {
    const alice = await RawClient.connect(server.addresses()[0]);
    const bob = await RawClient.connect(server.addresses()[0]);
    try {
      assert.equal(await alice.login("alice", "alice-pw"), Status.OK);
      assert.equal((await alice.attach("nope")).header.status, Status.NOT_FOUND);
      assert.equal((await alice.attach("private")).header.status, Status.PERMISSION_DENIED);
      assert.equal(await bob.login("bob", "bob-pw"), Status.OK);
      assert.equal((await bob.attach("private")).header.status, Status.OK);
    } finally {
      alice.close();
      bob.close();
    }
  });
});

Deno.test("ATTACH_TO_IMAGE replies name, size and the read-only flag in 265 bytes", async () => {
  await withServer({}, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      await client.login("alice", "alice-pw");
      const rw = await client.attach("disk");
      assert.equal(rw.header.dataLen, 265);
      assert.deepEqual(decodeAttachReply(rw.payload), {
        imageName: "disk",
        size: 16 * MiB,
        readOnly: false,
      });
      const other = await RawClient.connect(server.addresses()[0]);
      try {
        await other.login("alice", "alice-pw");
        const ro = await other.attach("golden");
        assert.deepEqual(decodeAttachReply(ro.payload), {
          imageName: "golden",
          size: MiB,
          readOnly: true,
        });
        assert.equal((await other.write(0, new Uint8Array(512))).header.status, Status.READ_ONLY);
        assert.equal((await other.read(0, 512)).header.status, Status.OK);
      } finally {
        other.close();
      }
    } finally {
      client.close();
    }
  });
});

// ---- I/O ----

Deno.test("READ and WRITE before ATTACH answer NOT_READY", async () => {
  await withServer({}, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      assert.equal((await client.read(0, 512)).header.status, Status.NOT_READY);
      await client.login("alice", "alice-pw");
      assert.equal((await client.write(0, new Uint8Array(8))).header.status, Status.NOT_READY);
    } finally {
      client.close();
    }
  });
});

Deno.test("WRITE then READ round-trips across a chunk boundary; unwritten bytes read as zeroes", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server);
    try {
      const data = pattern(3000, 1);
      const at = MEMORY_CHUNK_SIZE - 1000;
      const written = await client.write(at, data);
      assert.equal(written.header.status, Status.OK);
      assert.equal(written.header.dataLen, 0);
      const read = await client.read(at - 100, 3200);
      assert.equal(read.header.status, Status.OK);
      assert.equal(read.header.dataLen, 3200);
      assert.deepEqual(read.payload.subarray(0, 100), new Uint8Array(100));
      assert.deepEqual(read.payload.subarray(100, 3100), data);
      assert.deepEqual(read.payload.subarray(3100), new Uint8Array(100));
    } finally {
      client.close();
    }
  });
});

Deno.test("a 10 GiB memory image serves its last bytes as zeroes without allocating it", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server, "huge");
    try {
      const size = 10 * 1024 * MiB;
      const read = await client.read(size - 4096, 4096);
      assert.equal(read.header.status, Status.OK);
      assert.deepEqual(read.payload, new Uint8Array(4096));
      assert.equal((await client.write(size - 1, new Uint8Array([7]))).header.status, Status.OK);
      assert.deepEqual((await client.read(size - 1, 1)).payload, new Uint8Array([7]));
    } finally {
      client.close();
    }
  });
});

Deno.test("READ and WRITE past the end of the image answer INVALID_REQUEST", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server);
    try {
      const size = 16 * MiB;
      const read = await client.read(size - 511, 512);
      assert.equal(read.header.status, Status.INVALID_REQUEST);
      assert.equal(read.header.dataLen, 0);
      assert.equal(
        (await client.write(size, new Uint8Array(1))).header.status,
        Status.INVALID_REQUEST,
      );
      assert.equal((await client.read(size, 0)).header.status, Status.OK);
    } finally {
      client.close();
    }
  });
});

Deno.test("malformed payloads and a foreign session id answer INVALID_REQUEST and keep the connection", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server);
    try {
      // WRITE shorter than its 8-byte offset.
      const shortWrite = new Uint8Array(HEADER_SIZE + 4);
      encodeHeader(
        { sessionId: client.sessionId, op: Op.WRITE, dataLen: 4, sequence: 77 },
        shortWrite,
      );
      const a = await client.call(shortWrite);
      assert.deepEqual([a.header.sequence, a.header.status], [77, Status.INVALID_REQUEST]);
      // READ with a 15-byte payload.
      const badRead = new Uint8Array(HEADER_SIZE + 15);
      encodeHeader(
        { sessionId: client.sessionId, op: Op.READ, dataLen: 15, sequence: 78 },
        badRead,
      );
      assert.equal((await client.call(badRead)).header.status, Status.INVALID_REQUEST);
      // READ of more than 32 MiB.
      const bigRead = encodeReadRequest(client.sessionId, 79, 0, 1);
      new DataView(bigRead.buffer).setBigUint64(HEADER_SIZE + 8, BigInt(33 * MiB));
      assert.equal((await client.call(bigRead)).header.status, Status.INVALID_REQUEST);
      // Someone else's session id.
      const foreign = encodeReadRequest(new Uint8Array(SESSION_ID_SIZE).fill(9), 80, 0, 512);
      const reply = await client.call(foreign);
      assert.deepEqual([reply.header.sequence, reply.header.status], [80, Status.INVALID_REQUEST]);
      assert.deepEqual(reply.header.sessionId, client.sessionId);
      // A GREETING from the client is not a request.
      const greeting = encodeEmpty(client.sessionId, Op.GREETING, 81);
      assert.equal((await client.call(greeting)).header.status, Status.INVALID_REQUEST);
      assert.equal((await client.read(0, 512)).header.status, Status.OK);
    } finally {
      client.close();
    }
  });
});

Deno.test("KEEPALIVE is echoed with the same op and sequence, status OK", async () => {
  await withServer({}, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      const reply = await client.call(encodeEmpty(client.sessionId, Op.KEEPALIVE, 4242));
      assert.deepEqual(
        [reply.header.op, reply.header.sequence, reply.header.status, reply.header.dataLen],
        [Op.KEEPALIVE, 4242, Status.OK, 0],
      );
    } finally {
      client.close();
    }
  });
});

Deno.test("LIST_PROXIES answers a request with its sequence and lists only running proxies", async () => {
  await withServer({ ports: [0, 0, 0] }, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      const reply = await client.call(encodeEmpty(client.sessionId, Op.LIST_PROXIES, 5));
      assert.equal(reply.header.sequence, 5);
      assert.deepEqual(decodeProxyList(reply.payload), server.addresses());
      assert.equal(decodeProxyList(reply.payload).length, 3);
      await server.stopProxy(2);
      const after = await client.call(encodeEmpty(client.sessionId, Op.LIST_PROXIES, 6));
      assert.deepEqual(decodeProxyList(after.payload), server.addresses());
      assert.equal(decodeProxyList(after.payload).length, 2);
    } finally {
      client.close();
    }
  });
});

Deno.test("LIST_PROXIES is pushed with sequence 0 to connections that have not even logged in", async () => {
  await withServer({ listProxiesIntervalMs: 20 }, async (server) => {
    const client = await RawClient.connect(server.addresses()[1]);
    try {
      const push = await client.next();
      assert.ok(push);
      assert.equal(push.header.op, Op.LIST_PROXIES);
      assert.equal(push.header.sequence, 0);
      assert.deepEqual(push.header.sessionId, client.sessionId);
      assert.deepEqual(decodeProxyList(push.payload), server.addresses());
    } finally {
      client.close();
    }
  });
});

Deno.test("pipelined requests with a reply delay are all answered, in completion order", async () => {
  await withServer({ replyDelayMs: { min: 0, max: 15 } }, async (server) => {
    const client = await attached(server);
    try {
      const count = 300;
      const block = 4096;
      // Writes first (each its own block), then reads of those blocks, all without waiting.
      const sent: number[] = [];
      for (let i = 0; i < count; i++) {
        const seq = 1000 + i;
        sent.push(seq);
        await client.send(encodeWriteRequest(client.sessionId, seq, i * block, pattern(block, i)));
      }
      const writes = new Set<number>();
      const received: number[] = [];
      for (let i = 0; i < count; i++) {
        const reply = await client.reply();
        assert.equal(reply.header.status, Status.OK);
        writes.add(reply.header.sequence);
        received.push(reply.header.sequence);
      }
      assert.deepEqual([...writes].sort(), sent.slice().sort());
      assert.notDeepEqual(received, sent, "replies came back in request order");
      for (let i = 0; i < count; i++) {
        await client.send(encodeReadRequest(client.sessionId, 5000 + i, i * block, block));
      }
      for (let i = 0; i < count; i++) {
        const reply = await client.reply();
        const index = reply.header.sequence - 5000;
        assert.equal(reply.header.op, Op.READ);
        assert.deepEqual(reply.payload, pattern(block, index), `block ${index}`);
      }
      assert.equal(server.stats.requests.WRITE, count);
      assert.equal(server.stats.requests.READ, count);
    } finally {
      client.close();
    }
  });
});

Deno.test("LOGIN, ATTACH and READ may be pipelined without waiting for replies", async () => {
  await withServer({ replyDelayMs: { min: 0, max: 5 } }, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      const sid = client.sessionId;
      await client.send(
        encodeLogin(sid, 1, { username: "alice", passwordHash: hashPassword("alice-pw") }),
      );
      await client.send(encodeAttachRequest(sid, 2, "disk"));
      await client.send(encodeReadRequest(sid, 3, 0, 512));
      const statuses = new Map<number, number>();
      for (let i = 0; i < 3; i++) {
        const reply = await client.reply();
        statuses.set(reply.header.sequence, reply.header.status);
      }
      assert.deepEqual([...statuses.entries()].sort(), [[1, 0], [2, 0], [3, 0]]);
    } finally {
      client.close();
    }
  });
});

Deno.test("a client that does not read its replies stops being read (bounded buffering)", async () => {
  await withServer({ connectionLimits: { maxBufferedBytes: MiB } }, async (server) => {
    const client = await attached(server);
    try {
      const count = 1000;
      const length = 64 * 1024; // 64 MiB of replies in all: far more than socket buffers hold
      for (let i = 0; i < count; i++) {
        await client.send(encodeReadRequest(client.sessionId, i + 1, 0, length));
      }
      await eventually(
        "the server stops reading for want of room",
        () => server.stats.readerWaits > 0,
      );
      const read = server.stats.requests.READ ?? 0;
      assert.ok(read < count, `the server read all ${count} requests while the client read none`);
      for (let i = 0; i < count; i++) {
        const reply = await client.reply();
        assert.equal(reply.header.status, Status.OK);
      }
      assert.equal(server.stats.requests.READ, count);
    } finally {
      client.close();
    }
  });
});

// ---- connection lifetime ----

Deno.test("a connection that sends nothing for idleTimeoutMs is closed", async () => {
  const clock = new ManualClock();
  await withServer({ idleTimeoutMs: 200, clock }, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      clock.advance(200);
      assert.equal(await client.next(), null);
    } finally {
      client.close();
    }
  });
});

Deno.test("keepalives keep a connection open past the idle timeout, and it closes once they stop", async () => {
  const clock = new ManualClock();
  await withServer({ idleTimeoutMs: 400, clock }, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      // 20 keepalives 50 ms apart: 1 s, well past 400 ms.
      for (let i = 0; i < 20; i++) {
        const reply = await client.call(encodeEmpty(client.sessionId, Op.KEEPALIVE, i));
        assert.equal(reply.header.sequence, i);
        clock.advance(50);
      }
      clock.advance(400);
      assert.equal(await client.next(), null);
    } finally {
      client.close();
    }
  });
});

Deno.test("an unknown op closes that connection while the server keeps serving others", async () => {
  await withServer({}, async (server) => {
    const bad = await attached(server);
    const good = await attached(server);
    try {
      const packet = encodeEmpty(bad.sessionId, Op.KEEPALIVE, 1);
      new DataView(packet.buffer).setUint32(32, 999); // op field
      await bad.send(packet);
      assert.equal(await bad.next(), null);
      assert.equal((await good.read(0, 512)).header.status, Status.OK);
    } finally {
      bad.close();
      good.close();
    }
  });
});

Deno.test("a data_len over the protocol limit closes the connection without allocating it", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server);
    try {
      const packet = encodeEmpty(client.sessionId, Op.WRITE, 1);
      new DataView(packet.buffer).setUint32(40, 0xffff_ffff); // data_len field
      await client.send(packet);
      assert.equal(await client.next(), null);
      const next = await attached(server);
      next.close();
    } finally {
      client.close();
    }
  });
});

// ---- faults ----

Deno.test("stopProxy closes its connections and port; startProxy listens on the same port", async () => {
  await withServer({}, async (server) => {
    const port = server.proxies[0].port;
    const client = await attached(server, "disk", 0);
    const other = await attached(server, "disk", 1);
    try {
      await server.stopProxy(0);
      assert.equal(server.proxies[0].running, false);
      assert.equal(server.proxies[0].connections, 0);
      assert.equal(await client.next(), null);
      await assert.rejects(
        Deno.connect({ hostname: "127.0.0.1", port }),
        Deno.errors.ConnectionRefused,
      );
      assert.deepEqual(server.addresses(), [{ host: "127.0.0.1", port: server.proxies[1].port }]);
      assert.equal((await other.read(0, 512)).header.status, Status.OK);

      await server.startProxy(0);
      assert.equal(server.proxies[0].port, port);
      assert.equal(server.proxies[0].running, true);
      const again = await attached(server, "disk", 0);
      assert.equal((await again.read(0, 512)).header.status, Status.OK);
      again.close();
    } finally {
      client.close();
      other.close();
    }
  });
});

Deno.test("stallProxy keeps connections open but answers nothing, keepalive included, until unstalled", async () => {
  const clock = new ManualClock();
  await withServer({ idleTimeoutMs: 200, clock }, async (server) => {
    const client = await attached(server, "disk", 0);
    let late: RawClient | undefined;
    try {
      server.stallProxy(0, true);
      assert.equal(server.proxies[0].stalled, true);
      await client.send(encodeEmpty(client.sessionId, Op.KEEPALIVE, 9));
      const reply = client.reply();
      // Twice the idle timeout: a stalled proxy does not close idle connections.
      clock.advance(400);
      // Silence has no event to wait for: a short real wait, far above a loopback answer.
      assert.equal(await settlesWithin(reply, 100), false, "a stalled proxy answered");
      const connecting = RawClient.connect(server.addresses()[0]);
      assert.equal(await settlesWithin(connecting, 100), false, "a stalled proxy sent GREETING");
      assert.equal(server.proxies[0].connections, 2);

      server.stallProxy(0, false);
      assert.equal((await reply).header.sequence, 9);
      late = await connecting;
      assert.equal(late.greeting.header.op, Op.GREETING);
    } finally {
      client.close();
      late?.close();
    }
  });
});

Deno.test("holdReplies holds READ/WRITE replies back but answers KEEPALIVE, until released", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server, "disk", 0);
    try {
      server.holdReplies(0, true);
      assert.equal(server.proxies[0].holding, true);
      const write = client.nextSequence();
      const read = client.nextSequence();
      await client.send(encodeWriteRequest(client.sessionId, write, 0, pattern(512, 5)));
      await client.send(encodeReadRequest(client.sessionId, read, 0, 512));
      // Unheld, the WRITE and READ replies would leave before the keepalive's.
      for (const sequence of [99, 100]) {
        const keepalive = await client.call(encodeEmpty(client.sessionId, Op.KEEPALIVE, sequence));
        assert.equal(keepalive.header.op, Op.KEEPALIVE, "the keepalive overtook the held replies");
        assert.equal(keepalive.header.sequence, sequence);
      }
      const held = client.reply();

      server.holdReplies(0, false);
      const replies = [await held, await client.reply()];
      const bySequence = new Map(replies.map((r) => [r.header.sequence, r]));
      assert.equal(bySequence.get(write)?.header.status, Status.OK);
      assert.equal(bySequence.get(read)?.header.status, Status.OK);
      assert.equal(bySequence.get(read)?.payload.length, 512);
    } finally {
      client.close();
    }
  });
});

Deno.test("dropConnections closes current connections and keeps listening", async () => {
  await withServer({}, async (server) => {
    const a = await attached(server, "disk", 0);
    const b = await attached(server, "disk", 1);
    try {
      server.dropConnections(0);
      assert.equal(await a.next(), null);
      assert.equal((await b.read(0, 512)).header.status, Status.OK);
      const again = await attached(server, "disk", 0);
      again.close();
      server.dropConnections();
      assert.equal(await b.next(), null);
    } finally {
      a.close();
      b.close();
    }
  });
});

Deno.test("injectStatus answers the next N data requests with the status and no data", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server);
    try {
      await client.write(0, pattern(512, 3));
      server.injectStatus(Status.TEMPORARY_ERROR, 2);
      // KEEPALIVE is not a data request: not matched without an ops filter.
      assert.equal(
        (await client.call(encodeEmpty(client.sessionId, Op.KEEPALIVE, 1))).header.status,
        Status.OK,
      );
      for (let i = 0; i < 2; i++) {
        const reply = await client.read(0, 512);
        assert.deepEqual([reply.header.status, reply.header.dataLen], [Status.TEMPORARY_ERROR, 0]);
      }
      const served = await client.read(0, 512);
      assert.equal(served.header.status, Status.OK);
      assert.deepEqual(served.payload, pattern(512, 3));
      assert.equal(server.stats.injected, 2);
    } finally {
      client.close();
    }
  });
});

Deno.test("injectStatus filters by proxy and by op, and an injected WRITE stores nothing", async () => {
  await withServer({}, async (server) => {
    const on0 = await attached(server, "disk", 0);
    const on1 = await attached(server, "disk", 1);
    try {
      server.injectStatus(Status.USE_ANOTHER_PROXY, 1, { proxy: 1, ops: [Op.WRITE] });
      server.injectStatus(Status.EXPIRED, 1, { ops: [Op.KEEPALIVE] });
      assert.equal((await on0.write(0, pattern(8, 1))).header.status, Status.OK);
      assert.equal((await on1.read(0, 8)).header.status, Status.OK);
      assert.equal((await on1.write(0, pattern(8, 2))).header.status, Status.USE_ANOTHER_PROXY);
      assert.deepEqual((await on1.read(0, 8)).payload, pattern(8, 1));
      const keepalive = await on0.call(encodeEmpty(on0.sessionId, Op.KEEPALIVE, 3));
      assert.deepEqual([keepalive.header.op, keepalive.header.status], [
        Op.KEEPALIVE,
        Status.EXPIRED,
      ]);
      assert.equal(server.stats.injected, 2);
    } finally {
      on0.close();
      on1.close();
    }
  });
});

// ---- stores ----

Deno.test("a file-backed image keeps its data across a server restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivbs-server-test-" });
  try {
    const options = { users: USERS, ports: [0], dataDir: dir, listProxiesIntervalMs: 0 };
    const data = pattern(5000, 9);
    let server = await startIvbsServer({ ...options, images: [{ name: "disk", size: 8 * MiB }] });
    try {
      const client = await attached(server);
      assert.equal((await client.write(MiB - 10, data)).header.status, Status.OK);
      client.close();
    } finally {
      await server.close();
    }
    assert.equal((await Deno.stat(`${dir}/disk.img`)).size, 8 * MiB);

    server = await startIvbsServer(options); // no images option: the file is found on attach
    try {
      const client = await attached(server);
      const read = await client.read(MiB - 20, 5020);
      assert.deepEqual(read.payload.subarray(0, 10), new Uint8Array(10));
      assert.deepEqual(read.payload.subarray(10, 5010), data);
      assert.deepEqual(read.payload.subarray(5010), new Uint8Array(10));
      assert.deepEqual(await server.images(), [{ name: "disk", size: 8 * MiB, readOnly: false }]);
      client.close();
    } finally {
      await server.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MemoryStore trims the last chunk to the image size and rejects bad names", async () => {
  const store = new MemoryStore();
  const image = await store.create({ name: "small", size: 100 });
  await image.write(90, pattern(10, 1));
  const back = new Uint8Array(100).fill(0xee);
  await image.readInto(0, back);
  assert.deepEqual(back.subarray(0, 90), new Uint8Array(90));
  assert.deepEqual(back.subarray(90), pattern(10, 1));
  await assert.rejects(
    async () => await store.create({ name: "../etc", size: 1 }),
    ImageConfigError,
  );
  await assert.rejects(async () => await store.create({ name: "x", size: -1 }), ImageConfigError);
  await store.close();
});

Deno.test("startIvbsServer rejects bad options with ServerConfigError and leaves nothing running", async () => {
  await assert.rejects(startIvbsServer({ users: USERS, ports: [70000] }), ServerConfigError);
  await assert.rejects(
    startIvbsServer({
      users: [{ username: "a", password: "1" }, { username: "a", password: "2" }],
    }),
    ServerConfigError,
  );
  await assert.rejects(
    startIvbsServer({ users: USERS, ports: [0], images: [{ name: "a/b", size: 1 }] }),
    ImageConfigError,
  );
  const first = await startIvbsServer({ users: USERS, ports: [0], listProxiesIntervalMs: 0 });
  try {
    const taken = first.proxies[0].port;
    await assert.rejects(
      startIvbsServer({ users: USERS, ports: [0, taken] }),
      (error: Error & { code?: string }) =>
        error.code === "LISTEN" && error.message.includes(String(taken)),
    );
  } finally {
    await first.close();
  }
});

// ---- admin API ----

Deno.test("admin API lists proxies and stops, stalls and restarts one", async () => {
  await withServer({}, async (server) => {
    const app = createAdminApp(server);
    const list = await (await app.request("/proxies")).json();
    assert.equal(list.length, 2);
    assert.deepEqual(list[0], { ...server.proxies[0] });
    assert.equal(list[0].running, true);

    const stopped = await app.request("/proxies/1/stop", { method: "POST" });
    assert.equal(stopped.status, 200);
    assert.equal((await stopped.json()).running, false);
    assert.equal(server.proxies[1].running, false);
    assert.equal(
      (await (await app.request("/proxies/1/start", { method: "POST" })).json()).running,
      true,
    );
    await app.request("/proxies/0/stall", { method: "POST" });
    assert.equal(server.proxies[0].stalled, true);
    await app.request("/proxies/0/unstall", { method: "POST" });
    assert.equal(server.proxies[0].stalled, false);
    assert.equal(
      (await (await app.request("/proxies/0/hold", { method: "POST" })).json()).holding,
      true,
    );
    assert.equal(server.proxies[0].holding, true);
    await app.request("/proxies/0/release", { method: "POST" });
    assert.equal(server.proxies[0].holding, false);
    assert.equal((await app.request("/proxies/0/drop", { method: "POST" })).status, 200);

    assert.equal((await app.request("/proxies/7/stop", { method: "POST" })).status, 404);
    assert.equal((await app.request("/proxies/0/explode", { method: "POST" })).status, 404);
  });
});

Deno.test("admin API injects a status given by name and validates the body", async () => {
  await withServer({}, async (server) => {
    const app = createAdminApp(server);
    const post = (body: unknown) =>
      app.request("/inject", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
    assert.equal((await post({ status: "TEMPORARY_ERROR", count: 1, ops: ["read"] })).status, 200);
    assert.equal((await post({ status: 12, count: 1, proxy: 1 })).status, 200);
    const client = await attached(server, "disk", 0);
    try {
      assert.equal((await client.read(0, 8)).header.status, Status.TEMPORARY_ERROR);
      assert.equal((await client.read(0, 8)).header.status, Status.OK);
    } finally {
      client.close();
    }
    const bad = await post({ status: "SOMETIMES", count: 1 });
    assert.equal(bad.status, 400);
    assert.match((await bad.json()).error, /unknown status "SOMETIMES"/);
    assert.equal((await post({ status: 10, count: 0 })).status, 400);
    assert.equal((await post({ status: 10, count: 1, proxy: 9 })).status, 404);
    assert.equal((await post("{not json")).status, 400);
    const stats = await (await app.request("/stats")).json();
    assert.equal(stats.injected, 1);
  });
});

// ---- CLI ----

Deno.test("parseServerArgs reads every flag", () => {
  const command = parseServerArgs([
    "--host",
    "127.0.0.1",
    "--port",
    "12000",
    "--proxies",
    "3",
    "--data-dir",
    "/tmp/x",
    "--create",
    "a:64M",
    "--create",
    "b:1G:ro",
    "--user",
    "alice:pa:ss",
    "--users-file",
    "u.json",
    "--idle-timeout",
    "2.5",
    "--list-interval",
    "0",
    "--reply-delay",
    "1-20",
    "--admin-port",
    "0",
  ]);
  assert.deepEqual(command, {
    help: false,
    usersFile: "u.json",
    adminPort: 0,
    options: {
      host: "127.0.0.1",
      ports: [12000, 12001, 12002],
      dataDir: "/tmp/x",
      users: [{ username: "alice", password: "pa:ss" }],
      images: [{ name: "a", size: 64 * MiB, readOnly: false }, {
        name: "b",
        size: 1024 * MiB,
        readOnly: true,
      }],
      idleTimeoutMs: 2500,
      listProxiesIntervalMs: 0,
      replyDelayMs: { min: 1, max: 20 },
    },
  });
  assert.deepEqual(parseServerArgs([]).options.ports, [11417]);
  assert.deepEqual(parseServerArgs(["--create", "empty:0"]).options.images, [
    { name: "empty", size: 0, readOnly: false },
  ]);
});

Deno.test("parseServerArgs rejects bad flags with a UsageError that never shows a password", () => {
  const bad = [
    ["--bogus"],
    ["--port", "70000"],
    ["--proxies", "0"],
    ["--port", "1", "--port", "2", "--proxies", "2"],
    ["--create", "disk"],
    ["--create", "disk:10X"],
    ["--create", "disk:1M:rw"],
    ["--user", "secretpassword"],
    ["--idle-timeout", "0"],
    ["--reply-delay", "9-1"],
    ["extra"],
  ];
  for (const args of bad) {
    assert.throws(() => parseServerArgs(args), (error: Error) => {
      assert.ok(error instanceof UsageError, `${args.join(" ")}: ${error}`);
      assert.ok(!error.message.includes("secretpassword"));
      return true;
    });
  }
});

Deno.test("run exits 0 on --help and 2 on a bad flag or missing users", async () => {
  const log = console.log;
  const error = console.error;
  const printed: string[] = [];
  console.log = (...args: unknown[]) => printed.push(args.join(" "));
  console.error = (...args: unknown[]) => printed.push(args.join(" "));
  try {
    assert.equal(await run(["--help"]), 0);
    for (
      const flag of [
        "--host",
        "--port",
        "--proxies",
        "--data-dir",
        "--create",
        "--user",
        "--users-file",
        "--idle-timeout",
        "--list-interval",
        "--reply-delay",
        "--admin-port",
        "--help",
      ]
    ) {
      assert.ok(printed[0].includes(flag), `--help does not document ${flag}`);
    }
    assert.match(printed[0], /example:/);
    assert.equal(await run(["--nope"]), 2);
    assert.equal(await run(["--port", "0"]), 2);
    assert.match(printed.at(-1)!, /no users/);
  } finally {
    console.log = log;
    console.error = error;
  }
});

Deno.test("loadUsersFile reads a JSON user list and names the file when it is wrong", async () => {
  const path = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(path, JSON.stringify([{ username: "carol", password: "c-pw" }]));
    assert.deepEqual(await loadUsersFile(path), [{ username: "carol", password: "c-pw" }]);
    await Deno.writeTextFile(path, JSON.stringify([{ username: "carol", password: 5 }]));
    await assert.rejects(
      loadUsersFile(path),
      (e: Error) => e instanceof UsageError && e.message.includes(path),
    );
    await Deno.writeTextFile(path, "[{");
    await assert.rejects(loadUsersFile(path), /is not JSON/);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("ivbsnetd ivbs-server serves until SIGTERM, exits 0 and never prints a password", async () => {
  const main = new URL("../main.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      main,
      "ivbs-server",
      "--port",
      "0",
      "--user",
      "alice:TopSecret1",
      "--create",
      "disk:1M",
      "--list-interval",
      "0",
    ],
    stdout: "piped",
    stderr: "piped",
    env: { IVBSNETD_LOG: "debug" },
  }).spawn();
  const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  try {
    while (!out.includes("ready")) {
      const { value, done } = await stdout.read();
      if (done) break;
      out += value;
    }
    const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(out)?.[1]);
    assert.ok(port > 0, `no address printed: ${out}`);
    const client = await RawClient.connect({ host: "127.0.0.1", port });
    assert.equal(await client.login("alice", "TopSecret1"), Status.OK);
    assert.equal((await client.attach("disk")).header.status, Status.OK);
    client.close();
  } finally {
    child.kill("SIGTERM");
  }
  while (true) {
    const { value, done } = await stdout.read();
    if (done) break;
    out += value;
  }
  const status = await child.status;
  const err = await new Response(child.stderr).text();
  assert.equal(status.code, 0, err);
  assert.match(out, /stopped/);
  assert.ok(!out.includes("TopSecret1") && !err.includes("TopSecret1"), "a password was printed");
});
