/**
 * Hung-proxy detection: the liveness rules on explicit times, then the session
 * against the IVBS test server: a stalled proxy is abandoned through a probe
 * long before the dead-peer timeout, and a slow or storage-stuck proxy that
 * answers its probes keeps its requests.
 */
import assert from "node:assert/strict";
import {
  DEFAULT_LIVENESS,
  LatencyWindow,
  LivenessMonitor,
  type LivenessOptions,
} from "../src/ivbs/liveness.ts";
import type { IvbsTestServer } from "../src/ivbs/server/mod.ts";
import { IvbsSession, type IvbsSessionEvent } from "../src/ivbs/session.ts";
import { captureLog } from "./support/ivbs_fake_proxy.ts";
import { BlockModel, runWorkload, verifyAll } from "./support/ivbs_workload.ts";
import { USER, withServer } from "./support/ivbs_test_server.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { EventRecorder, eventually } from "./support/wait.ts";

const RULES: LivenessOptions = {
  silenceMs: 500,
  slowFactor: 4,
  slowFloorMs: 500,
  probeTimeoutMs: 750,
};

function monitor(options: Partial<LivenessOptions> = {}, latencies = new LatencyWindow()) {
  return new LivenessMonitor({ ...RULES, ...options }, latencies, 0);
}

// ---- the rules, on explicit times ----

Deno.test("LatencyWindow reports the 99th percentile of its last samples", () => {
  const window = new LatencyWindow(100);
  assert.equal(window.p99(), 0, "empty");
  for (let ms = 1; ms <= 100; ms++) window.record(ms);
  assert.equal(window.p99(), 99);
  // 100 more samples of 1 ms push every older one out of the ring.
  for (let i = 0; i < 100; i++) window.record(1);
  assert.equal(window.p99(), 1);
  assert.equal(window.recorded, 200);
});

Deno.test("LivenessMonitor never probes while no request waits, however long the silence", () => {
  const m = monitor();
  assert.equal(m.check(60_000, undefined), "ok");
});

Deno.test("LivenessMonitor probes after silenceMs with a request waiting, and declares a silent proxy dead probeTimeoutMs later", () => {
  const m = monitor();
  assert.equal(m.check(499, 0), "ok");
  assert.equal(m.check(500, 0), "probe");
  m.keepaliveSent(500);
  assert.equal(m.check(1_249, 0), "ok");
  assert.equal(m.check(1_250, 0), "dead");
});

Deno.test("LivenessMonitor does not count the time its own process was stalled as the proxy's silence", () => {
  const m = monitor();
  assert.equal(m.check(500, 0), "probe");
  m.keepaliveSent(500);
  // The process did not run from 600 to 2 000 ms: the answer may be unread in the socket.
  m.stalled(2_000);
  assert.equal(m.check(2_000, 0), "ok", "a stall is not a dead proxy");
  assert.equal(m.check(2_749, 0), "ok");
  assert.equal(m.check(2_750, 0), "dead", "silent for probeTimeoutMs of our own running time");
});

Deno.test("LivenessMonitor keeps a proxy that answers its probe, and probes it again only after another silence", () => {
  const m = monitor();
  m.keepaliveSent(500);
  m.arrived(520);
  m.keepaliveAnswered(520);
  assert.equal(m.check(1_019, 0), "ok", "slow is not dead: the request keeps waiting");
  assert.equal(m.check(1_020, 0), "probe");
  m.keepaliveSent(1_020);
  m.arrived(1_030);
  m.keepaliveAnswered(1_030);
  assert.equal(m.check(1_500, 0), "ok");
});

Deno.test("LivenessMonitor counts any packet after a probe as a sign of life", () => {
  const m = monitor();
  m.keepaliveSent(500);
  m.arrived(1_200); // a reply to another request (the probe waits behind it)
  assert.equal(m.check(1_949, 0), "ok");
  assert.equal(m.check(1_950, 0), "dead", "silent for probeTimeoutMs after the last packet");
});

Deno.test("LivenessMonitor counts silence from the start of the wait, not from an idle past", () => {
  const m = monitor();
  m.arrived(1_000); // then idle: no request until 10 s
  assert.equal(m.check(10_100, 10_000), "ok");
  assert.equal(m.check(10_500, 10_000), "probe");
});

Deno.test("LivenessMonitor gives an idle keepalive left unanswered probeTimeoutMs once requests wait", () => {
  const m = monitor();
  m.keepaliveSent(1_000); // the idle keepalive; the proxy hangs
  assert.equal(m.check(10_000, 10_000), "ok");
  assert.equal(m.check(10_750, 10_000), "dead");
});

Deno.test("LivenessMonitor probes a request that waits slowFactor x the recent p99 while others are answered", () => {
  const latencies = new LatencyWindow();
  for (let i = 0; i < 100; i++) latencies.record(200);
  const m = monitor({}, latencies);
  assert.equal(m.slowAfterMs(), 800);
  for (let t = 100; t < 800; t += 100) {
    m.arrived(t); // other replies keep arriving: never silent
    assert.equal(m.check(t, 0), "ok", `at ${t} ms`);
  }
  m.arrived(800);
  assert.equal(m.check(800, 0), "probe");
  m.keepaliveSent(800);
  m.arrived(805);
  m.keepaliveAnswered(805);
  assert.equal(m.check(1_000, 0), "ok", "the wait counts again from the answer");
  assert.equal(m.check(1_605, 0), "probe");
});

Deno.test("LivenessMonitor never waits less than slowFloorMs, however fast the proxy was", () => {
  const latencies = new LatencyWindow();
  latencies.record(0.2);
  const m = monitor({ silenceMs: 10_000 }, latencies);
  assert.equal(m.slowAfterMs(), 500);
  m.arrived(499);
  assert.equal(m.check(499, 0), "ok");
  assert.equal(m.check(500, 0), "probe");
});

Deno.test("LivenessMonitor with probeTimeoutMs 0 never probes (dead-peer timeout only)", () => {
  const m = monitor({ probeTimeoutMs: 0 });
  assert.equal(m.check(100_000, 0), "ok");
});

Deno.test("default liveness settings detect a stall in well under 2 s, checks included", () => {
  const m = monitor(DEFAULT_LIVENESS);
  const worst = DEFAULT_LIVENESS.silenceMs + DEFAULT_LIVENESS.probeTimeoutMs + 2 * m.checkEveryMs;
  assert.ok(worst <= 1_500, `worst detection ${worst} ms`);
});

// ---- against the IVBS test server ----

/** A session with every liveness and dead-peer setting at its default. */
async function openDefault(server: IvbsTestServer, clock?: ManualClock) {
  const recorder = new EventRecorder<IvbsSessionEvent>();
  const session = await IvbsSession.open({
    proxies: server.addresses(),
    image: "disk",
    ...USER,
    log: captureLog(),
    onEvent: recorder.push,
    clock,
  });
  return { session, events: recorder.all, recorder };
}

/** How often the connection checks liveness with the default settings (ms). */
const CHECK_MS = new LivenessMonitor(DEFAULT_LIVENESS, new LatencyWindow(), 0).checkEveryMs;

/**
 * Moves `clock` one liveness check at a time, letting the sockets run between
 * checks, until `condition` holds: under load, when the proxy last sent a byte
 * depends on what the socket delivered, so the test waits for the outcome
 * rather than naming its millisecond.
 */
function checkUntil(what: string, clock: ManualClock, condition: () => boolean): Promise<true> {
  return eventually(what, () => condition() || (clock.advance(CHECK_MS), false));
}

function indexInUse(server: IvbsTestServer, session: IvbsSession): number {
  return server.proxies.findIndex((p) => session.proxy === `127.0.0.1:${p.port}`);
}

/** Requests the session completed so far. */
const completed = (session: IvbsSession) => session.stats.reads + session.stats.writes;

Deno.test("IvbsSession abandons a stalled proxy under pipelined load through an unanswered probe, long before the dead-peer timeout, with every block intact", async () => {
  await withServer({ ports: [0, 0] }, async (server) => {
    const clock = new ManualClock();
    const { session, events, recorder } = await openDefault(server, clock);
    const model = new BlockModel(4096, 512, "bytes");
    let faulting = true;
    const fault = (async () => {
      await eventually("200 requests", () => completed(session) >= 200);
      const stalled = indexInUse(server, session);
      server.stallProxy(stalled, true);
      const start = clock.now();
      await checkUntil("a probe", clock, () => session.stats.probesSent >= 1);
      await checkUntil("the failover", clock, () => events.some((e) => e.type === "failover"));
      const detectedAfter = clock.now() - start;
      assert.ok(detectedAfter < 2_000, `stall detected after ${detectedAfter} ms of the clock`);
      await recorder.waitFor((e) => e.type === "failover");
      // Stopped before it resumes, so it cannot apply replayed writes late (README).
      await server.stopProxy(stalled);
      server.stallProxy(stalled, false);
      await eventually("600 requests", () => completed(session) >= 600);
      faulting = false;
    })();
    fault.catch(() => faulting = false); // a failed fault stops the workload; rethrown below
    const result = await runWorkload(session, model, {
      blockSize: 4096,
      blocks: 512,
      ops: 400,
      depth: 32,
      maxBlocksPerOp: 24,
      seed: 1212,
      mode: "bytes",
      keepGoing: () => faulting,
    });
    await fault;
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.mismatches, []);
    assert.deepEqual(await verifyAll(session, model), []);
    const failovers = events.filter((e) => e.type === "failover");
    assert.equal(failovers.length, 1);
    // The dead-peer timeout (15 s) never fired: the probe found the stall.
    assert.equal(failovers[0].type === "failover" && failovers[0].cause, "probe-timeout");
    const stats = session.stats;
    assert.equal(stats.failoverCauses["probe-timeout"], 1);
    assert.equal(stats.failoverCauses["dead-peer"], 0);
    assert.ok(stats.probesSent >= 1);
    assert.equal(events.filter((e) => e.type === "io-timeout").length, 0);
    await session.close();
  });
});

/**
 * Requests the session waits for that are on the wire (sent and not yet in the
 * server's reply delay, or answered and not yet read): 0 or less means the
 * sockets are quiet and only a timer can move things on. (Less: the
 * LIST_PROXIES the session asks after ATTACH waits out a delay too, and the
 * session does not count it in flight.)
 */
function onTheWire(server: IvbsTestServer, session: IvbsSession): number {
  const { inFlight, keepalivesSent, keepalivesAnswered } = session.stats;
  return inFlight + keepalivesSent - keepalivesAnswered - server.stats.delayedReplies;
}

/**
 * Runs `work` with the session and the server's reply delays on one manual
 * clock: each time the sockets are quiet, time jumps to the next timer (a
 * delayed reply falling due or a liveness check), so every reply arrives at
 * exactly its delay however loaded the host is.
 */
async function jumpingTime<T>(
  clock: ManualClock,
  server: IvbsTestServer,
  session: IvbsSession,
  work: () => Promise<T>,
): Promise<T> {
  let done = false;
  const result = work().finally(() => done = true);
  while (!done) {
    await eventually("the sockets to go quiet", () => done || onTheWire(server, session) <= 0);
    const next = clock.nextAt;
    if (!done && next !== undefined) clock.advance(next - clock.now());
  }
  return await result;
}

// Every reply, keepalives included, waits 500-700 ms on the clock: slower than
// silenceMs (so the proxy is probed), and every answer beats probeTimeoutMs.
Deno.test("IvbsSession keeps a slow proxy (500-700 ms per reply, keepalives included) under pipelined load: its probes are answered, 0 failovers", async () => {
  const clock = new ManualClock();
  await withServer({ replyDelayMs: { min: 500, max: 700 }, clock }, async (server) => {
    const { session, events } = await openDefault(server, clock);
    const model = new BlockModel(4096, 512, "bytes");
    const result = await jumpingTime(clock, server, session, () =>
      runWorkload(session, model, {
        blockSize: 4096,
        blocks: 512,
        ops: 160,
        depth: 32,
        maxBlocksPerOp: 8,
        seed: 777,
        mode: "bytes",
      }));
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.mismatches, []);
    assert.deepEqual(
      await jumpingTime(clock, server, session, () => verifyAll(session, model, 512)),
      [],
    );
    assert.deepEqual(events.filter((e) => e.type === "failover"), []);
    const stats = session.stats;
    assert.equal(stats.failovers, 0);
    assert.ok(stats.probesSent >= 1, "replies slower than silenceMs make it probe");
    // A probe sent while the last reads waited is answered once its delay runs out.
    await jumpingTime(clock, server, session, () =>
      eventually("every probe answered", () => {
        const { probesSent, probesAnswered } = session.stats;
        return probesAnswered === probesSent;
      }));
    await session.close();
  });
});

Deno.test("IvbsSession keeps a proxy whose replies stop while it answers probes: 0 failovers, every request completes", async () => {
  await withServer({}, async (server) => {
    const clock = new ManualClock();
    const { session, events } = await openDefault(server, clock);
    const model = new BlockModel(4096, 512, "bytes");
    let faulting = true;
    const fault = (async () => {
      await eventually("100 requests", () => completed(session) >= 100);
      const held = indexInUse(server, session);
      server.holdReplies(held, true);
      // Three answered probes: silent on data for longer than silenceMs + probeTimeoutMs.
      // Time stands still while a probe waits for its answer.
      const start = clock.now();
      for (let probe = 1; probe <= 3; probe++) {
        await checkUntil(`probe ${probe}`, clock, () => session.stats.probesSent >= probe);
        await eventually(`probe ${probe} answered`, () => session.stats.probesAnswered >= probe);
      }
      const silentFor = clock.now() - start;
      const { silenceMs, probeTimeoutMs } = DEFAULT_LIVENESS;
      assert.ok(silentFor > silenceMs + probeTimeoutMs, `silent on data for ${silentFor} ms`);
      server.holdReplies(held, false);
      faulting = false;
    })();
    fault.catch(() => faulting = false); // a failed fault stops the workload; rethrown below
    const result = await runWorkload(session, model, {
      blockSize: 4096,
      blocks: 512,
      ops: 200,
      depth: 32,
      maxBlocksPerOp: 24,
      seed: 4321,
      mode: "bytes",
      keepGoing: () => faulting,
    });
    await fault;
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.mismatches, []);
    assert.deepEqual(await verifyAll(session, model), []);
    assert.deepEqual(events.filter((e) => e.type === "failover"), []);
    const stats = session.stats;
    assert.equal(stats.failovers, 0);
    assert.ok(stats.probesSent >= 3);
    assert.ok(stats.probesAnswered >= 3);
    assert.equal(server.stats.connectionsAccepted, 1);
    await session.close();
  });
});
