/**
 * The failover loop alone (src/ivbs/failover.ts): a scripted session host, no
 * sockets, time on a manual clock. Which proxy is tried when, and how often.
 */
import assert from "node:assert/strict";
import type { IvbsConnection } from "../src/ivbs/connection.ts";
import { IvbsMountError } from "../src/ivbs/errors.ts";
import { Failover, type FailoverHost } from "../src/ivbs/failover.ts";
import { proxyLabel } from "../src/ivbs/proxy_list.ts";
import type { IvbsSessionEvent } from "../src/ivbs/session.ts";
import type { ProxyAddress } from "../src/ivbs/wire.ts";
import { captureLog } from "./support/ivbs_fake_proxy.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { EventRecorder } from "./support/wait.ts";

const A = { host: "127.0.0.1", port: 1001 };
const B = { host: "127.0.0.1", port: 1002 };
const BACKOFF = { initialMs: 100, maxMs: 1_000 };

/** The parts of a connection the failover loop reads. */
function connection(address: ProxyAddress): IvbsConnection {
  return { address, label: proxyLabel(address) } as unknown as IvbsConnection;
}

/**
 * A failover over proxies A and B; `answer` decides what opening one gives
 * (undefined: it attaches). Records "try host:port" and "adopt host:port".
 */
function rig(answer: (address: ProxyAddress) => Error | undefined = () => undefined) {
  const clock = new ManualClock();
  const abort = new AbortController();
  const log = new EventRecorder<string>();
  const events = new EventRecorder<IvbsSessionEvent>();
  const host: FailoverHost = {
    image: "disk",
    isClosed: () => abort.signal.aborted,
    isStopped: () => abort.signal.aborted,
    waitingCount: () => 0,
    establish: (address) => {
      log.push(`try ${proxyLabel(address)}`);
      const error = answer(address);
      if (error) return Promise.reject(error);
      return Promise.resolve({
        conn: connection(address),
        reply: { imageName: "disk", size: 4096, readOnly: false },
      });
    },
    reattach: (conn) => {
      log.push(`adopt ${conn.label}`);
      failover.adopted(conn);
    },
    emit: events.push,
  };
  const failover: Failover = new Failover([A, B], host, {
    backoff: BACKOFF,
    failureMemoryMs: 30_000,
    clock,
    signal: abort.signal,
    log: captureLog(),
  });
  const count = (prefix: string) => log.count((line) => line.startsWith(prefix));
  return { clock, abort, log, events, failover, count };
}

/** Lets pending promise callbacks run (no time passes on the manual clock). */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

Deno.test("Failover reconnects at once after a loss, to the other proxy first", async () => {
  const { log, failover, count } = rig();
  failover.lost(connection(A), "closed by proxy", "closed", 3);
  await log.waitFor((line) => line.startsWith("adopt"));
  assert.deepEqual(log.all, ["try 127.0.0.1:1002", "adopt 127.0.0.1:1002"]);
  assert.equal(count("try"), 1);
});

Deno.test("Failover waits for backoff before reconnecting when connections keep failing before serving anything", async () => {
  const { clock, log, failover, count } = rig();
  failover.lost(connection(A), "USE_ANOTHER_PROXY", "status", 1);
  await log.waitFor((line) => line.startsWith("adopt"));
  failover.lost(connection(B), "USE_ANOTHER_PROXY", "status", 1); // served nothing either
  await settle();
  assert.equal(count("try"), 1, "no reconnect while the clock stands still");
  assert.equal(clock.pending, 1, "one backoff timer");
  clock.advance(BACKOFF.initialMs); // round 1: 50..100 ms with jitter
  await log.waitFor((line) => line.startsWith("adopt"), 2);
  assert.equal(count("try"), 2);
});

Deno.test("Failover reconnects at once again after a connection that served", async () => {
  const { log, failover, count } = rig();
  failover.lost(connection(A), "closed", "closed", 0);
  await log.waitFor((line) => line.startsWith("adopt"));
  failover.served();
  failover.lost(connection(B), "closed", "closed", 0);
  await log.waitFor((line) => line.startsWith("adopt"), 2);
  assert.equal(count("try"), 2);
});

Deno.test("Failover backs off between rounds when every proxy fails, then tries them all again", async () => {
  const { clock, events, failover, count } = rig(() => new Error("connection refused"));
  failover.lost(connection(A), "closed", "closed", 2);
  await events.waitFor((e) => e.type === "proxy-failed", 2);
  await settle();
  assert.equal(count("try"), 2, "one round: each proxy once");
  assert.equal(clock.pending, 1);
  clock.advance(BACKOFF.initialMs);
  await events.waitFor((e) => e.type === "proxy-failed", 4);
  assert.equal(count("try"), 4);
  assert.deepEqual(
    events.all.filter((e) => e.type === "proxy-failed").map((e) =>
      e.type === "proxy-failed" && e.reason
    ),
    Array(4).fill("connection refused"),
  );
});

Deno.test("Failover stops at once when the session closes during a backoff", async () => {
  const { clock, abort, events, failover, count } = rig(() => new Error("connection refused"));
  failover.lost(connection(A), "closed", "closed", 0);
  await events.waitFor((e) => e.type === "proxy-failed", 2);
  abort.abort();
  await failover.reconnectDone;
  clock.advance(60_000);
  await settle();
  assert.equal(count("try"), 2);
});

Deno.test("Failover.mount tries each proxy once and names every failure", async () => {
  const { failover, count } = rig((address) => new Error(`refused on ${address.port}`));
  await assert.rejects(failover.mount(), (error: unknown) => {
    assert.ok(error instanceof IvbsMountError);
    assert.equal(error.code, "NO_PROXY");
    assert.match(
      error.message,
      /127\.0\.0\.1:1001: refused on 1001; 127\.0\.0\.1:1002: refused on 1002/,
    );
    return true;
  });
  assert.equal(count("try"), 2);
});

Deno.test("Failover.mount stops at a definitive refusal instead of asking the next proxy", async () => {
  const { failover, count } = rig(() => new IvbsMountError("LOGIN_DENIED", "wrong password"));
  await assert.rejects(failover.mount(), /wrong password/);
  assert.equal(count("try"), 1);
});
