/**
 * The pieces of the operator's view on their own: the events ring, the proxy
 * registry and its session observer (fake clocks), the graph history and its
 * percentiles, the SVG charts, and the status page with 16 mounts.
 */
import assert from "node:assert/strict";
import { EventLog } from "../src/daemon/events.ts";
import { History, quantileMs } from "../src/daemon/history.ts";
import { ProxyRegistry } from "../src/daemon/proxy_registry.ts";
import { IoStats } from "../src/nbd/stats.ts";
import { sparkline } from "../src/http/sparkline.ts";
import { renderLive } from "../src/http/status_page.ts";
import { fakePageData } from "../bench/rigs/status_page_data.ts";
import type { MountInfo } from "../src/daemon/mount_table.ts";

function recordingLog() {
  const lines: { level: string; message: string; fields?: object }[] = [];
  const at = (level: string) => (message: string, fields?: object) =>
    void lines.push({ level, message, fields });
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}

Deno.test("EventLog keeps the newest `capacity` events, in order, and pages after a cursor", () => {
  const events = new EventLog({ capacity: 3, now: () => Date.UTC(2026, 0, 1) });
  for (let i = 1; i <= 5; i++) events.record("info", "test", `event ${i}`);
  assert.equal(events.size, 3);
  assert.deepEqual(events.since(0).events.map((e) => e.message), ["event 3", "event 4", "event 5"]);
  assert.equal(events.since(0).missed, 2);
  assert.equal(events.since(2).missed, 0);
  assert.deepEqual(events.since(3, 1).events.map((e) => e.seq), [4]);
  assert.deepEqual(events.since(5), { events: [], next: 5, missed: 0 });
  assert.deepEqual(events.newest(2).map((e) => e.seq), [5, 4]);
  assert.equal(events.since(0).events[0].time, "2026-01-01T00:00:00.000Z");
});

Deno.test("a wrapped logger prints every line and records info and up, redacted and JSON-ready", () => {
  const events = new EventLog();
  const base = recordingLog();
  const log = events.wrap(base, "ivbs", { export: "vm1", image: "disk" });
  log.debug("noise", { n: 1 });
  log.warn("IVBS request retried", { password: "pw", error: new Error("boom"), n: 2n });
  assert.deepEqual(base.lines.map((l) => l.message), ["noise", "IVBS request retried"]);
  assert.equal(events.size, 1, "debug is printed only");
  const [event] = events.since().events;
  assert.equal(event.export, "vm1");
  assert.equal(event.component, "ivbs");
  assert.deepEqual(event.fields, { image: "disk", password: "[redacted]", error: "boom", n: "2" });
});

Deno.test("the registry follows a session through a failover: states, counters, one failover line", () => {
  let wall = Date.UTC(2026, 0, 1, 12);
  let mono = 1000;
  const registry = new ProxyRegistry([{ host: "127.0.0.1", port: 1 }], {
    now: () => wall,
    failureMemoryMs: 30_000,
  });
  const log = recordingLog();
  const observer = registry.observe({ device: "/dev/nbd0", image: "disk" }, log, () => mono);
  observer.onEvent({ type: "connected", proxy: "127.0.0.1:1", proxyName: "p1", replayed: 0 });
  observer.onEvent({ type: "proxies-listed", proxies: ["127.0.0.1:1", "127.0.0.2:1"] });
  let [one, two] = registry.list();
  assert.deepEqual([one.state, one.usedBy, one.name, one.origins], [
    "connected",
    ["/dev/nbd0"],
    "p1",
    ["configured", "listed"],
  ]);
  assert.deepEqual([two.address, two.state, two.origins], ["127.0.0.2:1", "idle", ["listed"]]);

  observer.onEvent({
    type: "failover",
    from: "127.0.0.1:1",
    reason: "connection closed by peer",
    cause: "closed",
  });
  mono += 250;
  observer.onEvent({ type: "proxy-failed", proxy: "127.0.0.1:1", reason: "connection refused" });
  observer.onEvent({ type: "connected", proxy: "127.0.0.2:1", proxyName: "p2", replayed: 3 });
  [one, two] = registry.list();
  assert.equal(one.state, "backoff");
  assert.equal(one.backoffUntil, new Date(wall + 30_000).toISOString());
  assert.equal(one.lastError, "connection refused");
  assert.deepEqual([one.failures, one.failoversFrom, one.failoversTo], [2, 1, 0]);
  assert.deepEqual([two.state, two.usedBy, two.failoversTo], ["connected", ["/dev/nbd0"], 1]);
  assert.deepEqual(log.lines, [{
    level: "warn",
    message: "failover",
    fields: {
      from: "127.0.0.1:1",
      to: "127.0.0.2:1",
      toName: "p2",
      cause: "closed",
      reason: "connection closed by peer",
      replayed: 3,
      stallMs: 250,
    },
  }]);

  wall += 30_001;
  assert.equal(registry.list()[0].state, "idle", "the failure memory is over");
  observer.closed();
  assert.deepEqual(registry.list().map((p) => p.usedBy), [[], []]);
});

Deno.test("a failover's cause, when the session gives one, is shown with the reason beside it", () => {
  const registry = new ProxyRegistry([]);
  const log = recordingLog();
  const observer = registry.observe({ export: "vm1", image: "disk" }, log);
  observer.onEvent({ type: "connected", proxy: "a:1", proxyName: "", replayed: 0 });
  observer.onEvent({
    type: "failover",
    from: "a:1",
    reason: "no reply for 15000 ms",
    cause: "dead-peer",
  });
  observer.onEvent({ type: "connected", proxy: "b:1", proxyName: "", replayed: 0 });
  const fields = log.lines[0].fields as Record<string, unknown>;
  assert.equal(fields.cause, "dead-peer");
  assert.equal(fields.reason, "no reply for 15000 ms");
  assert.deepEqual(registry.list().map((p) => p.usedBy), [[], ["export vm1"]]);
});

Deno.test("quantileMs interpolates inside the bucket and answers null without requests", () => {
  const bounds = [1, 2, 5];
  assert.equal(quantileMs(0.5, bounds, [0, 0, 0, 0]), null);
  assert.equal(quantileMs(0.5, bounds, [2, 2, 0, 0]), 1);
  assert.equal(quantileMs(0.75, bounds, [2, 2, 0, 0]), 1.5);
  assert.equal(quantileMs(0.99, bounds, [0, 0, 0, 4]), 5, "overflow answers the last bound");
});

Deno.test("History turns counter deltas into rates and percentiles, and forgets gone series", () => {
  let now = 0;
  const history = new History({ intervalMs: 1000, points: 3, now: () => now });
  const stats = new IoStats();
  const source = () => new Map([["mount:/dev/nbd0", { ...stats, stats }]]);
  history.sample(source());
  assert.deepEqual(history.points("mount:/dev/nbd0"), [], "the first sample is the baseline");
  for (let i = 0; i < 10; i++) stats.observe("read", 1 << 20, 0.8);
  stats.observe("write", 1 << 20, 40);
  now = 2000;
  history.sample(source());
  const [point] = history.points("mount:/dev/nbd0");
  assert.equal(point.readBytesPerSec, 5 << 20);
  assert.equal(point.writeBytesPerSec, 1 << 19);
  assert.equal(point.requests, 11);
  assert.ok(point.p50Ms! > 0.5 && point.p50Ms! <= 1, `p50 ${point.p50Ms}`);
  assert.ok(point.p99Ms! > 25 && point.p99Ms! <= 50, `p99 ${point.p99Ms}`);
  for (let i = 0; i < 5; i++) {
    now += 1000;
    history.sample(source());
  }
  assert.equal(history.points("mount:/dev/nbd0").length, 3, "bounded");
  assert.equal(history.points("mount:/dev/nbd0").at(-1)!.p50Ms, null, "idle: no latency");
  history.sample(new Map());
  assert.deepEqual(history.points("mount:/dev/nbd0"), []);
});

Deno.test("sparkline draws each series as a path, breaks at gaps, escapes its label", () => {
  const svg = sparkline({
    label: `<b>"x"</b>`,
    windowMs: 4000,
    format: String,
    series: [
      { name: "a", color: "#000", values: [[0, 1], [1000, null], [2000, 4], [3000, 2]] },
      { name: "b", color: "#111", values: [] },
    ],
  });
  assert.match(svg, /data-points="3"/);
  assert.match(svg, /<path d="M60 \d+(\.\d)?M180 12L240 \d+(\.\d)?"/);
  assert.ok(!svg.includes("<b>") && svg.includes("&lt;b&gt;&quot;x&quot;"));
  assert.match(svg, />max 4</);
  assert.match(sparkline({ label: "", windowMs: 1, format: String, series: [] }), /collecting/);
});

Deno.test("the status page's live part with 16 mounts has 32 charts with their points, escaped", () => {
  const html = renderLive(fakePageData(16, 72));
  assert.equal(html.match(/<svg /g)?.length, 32);
  assert.equal(html.match(/data-points="144"/g)?.length, 32, "72 points × 2 series per chart");
  assert.ok(html.includes("&lt;script&gt;"), "event text is escaped");
  assert.ok(!html.includes("<script>"));
  assert.ok(html.length < 400_000, `${html.length} bytes`);
});

Deno.test("the status page lists failing items, a missing nbd module and bad proxies first, escaped", () => {
  const data = fakePageData(3, 0);
  const failing = {
    ...data.mounts[2],
    // The reconciler's state (the views' contract), whichever table type carries it.
    state: "failing" as MountInfo["state"],
    reason: "<b>IVBS unreachable</b>",
    nextRetryAt: "2026-01-01T12:00:30.000Z",
    attempts: 3,
  };
  const html = renderLive({
    ...data,
    mounts: [data.mounts[0], data.mounts[1], failing],
    nbd: { module: false, freeDevices: null, reason: "the nbd kernel module is not loaded" },
  });
  const attention = html.slice(0, html.indexOf("<h2>Mounted devices</h2>"));
  assert.match(attention, /^<section id="attention"><h2>Needs attention<\/h2>/);
  assert.ok(
    attention.includes(
      "<li><b>/dev/nbd2</b> vm-2: &lt;b&gt;IVBS unreachable&lt;/b&gt;; next try 12:00:30 (attempt 3)</li>",
    ),
    attention,
  );
  assert.match(attention, /<li><b>Mounts cannot work<\/b>: the nbd kernel module is not loaded/);
  assert.match(attention, /<li><b>proxy 127\.0\.0\.1:11418<\/b> backoff: connection refused<\/li>/);
  const rows = html.slice(html.indexOf('<tbody id="mounts">'), html.indexOf("</tbody>"));
  assert.ok(rows.indexOf("/dev/nbd2") < rows.indexOf("/dev/nbd0"), "the failing mount comes first");
  assert.match(rows, /<span class="state failing">failing<\/span> <span class="why">/);
});

Deno.test("the status page without problems has no attention section; a host problem is one", () => {
  const data = fakePageData(2, 0);
  const calm = renderLive({
    ...data,
    proxies: data.proxies?.filter((p) => p.state === "connected"),
    nbd: { module: true, freeDevices: 3 },
  });
  assert.ok(!calm.includes('id="attention"'));
  const full = renderLive({
    ...data,
    proxies: [],
    nbd: { module: true, freeDevices: 0, reason: "all 4 nbd devices are in use" },
  });
  assert.match(full, /<li><b>Mounts cannot work<\/b>: all 4 nbd devices are in use<\/li>/);
});
