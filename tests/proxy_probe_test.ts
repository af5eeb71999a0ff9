/**
 * Idle proxy checks (src/daemon/proxy_probe.ts): on the manual clock, every
 * interval each proxy no session uses is checked (connect + GREETING), one
 * check per proxy at a time and a bounded number at once, so the proxy list
 * says reachable or unreachable (with the error) instead of idle. Against the
 * IVBS test server with the real check of the system driver, and inside the
 * daemon, which stops checking when it stops.
 */
import assert from "node:assert/strict";
import { ProxyRegistry } from "../src/daemon/proxy_registry.ts";
import { IdleProxyProber, type ProbeProxy } from "../src/daemon/proxy_probe.ts";
import { createSystemDriver } from "../src/daemon/system_driver.ts";
import { parseConfig } from "../src/daemon/config.ts";
import { Daemon } from "../src/daemon/daemon.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { registerOperatorRoutes } from "../src/http/operator_routes.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { captureLog } from "./support/ivbs_fake_proxy.ts";
import { withServer } from "./support/ivbs_test_server.ts";
import { Hono } from "hono";

const INTERVAL = 30_000;
const A = "10.0.0.1:11417";
const B = "10.0.0.2:11417";

/** A probe whose answers the test gives: each call waits until answered. */
class ScriptedProbe {
  readonly calls: string[] = [];
  readonly #pending = new Map<string, PromiseWithResolvers<{ name: string }>[]>();
  readonly signals: AbortSignal[] = [];

  readonly probe: ProbeProxy = (address, signal) => {
    this.calls.push(address);
    this.signals.push(signal);
    const waiting = Promise.withResolvers<{ name: string }>();
    signal.addEventListener("abort", () => waiting.reject(new Error("aborted")));
    this.#pending.set(address, [...(this.#pending.get(address) ?? []), waiting]);
    return waiting.promise;
  };

  get open(): number {
    return [...this.#pending.values()].reduce((n, list) => n + list.length, 0);
  }

  answer(address: string, result: { name: string } | Error): void {
    const waiting = this.#pending.get(address)?.shift();
    assert.ok(waiting, `no check of ${address} is waiting`);
    if (result instanceof Error) waiting.reject(result);
    else waiting.resolve(result);
  }
}

/** Lets the checks' promise chains run (a macrotask: after every pending microtask). */
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));

const address = (label: string) => {
  const [host, port] = label.split(":");
  return { host, port: Number(port) };
};

function states(registry: ProxyRegistry): Record<string, string> {
  return Object.fromEntries(registry.list().map((p) => [p.address, p.state]));
}

Deno.test("idle proxies are checked every interval and shown reachable or unreachable", async () => {
  const clock = new ManualClock();
  const registry = new ProxyRegistry([address(A), address(B)]);
  const scripted = new ScriptedProbe();
  const log = captureLog();
  const prober = new IdleProxyProber(registry, scripted.probe, {
    clock,
    log,
    intervalMs: INTERVAL,
  });
  prober.start();
  assert.deepEqual(states(registry), { [A]: "idle", [B]: "idle" }, "not checked yet");

  clock.advance(INTERVAL - 1);
  assert.deepEqual(scripted.calls, [], "not before the interval");
  clock.advance(1);
  assert.deepEqual(scripted.calls, [A, B]);
  scripted.answer(A, { name: "proxy-a" });
  scripted.answer(B, new Error("connect failed: Connection refused (os error 111)"));
  await settle();

  const [a, b] = registry.list();
  assert.equal(a.state, "reachable");
  assert.equal(a.name, "proxy-a", "the GREETING's name");
  assert.notEqual(a.checkedAt, null);
  assert.equal(b.state, "unreachable");
  assert.equal(b.lastError, "connect failed: Connection refused (os error 111)");
  assert.equal(b.failures, 0, "a check is not a session's failure");
  assert.deepEqual(log.lines.map((l) => [l.level, l.message]), [
    ["warn", "idle IVBS proxy unreachable"],
  ]);

  // Unreachable again: no new line. Reachable again: one info line.
  clock.advance(INTERVAL);
  scripted.answer(A, { name: "proxy-a" });
  scripted.answer(B, new Error("connect failed: Connection refused (os error 111)"));
  await settle();
  assert.equal(log.lines.length, 1);
  clock.advance(INTERVAL);
  scripted.answer(A, { name: "proxy-a" });
  scripted.answer(B, { name: "proxy-b" });
  await settle();
  assert.deepEqual(states(registry), { [A]: "reachable", [B]: "reachable" });
  assert.deepEqual(log.lines.map((l) => [l.level, l.message]), [
    ["warn", "idle IVBS proxy unreachable"],
    ["info", "idle IVBS proxy reachable again"],
  ]);
  await prober.stop();
});

Deno.test("proxies in use or in backoff are not checked, and a session's news replaces a check", async () => {
  const clock = new ManualClock();
  const registry = new ProxyRegistry([address(A), address(B)], { now: () => clock.now() });
  const scripted = new ScriptedProbe();
  const prober = new IdleProxyProber(registry, scripted.probe, { clock, intervalMs: INTERVAL });
  prober.start();
  clock.advance(INTERVAL / 2);
  registry.connected(A, "proxy-a", "/dev/nbd0");
  registry.failed(B, "EOF");
  clock.advance(INTERVAL / 2);
  assert.deepEqual(scripted.calls, [], "A is in use, B in backoff (for 30 s from its failure)");

  registry.released(A, "/dev/nbd0");
  clock.advance(INTERVAL);
  assert.deepEqual(scripted.calls, [A, B], "A is idle now; B's failure memory (30 s) is over");
  // B fails for a session while its check is under way: the older check is dropped.
  registry.failed(B, "EOF again");
  scripted.answer(A, { name: "proxy-a" });
  scripted.answer(B, { name: "proxy-b" });
  await settle();
  assert.deepEqual(states(registry), { [A]: "reachable", [B]: "backoff" });
  assert.equal(registry.list()[1].lastError, "EOF again");

  // A session on A makes it connected; once released it is idle until checked again.
  registry.connected(A, "proxy-a", "export vm1");
  assert.equal(states(registry)[A], "connected");
  registry.released(A, "export vm1");
  assert.equal(states(registry)[A], "idle");
  assert.equal(registry.list()[0].checkedAt, null);
  await prober.stop();
});

Deno.test("one check per proxy at a time, a bounded number at once, and stop abandons them", async () => {
  const clock = new ManualClock();
  const labels = Array.from({ length: 10 }, (_, i) => `10.0.1.${i}:11417`);
  const registry = new ProxyRegistry(labels.map(address));
  const scripted = new ScriptedProbe();
  const prober = new IdleProxyProber(registry, scripted.probe, {
    clock,
    intervalMs: INTERVAL,
    concurrency: 3,
  });
  prober.start();
  clock.advance(INTERVAL);
  assert.equal(scripted.open, 3, "three at once");
  scripted.answer(labels[0], { name: "" });
  await settle();
  assert.equal(scripted.open, 3, "the next one took the free place");
  assert.deepEqual(scripted.calls, labels.slice(0, 4));

  // A new round while checks hang: the hanging ones are not checked again, and the
  // places stay three for both rounds together.
  clock.advance(INTERVAL);
  assert.equal(scripted.open, 3);
  for (const label of labels.slice(1, 4)) scripted.answer(label, { name: "" });
  await settle();
  assert.equal(scripted.open, 3);
  assert.deepEqual(scripted.calls, [...labels.slice(0, 7)], "each once, in order");
  for (const label of labels.slice(4, 7)) scripted.answer(label, { name: "" });
  await settle();
  assert.deepEqual(scripted.calls, labels, "the first round's last three");
  scripted.answer(labels[7], { name: "" });
  await settle();
  assert.deepEqual(scripted.calls, [...labels, labels[0]], "then what the second round added");

  await prober.stop();
  assert.ok(scripted.signals.every((signal) => signal.aborted), "checks under way abandoned");
  const before = scripted.calls.length;
  clock.advance(10 * INTERVAL);
  assert.equal(scripted.calls.length, before, "no check after stop");
  assert.equal(clock.pending, 0, "no timer left");
});

Deno.test("against the IVBS test server: a stopped proxy is unreachable, a running one reachable", async () => {
  await withServer({}, async (server) => {
    const [one, two] = server.addresses();
    const config = parseConfig(
      JSON.stringify({ ivbs: { proxies: [one, two], connectTimeoutMs: 2_000 } }),
      "test.json",
    ).config;
    const driver = createSystemDriver(config, {
      kind: "ioctl",
      picksDevice: false,
      maxConnections: 1,
      attach: () => Promise.reject(new Error("no kernel in this test")),
      listDevices: () => Promise.resolve([]),
    }, captureLog());
    assert.ok(driver.probeProxy);
    const registry = new ProxyRegistry(config.ivbs.proxies);
    const prober = new IdleProxyProber(registry, driver.probeProxy.bind(driver), {
      clock: new ManualClock(),
    });
    await server.stopProxy(1);
    await prober.check();
    const [first, second] = registry.list();
    assert.equal(first.state, "reachable");
    assert.notEqual(first.name, null, "named by its GREETING");
    assert.equal(second.state, "unreachable");
    assert.match(second.lastError ?? "", /connect failed/);

    // The operator's view: GET /api/proxies.
    const app = new Hono();
    registerOperatorRoutes(app, { proxies: registry, renderLive: () => Promise.resolve("") });
    const listed = await (await app.request("/api/proxies")).json();
    assert.deepEqual(
      listed.proxies.map((p: { state: string }) => p.state),
      ["reachable", "unreachable"],
    );

    await server.startProxy(1);
    await prober.check();
    assert.equal(registry.list()[1].state, "reachable");
    await prober.stop();
  });
});

/** The fake driver with an idle check the test answers. */
class ProbingDriver extends FakeMountDriver {
  readonly scripted = new ScriptedProbe();
  readonly probeProxy = this.scripted.probe;
}

Deno.test("the daemon checks its idle proxies while it runs, and not after shutdown", async () => {
  const clock = new ManualClock();
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-probe-" });
  try {
    const config = parseConfig(
      JSON.stringify({ ivbs: { proxies: [address(A)] }, stateDir }),
      "test.json",
    ).config;
    const driver = new ProbingDriver({ devices: 0, images: {}, users: {} });
    const log = captureLog();
    const daemon = new Daemon({
      config,
      driver,
      log,
      logFor: () => log,
      probes: { clock, intervalMs: INTERVAL },
    });
    clock.advance(INTERVAL);
    assert.deepEqual(driver.scripted.calls, [A]);
    driver.scripted.answer(A, new Error("connect failed: No route to host"));
    await settle();
    assert.equal(daemon.proxies.list()[0].state, "unreachable");
    const [event] = daemon.events.newest(10).filter((e) => e.component === "proxies");
    assert.equal(event.level, "warn", "the change is an event too");
    assert.equal(event.message, "idle IVBS proxy unreachable");

    await daemon.shutdown("test");
    clock.advance(10 * INTERVAL);
    assert.deepEqual(driver.scripted.calls, [A], "no check after shutdown");
  } finally {
    await Deno.remove(stateDir, { recursive: true });
  }
});
