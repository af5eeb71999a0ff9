import assert from "node:assert/strict";
import { BackendError } from "../src/block/backend.ts";
import type { IvbsTestServer } from "../src/ivbs/server/mod.ts";
import {
  IvbsSession,
  type IvbsSessionEvent,
  type IvbsSessionOptions,
} from "../src/ivbs/session.ts";
import { decodeReadRequest, Status } from "../src/ivbs/wire.ts";
import {
  captureLog,
  FAKE_USER,
  fakeProxy,
  type Packet,
  serveWell,
} from "./support/ivbs_fake_proxy.ts";
import { BlockModel, runWorkload, verifyAll } from "./support/ivbs_workload.ts";
import { MiB, USER, withServer } from "./support/ivbs_test_server.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { EventRecorder, eventually } from "./support/wait.ts";

/** Short timeouts so every fault resolves within a fraction of a second. */
const FAST: Partial<IvbsSessionOptions> = {
  deadPeerTimeoutMs: 250,
  connectTimeoutMs: 250,
  backoff: { initialMs: 10, maxMs: 100 },
  failureMemoryMs: 1_000,
};

function open(server: IvbsTestServer, extra: Partial<IvbsSessionOptions> = {}) {
  const recorder = new EventRecorder<IvbsSessionEvent>();
  const log = captureLog();
  const session = IvbsSession.open({
    proxies: server.addresses(),
    image: "disk",
    ...USER,
    log,
    onEvent: recorder.push,
    ...FAST,
    ...extra,
  });
  return { session, events: recorder.all, recorder, log };
}

const isProxyFailed = (event: IvbsSessionEvent) => event.type === "proxy-failed";

function label(server: IvbsTestServer, index: number): string {
  return `127.0.0.1:${server.proxies[index].port}`;
}

function indexInUse(server: IvbsTestServer, session: IvbsSession): number {
  return server.proxies.findIndex((p) => session.proxy === `127.0.0.1:${p.port}`);
}

Deno.test("IvbsSession keeps a connection idle for 3x the proxy's idle timeout usable, by keepalive", async () => {
  // The proxy's idle timeout and the session's keepalives on one manual clock.
  const clock = new ManualClock();
  const idleMs = 3_000;
  await withServer({ idleTimeoutMs: idleMs, clock }, async (server) => {
    const { session: opening } = open(server, { deadPeerTimeoutMs: 2_000, clock });
    const session = await opening;
    await session.write(0, new Uint8Array(4096).fill(7));
    for (let keepalive = 1; keepalive <= 9; keepalive++) {
      clock.advance(idleMs / 3); // idle for a third of the proxy's timeout: a keepalive is due
      assert.equal(session.stats.keepalivesSent, keepalive);
      await eventually(
        `keepalive ${keepalive} answered`,
        () => session.stats.keepalivesAnswered === keepalive,
      );
    }
    assert.deepEqual(await session.read(0, 4096), new Uint8Array(4096).fill(7));
    assert.equal(session.stats.reconnects, 0, "the proxy never closed us");
    assert.equal(session.stats.failovers, 0);
    assert.equal(server.stats.connectionsAccepted, 1);
    assert.equal(server.stats.requests.KEEPALIVE, 9);
    await session.close();
  });
});

for (const status of [Status.USE_ANOTHER_PROXY, Status.EXPIRED]) {
  const name = status === Status.EXPIRED ? "EXPIRED" : "USE_ANOTHER_PROXY";
  Deno.test(`IvbsSession fails over to another proxy on ${name} and replays the request`, async () => {
    await withServer({}, async (server) => {
      const { session: opening, events, log } = open(server);
      const session = await opening;
      await session.write(0, new Uint8Array(512).fill(1));
      server.injectStatus(status, 1, { proxy: 0 });
      assert.deepEqual(await session.read(0, 512), new Uint8Array(512).fill(1));
      assert.equal(session.proxy, label(server, 1));
      assert.equal(session.stats.failovers, 1);
      assert.equal(session.stats.reconnects, 1);
      const failover = events.filter((e) => e.type === "failover");
      assert.deepEqual(failover, [{
        type: "failover",
        from: label(server, 0),
        reason: `READ answered ${name}`,
        cause: "status",
      }]);
      assert.equal(session.stats.failoverCauses.status, 1);
      const logged = log.lines.filter((line) => line.message.includes("failing over"));
      assert.equal(logged.length, 1, "each failover is logged once");
      assert.match(JSON.stringify(logged[0].fields), new RegExp(label(server, 1)));
      await session.close();
    });
  });
}

Deno.test("IvbsSession retries TEMPORARY_ERROR and NOT_READY with backoff on the same proxy", async () => {
  await withServer({}, async (server) => {
    const { session: opening, events } = open(server);
    const session = await opening;
    server.injectStatus(Status.TEMPORARY_ERROR, 2);
    server.injectStatus(Status.NOT_READY, 1);
    await session.write(0, new Uint8Array(512).fill(9));
    assert.deepEqual(await session.read(0, 512), new Uint8Array(512).fill(9));
    assert.equal(session.stats.retries, 3);
    assert.equal(session.stats.failovers, 0);
    assert.deepEqual(
      events.filter((e) => e.type === "retry"),
      [
        { type: "retry", op: "WRITE", status: "TEMPORARY_ERROR", attempt: 1 },
        { type: "retry", op: "WRITE", status: "TEMPORARY_ERROR", attempt: 2 },
        { type: "retry", op: "WRITE", status: "NOT_READY", attempt: 3 },
      ],
    );
    await session.close();
  });
});

Deno.test("IvbsSession gives up with EIO after maxRetries temporary errors", async () => {
  await withServer({}, async (server) => {
    const { session: opening } = open(server, { maxRetries: 2 });
    const session = await opening;
    server.injectStatus(Status.TEMPORARY_ERROR, 3);
    await assert.rejects(session.read(0, 512), (error: unknown) => {
      assert.ok(error instanceof BackendError);
      assert.equal(error.errno, "EIO");
      assert.match(error.message, /still TEMPORARY_ERROR after 2 retries/);
      return true;
    });
    assert.equal((await session.read(0, 512)).length, 512);
    await session.close();
  });
});

Deno.test("IvbsSession logs in again on NOT_LOGGEDIN and retries on the same connection", async () => {
  await withServer({}, async (server) => {
    const { session: opening } = open(server);
    const session = await opening;
    server.injectStatus(Status.NOT_LOGGEDIN, 1);
    assert.equal((await session.read(0, 512)).length, 512);
    assert.equal(server.stats.requests.LOGIN, 2);
    assert.equal(server.stats.connectionsAccepted, 1);
    assert.equal(session.stats.retries, 1);
    await session.close();
  });
});

Deno.test("IvbsSession replays every in-flight request exactly once on the next proxy", async () => {
  const count = 20;
  const seenByA: number[] = [];
  const seenByB: number[] = [];
  const memoryB = new Uint8Array(1 * MiB);
  for (let i = 0; i < memoryB.length; i++) memoryB[i] = i % 251;
  const proxyA = fakeProxy((peer) =>
    serveWell(peer, new Uint8Array(1 * MiB), (request: Packet) => {
      seenByA.push(decodeReadRequest(request.payload).offset);
      if (seenByA.length === count) peer.close(); // drop with everything unanswered
      return true;
    })
  );
  const proxyB = fakeProxy((peer) =>
    serveWell(peer, memoryB, (request: Packet) => {
      seenByB.push(decodeReadRequest(request.payload).offset);
      return false;
    })
  );
  const session = await IvbsSession.open({
    proxies: [proxyA.address, proxyB.address],
    image: "disk",
    ...FAKE_USER,
    log: captureLog(),
    ...FAST,
  });
  const results = await Promise.all(
    Array.from({ length: count }, (_, i) => session.read(i * 1000, 100)),
  );
  results.forEach((data, i) => assert.deepEqual(data, memoryB.slice(i * 1000, i * 1000 + 100)));
  assert.deepEqual(
    [...seenByA].sort((a, b) => a - b),
    Array.from({ length: count }, (_, i) => i * 1000),
  );
  assert.deepEqual(
    [...seenByB].sort((a, b) => a - b),
    Array.from({ length: count }, (_, i) => i * 1000),
  );
  assert.equal(session.stats.failovers, 1);
  assert.equal(session.stats.reconnects, 1);
  await session.close();
  await proxyA.close();
  await proxyB.close();
});

Deno.test("IvbsSession retries a proxy that fails 3 times then succeeds, 4 calls in all", async () => {
  let reads = 0;
  const memory = new Uint8Array(1 * MiB).fill(6);
  const proxy = fakeProxy((peer) =>
    serveWell(peer, memory, async (request: Packet) => {
      if (++reads > 3) return false;
      await peer.reply(request, Status.TEMPORARY_ERROR);
      return true;
    })
  );
  const session = await IvbsSession.open({
    proxies: [proxy.address],
    image: "disk",
    ...FAKE_USER,
    log: captureLog(),
    ...FAST,
  });
  assert.deepEqual(await session.read(0, 64), new Uint8Array(64).fill(6));
  assert.equal(reads, 4);
  assert.equal(session.stats.retries, 3);
  assert.equal(proxy.accepted, 1);
  await session.close();
  await proxy.close();
});

Deno.test("IvbsSession fails over when a proxy sends a bad header mid-session", async () => {
  const memory = new Uint8Array(1 * MiB).fill(8);
  const garbling = fakeProxy((peer) =>
    serveWell(peer, memory, async () => {
      await peer.send(new Uint8Array(48).fill(0xff)); // unknown op, oversized data_len
      return true;
    })
  );
  const good = fakeProxy((peer) => serveWell(peer, memory));
  const events: IvbsSessionEvent[] = [];
  const session = await IvbsSession.open({
    proxies: [garbling.address, good.address],
    image: "disk",
    ...FAKE_USER,
    log: captureLog(),
    onEvent: (event) => events.push(event),
    ...FAST,
  });
  assert.deepEqual(await session.read(100, 10), new Uint8Array(10).fill(8));
  const failover = events.find((e) => e.type === "failover");
  assert.match(failover?.type === "failover" ? failover.reason : "", /protocol error: unknown op/);
  assert.equal(session.proxy, `127.0.0.1:${good.address.port}`);
  await session.close();
  await garbling.close();
  await good.close();
});

Deno.test("IvbsSession backs off instead of looping when its only proxy says USE_ANOTHER_PROXY to everything", async () => {
  const proxy = fakeProxy((peer) =>
    serveWell(peer, new Uint8Array(1 * MiB), async (request: Packet) => {
      await peer.reply(request, Status.USE_ANOTHER_PROXY);
      return true;
    })
  );
  const events: IvbsSessionEvent[] = [];
  const session = await IvbsSession.open({
    proxies: [proxy.address],
    image: "disk",
    ...FAKE_USER,
    log: captureLog(),
    onEvent: (event) => events.push(event),
    ...FAST,
    ioTimeoutMs: 600,
  });
  await assert.rejects(session.read(0, 512), (error: unknown) => {
    assert.ok(error instanceof BackendError);
    assert.equal(error.errno, "EIO");
    return true;
  });
  // A tight loop would reconnect hundreds of times in 600 ms; backoff (10..100 ms) keeps it near ten.
  // Real time on purpose: a tight loop is a rate, and only the real clock shows its cost.
  assert.ok(proxy.accepted < 40, `reconnected ${proxy.accepted} times`);
  assert.ok(events.filter((e) => e.type === "failover").length >= 2);
  await session.close();
  await proxy.close();
});

Deno.test("IvbsSession stops loudly when the image has another size after a failover", async () => {
  const proxyA = fakeProxy((peer) =>
    serveWell(peer, new Uint8Array(1 * MiB), () => {
      peer.close();
      return true;
    })
  );
  const proxyB = fakeProxy((peer) => serveWell(peer, new Uint8Array(2 * MiB)));
  const events: IvbsSessionEvent[] = [];
  const log = captureLog();
  const session = await IvbsSession.open({
    proxies: [proxyA.address, proxyB.address],
    image: "disk",
    ...FAKE_USER,
    log,
    onEvent: (event) => events.push(event),
    ...FAST,
  });
  const expectEio = (error: unknown) => {
    assert.ok(error instanceof BackendError);
    assert.equal(error.errno, "EIO");
    assert.match(error.message, /is 2097152 bytes on proxy 127\.0\.0\.1:\d+, was 1048576 bytes/);
    return true;
  };
  await assert.rejects(session.read(0, 512), expectEio);
  await assert.rejects(session.write(0, new Uint8Array(1)), expectEio);
  assert.match(session.failure ?? "", /was 1048576 bytes/);
  assert.equal(events.at(-1)?.type, "failed");
  assert.ok(log.lines.some((line) => line.level === "error" && line.message.includes("stopped")));
  assert.equal(session.proxy, null);
  await session.close();
  await proxyA.close();
  await proxyB.close();
});

Deno.test("IvbsSession fails over to a proxy it only knows from LIST_PROXIES", async () => {
  await withServer({}, async (server) => {
    const { session: opening, recorder } = open(server, { proxies: [server.addresses()[0]] });
    const session = await opening;
    await recorder.waitFor((e) =>
      e.type === "proxies-listed" && e.proxies.includes(label(server, 1))
    );
    assert.ok(session.knownProxies().includes(label(server, 1)));
    await session.write(0, new Uint8Array(512).fill(4));
    await server.stopProxy(0);
    assert.deepEqual(await session.read(0, 512), new Uint8Array(512).fill(4));
    assert.equal(session.proxy, label(server, 1));
    await session.close();
  });
});

Deno.test("IvbsSession declares a stalled proxy dead after deadPeerTimeoutMs and fails over without an error", async () => {
  await withServer({}, async (server) => {
    const clock = new ManualClock();
    const { session: opening, events } = open(server, { clock });
    const session = await opening;
    server.stallProxy(0, true);
    const writes = Array.from(
      { length: 16 },
      (_, i) => session.write(i * 4096, new Uint8Array(4096).fill(i + 1)),
    );
    await eventually("16 writes sent", () => session.stats.inFlight === 16);
    assert.equal(events.filter((e) => e.type === "failover").length, 0);
    clock.advance(FAST.deadPeerTimeoutMs!); // (the connection tests pin the exact moment)
    await eventually("the failover", () => events.some((e) => e.type === "failover"));
    await Promise.all(writes);
    for (let i = 0; i < 16; i++) {
      assert.deepEqual(await session.read(i * 4096, 4096), new Uint8Array(4096).fill(i + 1));
    }
    assert.equal(session.proxy, label(server, 1));
    const failover = events.find((e) => e.type === "failover");
    assert.match(failover?.type === "failover" ? failover.reason : "", /dead peer/);
    assert.equal(failover?.type === "failover" ? failover.cause : "", "dead-peer");
    server.stallProxy(0, false);
    await session.close();
  });
});

Deno.test("IvbsSession fails pending requests with EIO when every proxy is down past the I/O timeout, then recovers", async () => {
  await withServer({}, async (server) => {
    const clock = new ManualClock();
    const { session: opening, events, recorder } = open(server, { ioTimeoutMs: 400, clock });
    const session = await opening;
    server.stallProxy(0, true);
    const pending = Array.from(
      { length: 5 },
      (_, i) =>
        assert.rejects(session.read(i * 512, 512), (error: unknown) => {
          assert.ok(error instanceof BackendError);
          assert.equal(error.errno, "EIO");
          assert.match(error.message, /not served within 400 ms/);
          return true;
        }),
    );
    await server.stopProxy(1);
    await server.stopProxy(0);
    await recorder.waitFor(isProxyFailed, 2); // every proxy tried: none answers
    clock.advance(400); // the I/O timeout
    await Promise.all(pending);
    assert.equal(events.filter((e) => e.type === "io-timeout").length, 5);
    assert.equal(session.proxy, null);
    await recorder.waitFor(isProxyFailed, 4); // the next round failed too: backing off
    await server.startProxy(1);
    clock.advance(FAST.backoff!.maxMs); // the backoff before the next round
    await session.write(0, new Uint8Array(512).fill(5));
    assert.deepEqual(await session.read(0, 512), new Uint8Array(512).fill(5));
    assert.equal(session.proxy, label(server, 1));
    await session.close();
  });
});

Deno.test("IvbsSession with ioTimeoutMs 0 waits for a proxy to come back instead of failing", async () => {
  await withServer({}, async (server) => {
    const clock = new ManualClock();
    const { session: opening, recorder } = open(server, { ioTimeoutMs: 0, clock });
    const session = await opening;
    await server.stopProxy(1);
    await server.stopProxy(0);
    let settled = false;
    const read = session.read(0, 512).finally(() => settled = true);
    await recorder.waitFor(isProxyFailed, 2); // every proxy tried: none answers
    clock.advance(3_600_000); // an hour
    await recorder.waitFor(isProxyFailed, 4); // still trying, still waiting
    assert.equal(settled, false);
    await server.startProxy(0);
    clock.advance(FAST.backoff!.maxMs); // the backoff before the next round
    assert.equal((await read).length, 512);
    await session.close();
  });
});

Deno.test("IvbsSession keeps every block intact with zero errors while proxies fail, stall and restart", async () => {
  await withServer({
    ports: [0, 0, 0],
    replyDelayMs: { min: 0, max: 2 },
    listProxiesIntervalMs: 200,
    images: [{ name: "disk", size: 2 * MiB }],
  }, async (server) => {
    const { session: opening, events } = open(server, { ioTimeoutMs: 30_000, maxRetries: 100 });
    const session = await opening;
    const model = new BlockModel(4096, 512, "checksums");
    let faulting = true;
    const faults = (async () => {
      const actions: (() => Promise<void>)[] = [
        async () => { // stop the proxy in use, restart it
          const i = Math.max(0, indexInUse(server, session));
          await server.stopProxy(i);
          await eventually(
            "the session left the stopped proxy",
            () => indexInUse(server, session) !== i,
          );
          await server.startProxy(i);
        },
        async () => { // stall the proxy in use past the dead-peer timeout, then restart it
          // Real time on purpose (250 ms): this soak mixes every timer of the session with
          // real socket faults; the dead-peer case on a manual clock is above.
          const i = Math.max(0, indexInUse(server, session));
          server.stallProxy(i, true);
          await eventually(
            "the session left the stalled proxy",
            () => indexInUse(server, session) !== i,
          );
          // Stopped before it resumes: a stalled test proxy would otherwise execute the
          // writes still queued in its socket after we replayed them elsewhere and wrote
          // newer data: IVBS v1 has no fencing, so no client can stop a hung proxy that
          // wakes up from applying old writes late (a known limitation, not a client bug).
          await server.stopProxy(i);
          server.stallProxy(i, false);
          await server.startProxy(i);
        },
        () => Promise.resolve(server.injectStatus(Status.USE_ANOTHER_PROXY, 3)),
        () => Promise.resolve(server.injectStatus(Status.EXPIRED, 3)),
        () => Promise.resolve(server.injectStatus(Status.TEMPORARY_ERROR, 10)),
        async () => { // two proxies down at once, then back
          const i = Math.max(0, indexInUse(server, session));
          const j = (i + 1) % 3;
          await server.stopProxy(i);
          await server.stopProxy(j);
          await eventually(
            "the session left both",
            () => ![i, j].includes(indexInUse(server, session)),
          );
          await server.startProxy(i);
          await server.startProxy(j);
        },
        () => Promise.resolve(server.dropConnections()),
      ];
      for (let round = 0; round < 2; round++) {
        for (const action of actions) {
          await action();
          // The next fault hits a session that is serving again.
          const done = session.stats.reads + session.stats.writes;
          await eventually(
            "50 more requests",
            () => session.stats.reads + session.stats.writes >= done + 50,
          );
        }
      }
      faulting = false;
    })();
    const result = await runWorkload(session, model, {
      blockSize: 4096,
      blocks: 512,
      ops: 3_000,
      depth: 32,
      maxBlocksPerOp: 24, // up to 96 KiB: WRITEs both copied and sent from the caller's buffer
      seed: 4242,
      mode: "checksums",
      keepGoing: () => faulting,
    });
    await faults;
    assert.deepEqual(result.errors, [], "zero errors returned to the caller");
    assert.deepEqual(result.mismatches, []);
    assert.deepEqual(await verifyAll(session, model), []);
    assert.ok(result.reads + result.writes >= 3_000);
    const stats = session.stats;
    assert.ok(stats.failovers >= 6, `failovers: ${stats.failovers}`);
    assert.ok(stats.retries >= 1, `retries: ${stats.retries}`);
    assert.ok(server.stats.injected >= 16);
    assert.equal(events.filter((e) => e.type === "io-timeout").length, 0);
    await session.close();
  });
});
