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
import { closedPort, type FakePeer, fakeProxy, type Packet } from "./support/ivbs_fake_proxy.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { EventRecorder, eventually } from "./support/wait.ts";

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

/**
 * A fake proxy that records every packet it reads (`seen`, awaitable) and
 * answers only what `answer` accepts; the connection runs on `clock`.
 */
function recordingProxy(
  answer: (packet: Packet) => boolean,
  greet: (peer: FakePeer) => Promise<void> = (peer) => peer.greet(),
) {
  const seen = new EventRecorder<Packet>();
  const proxy = fakeProxy(async (peer) => {
    await greet(peer);
    for (let packet = await peer.next(); packet; packet = await peer.next()) {
      seen.push(packet);
      if (answer(packet)) await peer.reply(packet);
    }
  });
  return { proxy, seen, clock: new ManualClock() };
}

const isOp = (op: number) => (packet: Packet) => packet.header.op === op;

Deno.test("IvbsConnection declares a silent proxy dead deadPeerTimeoutMs after a request, not before", async () => {
  const { proxy, seen, clock } = recordingProxy(() => false); // reads, never answers
  const conn = await IvbsConnection.open(proxy.address, { deadPeerTimeoutMs: 1_000, clock });
  const read = conn.request(encodeReadRequest(NO_ID, 0, 0, 16), { target: new Uint8Array(16) });
  await seen.waitFor(isOp(Op.READ));
  clock.advance(999);
  assert.equal(conn.isOpen, true, "still within the dead-peer timeout");
  clock.advance(1);
  assert.equal(conn.isOpen, false, "dead at deadPeerTimeoutMs");
  await assert.rejects(
    read,
    (error: unknown) => error instanceof ConnectionLostError && /dead peer/.test(error.reason),
  );
  assert.equal(conn.endCause, "dead-peer");
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection sends a KEEPALIVE every third of the proxy's idle timeout and stays open", async () => {
  const { proxy, seen, clock } = recordingProxy(() => true, (peer) => peer.greet("idle", 3));
  const conn = await IvbsConnection.open(proxy.address, { deadPeerTimeoutMs: 5_000, clock });
  clock.advance(999);
  assert.equal(conn.keepalivesSent, 0, "nothing due before a third of 3 s");
  clock.advance(1);
  assert.equal(conn.keepalivesSent, 1, "due at a third of 3 s");
  await seen.waitFor(isOp(Op.KEEPALIVE));
  // A request's reply arrives after the keepalive's: the connection read that too.
  const login = await conn.login("alice", hashPassword("x"));
  assert.equal(login.status, Status.OK);
  clock.advance(1_000);
  assert.equal(conn.keepalivesSent, 2, "due again a third of 3 s after the last packet sent");
  await seen.waitFor(isOp(Op.KEEPALIVE), 2);
  assert.equal(conn.isOpen, true);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection declares a proxy dead deadPeerTimeoutMs after a keepalive it never answered", async () => {
  const { proxy, seen, clock } = recordingProxy(() => false, (peer) => peer.greet("mute", 3));
  const conn = await IvbsConnection.open(proxy.address, { deadPeerTimeoutMs: 2_000, clock });
  clock.advance(1_000); // a third of 3 s idle: the keepalive
  assert.equal(conn.keepalivesSent, 1);
  await seen.waitFor(isOp(Op.KEEPALIVE));
  clock.advance(1_999);
  assert.equal(conn.isOpen, true, "still within the dead-peer timeout");
  clock.advance(1);
  assert.equal(conn.isOpen, false, "dead at deadPeerTimeoutMs");
  assert.match(await conn.ended, /dead peer/);
  assert.equal(conn.keepalivesSent, 1);
  await conn.close();
  await proxy.close();
});

Deno.test("IvbsConnection.open fails when no GREETING arrives within connectTimeoutMs", async () => {
  const clock = new ManualClock();
  const accepted = Promise.withResolvers<void>();
  const proxy = fakeProxy(async (peer) => {
    accepted.resolve();
    await peer.next(); // never greets
  });
  const opening = IvbsConnection.open(proxy.address, { connectTimeoutMs: 150, clock });
  let settled = false;
  opening.catch(() => {}).finally(() => settled = true); // how it settled is asserted below
  await accepted.promise;
  // The TCP connect's timer, then the GREETING's: wait until open() armed the second.
  await eventually("the wait for GREETING", () => clock.armed >= 2);
  clock.advance(150);
  await eventually("open() gives up", () => settled);
  await assert.rejects(
    opening,
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

// ---- liveness probes ----

const QUICK_PROBES = { silenceMs: 50, slowFactor: 4, slowFloorMs: 50, probeTimeoutMs: 100 };

function probing(onProbe?: (event: "sent" | "answered") => void, clock?: ManualClock) {
  return {
    deadPeerTimeoutMs: 60_000, // never the reason here
    liveness: { options: QUICK_PROBES, latencies: new LatencyWindow(), onProbe },
    clock,
  };
}

Deno.test("IvbsConnection probes a proxy silent for silenceMs with a request waiting, and ends with probe-timeout probeTimeoutMs later", async () => {
  const { proxy, seen, clock } = recordingProxy(() => false); // reads everything, answers nothing
  const probes = new EventRecorder<string>();
  const conn = await IvbsConnection.open(proxy.address, probing(probes.push, clock));
  const read = conn.request(encodeReadRequest(NO_ID, 0, 0, 16), { target: new Uint8Array(16) });
  await seen.waitFor(isOp(Op.READ));
  clock.advance(49);
  assert.deepEqual(probes.all, [], "no probe before silenceMs");
  clock.advance(1);
  assert.deepEqual(probes.all, ["sent"]);
  await seen.waitFor(isOp(Op.KEEPALIVE));
  clock.advance(99);
  assert.equal(conn.isOpen, true, "the probe still has time to be answered");
  clock.advance(1);
  assert.equal(conn.isOpen, false, "dead probeTimeoutMs after the probe");
  await assert.rejects(
    read,
    (error: unknown) =>
      error instanceof ConnectionLostError && /no answer to a liveness probe/.test(error.reason),
  );
  assert.equal(conn.endCause, "probe-timeout");
  assert.deepEqual(probes.all, ["sent"]);
  await conn.close();
  await proxy.close();
  assert.deepEqual(seen.all.map((p) => p.header.op), [Op.READ, Op.KEEPALIVE]);
});

Deno.test("IvbsConnection keeps a proxy that answers its probes while it holds a reply back", async () => {
  const readHeld = Promise.withResolvers<void>();
  const proxy = fakeProxy(async (peer) => {
    await peer.greet();
    let held: Packet | undefined;
    let answered = 0;
    for (let packet = await peer.next(); packet; packet = await peer.next()) {
      if (packet.header.op === Op.READ) {
        held = packet;
        readHeld.resolve();
        continue;
      }
      await peer.reply(packet);
      // Three probes answered: silent on the READ for longer than a probe timeout.
      if (packet.header.op === Op.KEEPALIVE && ++answered === 3 && held) {
        const { length } = decodeReadRequest(held.payload);
        await peer.send(encodeReadReply(peer.sessionId, held.header.sequence, pattern(0, length)));
      }
    }
  });
  const clock = new ManualClock();
  const probes = new EventRecorder<string>();
  const answered = (e: string) => e === "answered";
  const conn = await IvbsConnection.open(proxy.address, probing(probes.push, clock));
  const read = conn.request(encodeReadRequest(NO_ID, 0, 0, 64), { target: new Uint8Array(64) });
  await readHeld.promise;
  for (let round = 1; round <= 3; round++) {
    clock.advance(QUICK_PROBES.silenceMs); // silent again since the last answer: probe
    assert.equal(probes.count((e) => e === "sent"), round);
    await probes.waitFor(answered, round);
    assert.equal(conn.isOpen, true, `probe ${round} answered`);
  }
  const reply = await read;
  assert.deepEqual(reply.payload, pattern(0, 64));
  assert.equal(conn.isOpen, true);
  assert.deepEqual(probes.all, ["sent", "answered", "sent", "answered", "sent", "answered"]);
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
        // Real time on purpose: what counts is bytes the connection's reader took from
        // a real socket between its checks, which a test cannot see to move a clock by.
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
