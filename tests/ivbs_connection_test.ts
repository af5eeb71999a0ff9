import assert from "node:assert/strict";
import { IvbsConnection } from "../src/ivbs/connection.ts";
import { ConnectionLostError } from "../src/ivbs/errors.ts";
import { LatencyWindow } from "../src/ivbs/liveness.ts";
import {
  decodeLogin,
  decodeReadRequest,
  decodeWriteRequest,
  encodeHeader,
  encodeProxyList,
  encodeReadReply,
  encodeReadReplyHeader,
  encodeReadRequest,
  encodeWriteRequest,
  hashPassword,
  HEADER_SIZE,
  Op,
  SESSION_ID_SIZE,
  Status,
} from "../src/ivbs/wire.ts";
import { closedPort, fakeProxy, type Packet } from "./ivbs_fake_proxy.ts";

const NO_ID = new Uint8Array(SESSION_ID_SIZE);

/** Bytes whose content names their offset, so a misrouted reply shows. */
function pattern(offset: number, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (offset + i * 7) & 0xff;
  return bytes;
}

Deno.test("IvbsConnection copies the GREETING session id into every request", async () => {
  const seen: Packet[] = [];
  let proxySessionId: Uint8Array = new Uint8Array(0);
  const proxy = fakeProxy(async (peer) => {
    proxySessionId = peer.sessionId;
    await peer.greet("p1", 30);
    for (let packet = await peer.next(); packet; packet = await peer.next()) {
      seen.push({
        header: { ...packet.header, sessionId: packet.header.sessionId.slice() },
        payload: packet.payload,
      });
      await peer.reply(packet);
    }
  });
  const conn = await IvbsConnection.open(proxy.address);
  assert.equal(conn.proxyName, "p1");
  assert.equal(conn.idleTimeoutS, 30);
  const login = await conn.login("alice", hashPassword("secret"));
  assert.equal(login.status, Status.OK);
  await conn.keepalive();
  await conn.close();
  await proxy.close();
  assert.deepEqual(seen.map((p) => p.header.op), [Op.LOGIN, Op.KEEPALIVE]);
  for (const packet of seen) assert.deepEqual(packet.header.sessionId, proxySessionId);
  assert.notEqual(seen[0].header.sequence, seen[1].header.sequence);
  const login0 = decodeLogin(seen[0].payload);
  assert.equal(login0.username, "alice");
  assert.equal(login0.passwordHash, hashPassword("secret"));
});

Deno.test("IvbsConnection accepts a GREETING with data_len 0 (unnamed, 30 s)", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.send(
      encodeHeader({ sessionId: peer.sessionId, op: Op.GREETING, dataLen: 0, sequence: 0 }),
    );
    await peer.next();
  });
  const conn = await IvbsConnection.open(proxy.address);
  assert.equal(conn.proxyName, "");
  assert.equal(conn.idleTimeoutS, 30);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection matches replies that come back in reverse order", async () => {
  const count = 64;
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    const requests: Packet[] = [];
    while (requests.length < count) requests.push((await peer.next())!);
    for (const request of requests.reverse()) {
      const { offset, length } = decodeReadRequest(request.payload);
      await peer.send(
        encodeReadReply(peer.sessionId, request.header.sequence, pattern(offset, length)),
      );
    }
    await peer.next();
  });
  const conn = await IvbsConnection.open(proxy.address);
  const replies = await Promise.all(
    Array.from({ length: count }, (_, i) => {
      const target = new Uint8Array(512 + i);
      return conn.request(encodeReadRequest(NO_ID, 0, i * 1000, target.length), { target })
        .then((reply) => ({ i, reply, target }));
    }),
  );
  for (const { i, reply, target } of replies) {
    assert.equal(reply.status, Status.OK);
    assert.equal(reply.payload, target, "READ data lands in the caller's buffer");
    assert.deepEqual(target, pattern(i * 1000, 512 + i));
  }
  assert.equal(conn.inFlight, 0);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection hands LIST_PROXIES pushes between replies to onProxyList", async () => {
  const lists: { host: string; port: number }[][] = [];
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    const request = (await peer.next())!;
    await peer.send(
      encodeProxyList(peer.sessionId, 0, [{ host: "127.0.0.1", port: 4001 }, {
        host: "::1",
        port: 4002,
      }]),
    );
    await peer.send(encodeReadReply(peer.sessionId, request.header.sequence, new Uint8Array(8)));
    await peer.next();
  });
  const conn = await IvbsConnection.open(proxy.address, {
    onProxyList: (list) => lists.push(list),
  });
  const target = new Uint8Array(8);
  const reply = await conn.request(encodeReadRequest(NO_ID, 0, 0, 8), { target });
  assert.equal(reply.status, Status.OK);
  assert.deepEqual(lists, [[{ host: "127.0.0.1", port: 4001 }, { host: "::1", port: 4002 }]]);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection fails on a bad header from the proxy and rejects what is pending", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    const request = (await peer.next())!;
    const bad = encodeHeader({
      sessionId: peer.sessionId,
      op: Op.READ,
      dataLen: 0,
      sequence: request.header.sequence,
    });
    new DataView(bad.buffer).setUint32(32, 999); // unknown op
    await peer.send(bad);
    await peer.next();
  });
  const conn = await IvbsConnection.open(proxy.address);
  const pending = conn.request(encodeReadRequest(NO_ID, 0, 0, 16), { target: new Uint8Array(16) });
  await assert.rejects(pending, (error: unknown) => {
    assert.ok(error instanceof ConnectionLostError);
    assert.match(error.reason, /protocol error: unknown op 999/);
    return true;
  });
  assert.match(await conn.ended, /unknown op 999/);
  assert.equal(conn.isOpen, false);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection fails when the proxy drops mid-reply", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    const request = (await peer.next())!;
    const reply = encodeReadReply(peer.sessionId, request.header.sequence, new Uint8Array(4096));
    await peer.send(reply.subarray(0, HEADER_SIZE + 100));
    peer.close();
  });
  const conn = await IvbsConnection.open(proxy.address);
  await assert.rejects(
    conn.request(encodeReadRequest(NO_ID, 0, 0, 4096), { target: new Uint8Array(4096) }),
    (error: unknown) =>
      error instanceof ConnectionLostError && /inside READ data/.test(error.reason),
  );
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection reports EOF at a frame boundary as the proxy closing", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    await peer.next();
    peer.close();
  });
  const conn = await IvbsConnection.open(proxy.address);
  await assert.rejects(
    conn.request(encodeReadRequest(NO_ID, 0, 0, 16), { target: new Uint8Array(16) }),
    (error: unknown) => error instanceof ConnectionLostError && /EOF/.test(error.reason),
  );
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection declares a silent proxy dead while a request is pending", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    while (await peer.next()); // reads, never answers
  });
  const conn = await IvbsConnection.open(proxy.address, { deadPeerTimeoutMs: 150 });
  await assert.rejects(
    conn.request(encodeReadRequest(NO_ID, 0, 0, 16), { target: new Uint8Array(16) }),
    (error: unknown) => error instanceof ConnectionLostError && /dead peer/.test(error.reason),
  );
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection sends KEEPALIVE when idle and stays open", async () => {
  const keepalives = Promise.withResolvers<number>();
  let count = 0;
  const proxy = fakeProxy(async (peer) => {
    await peer.greet("idle", 1); // keepalive due after a third of 1 s
    for (let packet = await peer.next(); packet; packet = await peer.next()) {
      if (packet.header.op === Op.KEEPALIVE && ++count === 2) keepalives.resolve(count);
      await peer.reply(packet);
    }
  });
  const conn = await IvbsConnection.open(proxy.address, { deadPeerTimeoutMs: 5_000 });
  assert.equal(await keepalives.promise, 2);
  assert.ok(conn.keepalivesSent >= 2);
  assert.equal(conn.isOpen, true);
  const login = await conn.login("alice", hashPassword("x"));
  assert.equal(login.status, Status.OK);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection declares a proxy dead when it stops answering keepalives", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.greet("mute", 1);
    while (await peer.next()); // swallows keepalives
  });
  const conn = await IvbsConnection.open(proxy.address, { deadPeerTimeoutMs: 200 });
  assert.match(await conn.ended, /dead peer/);
  assert.ok(conn.keepalivesSent >= 1);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection.open fails when no GREETING arrives in time", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.next(); // never greets
  });
  await assert.rejects(
    IvbsConnection.open(proxy.address, { connectTimeoutMs: 150 }),
    (error: unknown) =>
      error instanceof ConnectionLostError && /no GREETING within 150 ms/.test(error.reason),
  );
  await proxy.close();
});

Deno.test("IvbsConnection.open fails when the first packet is not a GREETING", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.send(
      encodeHeader({ sessionId: peer.sessionId, op: Op.READ, dataLen: 0, sequence: 0 }),
    );
    await peer.next();
  });
  await assert.rejects(
    IvbsConnection.open(proxy.address),
    (error: unknown) =>
      error instanceof ConnectionLostError &&
      /expected GREETING first, got READ/.test(error.reason),
  );
  await proxy.close();
});

Deno.test("IvbsConnection.open reports a refused TCP connection", async () => {
  const port = closedPort();
  await assert.rejects(
    IvbsConnection.open({ host: "127.0.0.1", port }),
    (error: unknown) =>
      error instanceof ConnectionLostError && error.proxy === `127.0.0.1:${port}` &&
      /connect failed/.test(error.reason),
  );
});

Deno.test("IvbsConnection ignores a reply for a sequence it never sent", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    const request = (await peer.next())!;
    await peer.send(encodeReadReply(peer.sessionId, 424242, new Uint8Array(32)));
    await peer.send(
      encodeReadReply(peer.sessionId, request.header.sequence, new Uint8Array(16).fill(9)),
    );
    await peer.next();
  });
  const conn = await IvbsConnection.open(proxy.address, { log: silentLog() });
  const target = new Uint8Array(16);
  const reply = await conn.request(encodeReadRequest(NO_ID, 0, 0, 16), { target });
  assert.equal(reply.status, Status.OK);
  assert.deepEqual(target, new Uint8Array(16).fill(9));
  assert.equal(conn.isOpen, true);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection treats a READ reply of the wrong length as a protocol error", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    const request = (await peer.next())!;
    await peer.send(encodeReadReply(peer.sessionId, request.header.sequence, new Uint8Array(8)));
    await peer.next();
  });
  const conn = await IvbsConnection.open(proxy.address);
  await assert.rejects(
    conn.request(encodeReadRequest(NO_ID, 0, 0, 16), { target: new Uint8Array(16) }),
    (error: unknown) =>
      error instanceof ConnectionLostError && /8 bytes, 16 were asked for/.test(error.reason),
  );
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection passes error statuses through without data", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    const request = (await peer.next())!;
    await peer.reply(request, Status.INVALID_REQUEST);
    await peer.next();
  });
  const conn = await IvbsConnection.open(proxy.address);
  const reply = await conn.request(encodeReadRequest(NO_ID, 0, 0, 16), {
    target: new Uint8Array(16),
  });
  assert.equal(reply.status, Status.INVALID_REQUEST);
  assert.equal(reply.payload.length, 0);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection drops an unsent request whose owner gave up", async () => {
  const ops: number[] = [];
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    for (let packet = await peer.next(); packet; packet = await peer.next()) {
      ops.push(packet.header.op);
      await peer.reply(packet);
    }
  });
  const conn = await IvbsConnection.open(proxy.address);
  const owner = { done: true };
  const dropped = conn.request(encodeReadRequest(NO_ID, 0, 0, 16), {
    target: new Uint8Array(16),
    owner,
  });
  await assert.rejects(dropped, /abandoned/);
  await conn.keepalive();
  await conn.close();
  await proxy.close();
  assert.deepEqual(ops, [Op.KEEPALIVE]);
});

Deno.test("IvbsConnection sends a request body after its packet, coalesced with small packets", async () => {
  const received: { op: number; offset?: number; data?: Uint8Array }[] = [];
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    for (let packet = await peer.next(); packet; packet = await peer.next()) {
      if (packet.header.op === Op.WRITE) {
        const { offset, data } = decodeWriteRequest(packet.payload);
        received.push({ op: Op.WRITE, offset, data: data.slice() });
      } else {
        received.push({ op: packet.header.op });
      }
      await peer.reply(packet);
    }
  });
  const conn = await IvbsConnection.open(proxy.address);
  const body = new Uint8Array(200_000);
  for (let i = 0; i < body.length; i++) body[i] = i % 253;
  const prefix = encodeWriteRequest(NO_ID, 0, 12_345, new Uint8Array(0));
  encodeHeader({ sessionId: NO_ID, op: Op.WRITE, dataLen: 8 + body.length, sequence: 0 }, prefix);
  const replies = await Promise.all([
    conn.keepalive(),
    conn.request(prefix, { body }),
    conn.keepalive(),
  ]);
  assert.deepEqual(replies.map((r) => r.status), [Status.OK, Status.OK, Status.OK]);
  assert.deepEqual(received.map((r) => r.op), [Op.KEEPALIVE, Op.WRITE, Op.KEEPALIVE]);
  assert.equal(received[1].offset, 12_345);
  assert.deepEqual(received[1].data, body);
  await conn.close();
  await proxy.close();
});

function silentLog() {
  const nop = () => {};
  return { debug: nop, info: nop, warn: nop, error: nop };
}

// ---- liveness probes (thresholds in tens of ms so each case resolves quickly) ----

const QUICK_PROBES = { silenceMs: 50, slowFactor: 4, slowFloorMs: 50, probeTimeoutMs: 100 };

function probing(onProbe?: (event: "sent" | "answered") => void) {
  return {
    deadPeerTimeoutMs: 60_000, // never the reason here
    liveness: { options: QUICK_PROBES, latencies: new LatencyWindow(), onProbe },
  };
}

Deno.test("IvbsConnection probes a proxy that goes silent with a request waiting, and ends with probe-timeout when the probe goes unanswered", async () => {
  const ops: number[] = [];
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    for (let packet = await peer.next(); packet; packet = await peer.next()) {
      ops.push(packet.header.op); // reads everything, answers nothing
    }
  });
  const probes: string[] = [];
  const conn = await IvbsConnection.open(proxy.address, probing((e) => probes.push(e)));
  await assert.rejects(
    conn.request(encodeReadRequest(NO_ID, 0, 0, 16), { target: new Uint8Array(16) }),
    (error: unknown) =>
      error instanceof ConnectionLostError && /no answer to a liveness probe/.test(error.reason),
  );
  assert.equal(conn.endCause, "probe-timeout");
  assert.deepEqual(probes, ["sent"]);
  await conn.close();
  await proxy.close();
  assert.deepEqual(ops, [Op.READ, Op.KEEPALIVE]);
});

Deno.test("IvbsConnection keeps a proxy that answers its probes while it holds a reply back", async () => {
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    let held: Packet | undefined;
    let answered = 0;
    for (let packet = await peer.next(); packet; packet = await peer.next()) {
      if (packet.header.op === Op.READ) {
        held = packet;
        continue;
      }
      await peer.reply(packet);
      // Three probes answered: silent on the READ for far longer than a probe timeout.
      if (packet.header.op === Op.KEEPALIVE && ++answered === 3 && held) {
        const { length } = decodeReadRequest(held.payload);
        await peer.send(encodeReadReply(peer.sessionId, held.header.sequence, pattern(0, length)));
      }
    }
  });
  const probes: string[] = [];
  const conn = await IvbsConnection.open(proxy.address, probing((e) => probes.push(e)));
  const reply = await conn.request(encodeReadRequest(NO_ID, 0, 0, 64), {
    target: new Uint8Array(64),
  });
  assert.deepEqual(reply.payload, pattern(0, 64));
  assert.equal(conn.isOpen, true);
  assert.deepEqual(probes.slice(0, 6), [
    "sent",
    "answered",
    "sent",
    "answered",
    "sent",
    "answered",
  ]);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection counts bytes still arriving inside a long reply as life, though the probe waits behind it", async () => {
  const length = 64 * 1024;
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    for (let packet = await peer.next(); packet; packet = await peer.next()) {
      if (packet.header.op !== Op.READ) {
        await peer.reply(packet);
        continue;
      }
      // A slow link: the data trickles in over many probe timeouts; the proxy
      // reads nothing meanwhile, so a probe cannot be answered before the end.
      const data = pattern(0, length);
      await peer.send(encodeReadReplyHeader(peer.sessionId, packet.header.sequence, length));
      for (let at = 0; at < length; at += 1024) {
        await peer.send(data.subarray(at, at + 1024));
        // Real time on purpose: the trickle must outlast the connection's probe timeout,
        // and the connection's liveness timers run on the real clock.
        await new Promise((resolve) => setTimeout(resolve, 15));
      }
    }
  });
  const probes: string[] = [];
  const conn = await IvbsConnection.open(proxy.address, probing((e) => probes.push(e)));
  const reply = await conn.request(encodeReadRequest(NO_ID, 0, 0, length), {
    target: new Uint8Array(length),
  });
  assert.deepEqual(reply.payload, pattern(0, length));
  assert.equal(conn.isOpen, true, `ended: ${conn.endReason}`);
  await conn.close();
  await proxy.close();
});
