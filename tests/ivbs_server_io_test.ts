/** IVBS test server: READ, WRITE, KEEPALIVE, LIST_PROXIES and pipelining, in raw bytes. */
import assert from "node:assert/strict";
import {
  decodeProxyList,
  encodeAttachRequest,
  encodeEmpty,
  encodeHeader,
  encodeLogin,
  encodeReadRequest,
  encodeWriteRequest,
  hashPassword,
  HEADER_SIZE,
  Op,
  SESSION_ID_SIZE,
  Status,
} from "../src/ivbs/wire.ts";
import { MEMORY_CHUNK_SIZE } from "../src/ivbs/server/store.ts";
import { eventually } from "./support/wait.ts";
import { attached, MiB, pattern, RawClient, withServer } from "./support/ivbs_raw_client.ts";
import { setLogLevel } from "../src/log.ts";

// Expected refusals are logged at info/warn; keep the test output readable.
setLogLevel("error");

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
