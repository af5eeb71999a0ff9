/**
 * The operator's API: GET /api/proxies and GET /api/events (shapes, ordering,
 * bounds, the `since` cursor), per-proxy /metrics, and a failover driven by the
 * IVBS test server's fault injection under an export's load, seen in both.
 */
import assert from "node:assert/strict";
import { createApp } from "../src/http/app.ts";
import { EventLog } from "../src/daemon/events.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { MountTable } from "../src/daemon/mount_table.ts";
import { ExportTable } from "../src/daemon/export_table.ts";
import { ProxyRegistry } from "../src/daemon/proxy_registry.ts";
import { Status } from "../src/ivbs/wire.ts";
import type { DaemonEvent } from "../src/daemon/events.ts";
import type { ProxyInfo } from "../src/daemon/proxy_registry.ts";
import { NbdTestClient } from "./support/nbd_test_client.ts";
import { DaemonProcess, writeConfig } from "../bench/rigs/daemon_harness.ts";
import { operatorFixture, quietLog, USER } from "./support/operator_fixture.ts";
import { eventually } from "./support/wait.ts";
import type { Daemon } from "../src/daemon/daemon.ts";

function appOf(daemon: Daemon) {
  const app = createApp({
    table: daemon.table,
    exports: daemon.exports,
    requestShutdown: () => {},
    startedAt: Date.now(),
    log: quietLog,
    events: daemon.events,
    proxies: daemon.proxies,
    history: daemon.history,
  });
  return async (path: string) => {
    const response = await app.request(path);
    const text = await response.text();
    return { status: response.status, text, json: () => JSON.parse(text) };
  };
}

/** An app over the fake driver with a registry and an events ring of `capacity`. */
function fakeApp(capacity = 10) {
  const driver = new FakeMountDriver({
    devices: 2,
    images: { disk: { size: 1 << 20 } },
    users: { u: "p" },
  });
  const events = new EventLog({ capacity });
  const log = events.wrap(quietLog, "daemon");
  const proxies = new ProxyRegistry([{ host: "127.0.0.1", port: 11417 }, {
    host: "::1",
    port: 11418,
  }]);
  const table = new MountTable(driver, { deviceCount: 2, log });
  const exports = new ExportTable(driver, {
    settings: { socket: "/nonexistent/nbd.sock", items: [] },
    stateDir: "/nonexistent",
    log,
  });
  const app = createApp({
    table,
    exports,
    requestShutdown: () => {},
    startedAt: Date.now(),
    log: quietLog,
    events,
    proxies,
  });
  const get = async (path: string) => {
    const response = await app.request(path);
    const text = await response.text();
    return { status: response.status, text, json: () => JSON.parse(text) };
  };
  return { table, events, get };
}

Deno.test("GET /api/proxies lists the configured proxies, idle, before any session", async () => {
  const { get } = fakeApp();
  const reply = await get("/api/proxies");
  assert.equal(reply.status, 200);
  const { proxies } = reply.json() as { proxies: ProxyInfo[] };
  assert.deepEqual(proxies.map((p) => [p.address, p.state, p.origins]), [
    ["127.0.0.1:11417", "idle", ["configured"]],
    ["[::1]:11418", "idle", ["configured"]],
  ]);
  assert.deepEqual(Object.keys(proxies[0]).sort(), [
    "address",
    "backoffUntil",
    "checkedAt",
    "connects",
    "failoversFrom",
    "failoversTo",
    "failures",
    "lastConnectedAt",
    "lastError",
    "lastErrorAt",
    "name",
    "origins",
    "state",
    "usedBy",
  ]);
});

Deno.test("GET /api/events returns mount and unmount lines in order, after a cursor, within bounds", async () => {
  const { table, get } = fakeApp(4);
  await table.mount({ device: "nbd0", image: "disk", username: "u", password: "p" });
  await table.unmount("nbd0");
  const all = (await get("/api/events")).json() as {
    events: DaemonEvent[];
    next: number;
    missed: number;
    capacity: number;
  };
  assert.deepEqual(all.events.map((e) => [e.seq, e.message, e.device]), [
    [1, "mounting", "/dev/nbd0"],
    [2, "mounted", "/dev/nbd0"],
    [3, "unmounting", "/dev/nbd0"],
    [4, "unmounted", "/dev/nbd0"],
  ]);
  assert.equal(all.next, 4);
  assert.equal(all.capacity, 4);
  assert.equal(all.events[0].fields.user, "u");
  assert.ok(!JSON.stringify(all).includes('"p"'), "no password in events");

  const after = (await get("/api/events?since=2&limit=1")).json();
  assert.deepEqual(after.events.map((e: DaemonEvent) => e.seq), [3]);
  assert.equal(after.next, 3);
  assert.deepEqual((await get("/api/events?since=4")).json().events, []);
  assert.equal((await get("/api/events?since=4")).json().next, 4);

  // The ring keeps the newest `capacity`; a follower that fell behind is told.
  await table.mount({ device: "nbd1", image: "disk", username: "u", password: "p" });
  const behind = (await get("/api/events?since=1")).json();
  assert.deepEqual(behind.events.map((e: DaemonEvent) => e.seq), [3, 4, 5, 6]);
  assert.equal(behind.missed, 1);

  for (const bad of ["since=-1", "since=x", "limit=501", "limit=2x", "other=1"]) {
    assert.equal((await get(`/api/events?${bad}`)).status, 400, bad);
  }
});

Deno.test("a failover injected at the export's proxy shows in /api/events and /api/proxies", async () => {
  const fixture = await operatorFixture();
  const { daemon, server, label } = fixture;
  let client: NbdTestClient | undefined;
  try {
    const get = appOf(daemon);
    const info = await daemon.exports.add({ name: "vm1", image: "disk", ...USER });
    client = await NbdTestClient.connect(info.socket, "vm1");
    await client.write(0, new Uint8Array(4096).fill(3));
    const before = (await get("/api/proxies")).json().proxies as ProxyInfo[];
    const used = before.find((p) => p.usedBy.includes("export vm1"));
    assert.ok(used, `a proxy is used by the export: ${JSON.stringify(before)}`);
    assert.equal(used.state, "connected");
    const from = before.indexOf(used);
    const to = 1 - from;
    assert.equal(used.address, label(from));
    assert.equal(used.name, `proxy-${from}`, "the name comes from the proxy's GREETING");

    server.injectStatus(Status.USE_ANOTHER_PROXY, 1, { proxy: from });
    assert.deepEqual(await client.read(0, 4096), new Uint8Array(4096).fill(3));

    const { events } = (await get("/api/events")).json() as { events: DaemonEvent[] };
    const seqs = events.map((e) => e.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), "oldest first");
    const failover = events.find((e) => e.message === "failover");
    assert.ok(failover, JSON.stringify(events.map((e) => e.message)));
    assert.equal(failover.export, "vm1");
    assert.equal(failover.level, "warn");
    assert.equal(failover.fields.from, label(from));
    assert.equal(failover.fields.to, label(to));
    // The cause: the session's classification when it gives one, else its reason.
    const cause = String(failover.fields.cause);
    assert.ok(
      cause === "status" || cause === "READ answered USE_ANOTHER_PROXY",
      `cause ${cause}`,
    );
    assert.equal(failover.fields.replayed, 1, "the READ was replayed on the new proxy");
    assert.equal(typeof failover.fields.stallMs, "number");
    const connected = events.find((e) => e.message === "NBD export client connected");
    assert.ok(connected && connected.export === "vm1" && connected.seq < failover.seq);

    const after = (await get("/api/proxies")).json().proxies as ProxyInfo[];
    const left = after.find((p) => p.address === label(from))!;
    const reached = after.find((p) => p.address === label(to))!;
    assert.equal(left.state, "backoff");
    assert.ok(Date.parse(left.backoffUntil!) > Date.now());
    assert.match(left.lastError!, /USE_ANOTHER_PROXY/);
    assert.equal(left.failures, 1);
    assert.equal(left.failoversFrom, 1);
    assert.deepEqual(left.usedBy, []);
    assert.equal(reached.state, "connected");
    assert.deepEqual(reached.usedBy, ["export vm1"]);
    assert.equal(reached.failoversTo, 1);
    assert.equal(reached.name, `proxy-${to}`);

    const metrics = (await get("/metrics")).text.split("\n");
    for (
      const line of [
        `ivbsnetd_proxy_state{proxy="${label(from)}",state="backoff"} 1`,
        `ivbsnetd_proxy_failovers_total{proxy="${label(from)}",direction="from"} 1`,
        `ivbsnetd_proxy_failovers_total{proxy="${label(to)}",direction="to"} 1`,
        `ivbsnetd_proxy_sessions{proxy="${label(to)}"} 1`,
        `ivbsnetd_proxy_failures_total{proxy="${label(from)}"} 1`,
      ]
    ) {
      assert.ok(metrics.includes(line), `missing line: ${line}`);
    }

    client.close();
    await eventually(
      "the client's session released its proxy",
      async () =>
        ((await get("/api/proxies")).json().proxies as ProxyInfo[]).every((p) =>
          p.usedBy.length === 0
        ),
    );
    const gone = (await get("/api/events")).json().events as DaemonEvent[];
    assert.ok(gone.some((e) => e.message === "NBD export client disconnected"));
  } finally {
    client?.close();
    await fixture.cleanup();
  }
});

Deno.test("retries and I/O errors returned to the client are events naming the export", async () => {
  const fixture = await operatorFixture();
  const { daemon, server } = fixture;
  let client: NbdTestClient | undefined;
  try {
    const get = appOf(daemon);
    const info = await daemon.exports.add({ name: "vm1", image: "disk", ...USER });
    client = await NbdTestClient.connect(info.socket, "vm1");
    server.injectStatus(Status.TEMPORARY_ERROR, 1);
    await client.read(0, 4096);
    server.injectStatus(Status.PERMANENT_ERROR, 1);
    await assert.rejects(client.read(4096, 4096), /NBD READ 4096\+4096: error/);

    const { events } = (await get("/api/events")).json() as { events: DaemonEvent[] };
    const retried = events.find((e) => e.message === "IVBS request retried");
    assert.ok(retried, JSON.stringify(events.map((e) => e.message)));
    assert.deepEqual(
      [retried.export, retried.component, retried.fields.status, retried.fields.attempt],
      ["vm1", "ivbs", "TEMPORARY_ERROR", 1],
    );
    const failed = events.find((e) => e.message === "NBD request failed");
    assert.ok(failed, JSON.stringify(events.map((e) => e.message)));
    assert.equal(failed.level, "warn");
    assert.equal(failed.export, "vm1");
    assert.equal(failed.fields.offset, 4096);
    assert.match(String(failed.fields.cause), /PERMANENT_ERROR/);
  } finally {
    client?.close();
    await fixture.cleanup();
  }
});

Deno.test("GET /status/live is the page's changing part alone, not cached", async () => {
  const { table, get } = fakeApp();
  await table.mount({ device: "nbd1", image: "disk", username: "u", password: "p" });
  const app = await get("/status/live");
  assert.equal(app.status, 200);
  assert.ok(!app.text.includes("<html"), "a fragment, not a page");
  assert.ok(app.text.includes("<td>/dev/nbd1</td>"));
  assert.ok(app.text.includes('<table id="proxies">'));
  assert.match(app.text, /<td>\/dev\/nbd1<\/td><td>mounted<\/td>/, "the mount in the events list");
  const page = await get("/");
  assert.ok(page.text.includes(`<div id="live">\n${app.text.split('<span id="generated"')[0]}`));
});

Deno.test("a config problem found at start is an event (ivbsnetd serve)", async () => {
  const { dir, path } = await writeConfig({
    http: { listen: "127.0.0.1:0" },
    users: [{ username: "alice", password: "pw-in-a-readable-file" }],
  });
  await Deno.chmod(path, 0o644);
  const daemon = await DaemonProcess.start(path);
  try {
    const { events } = await (await fetch(`${daemon.url}/api/events`)).json();
    const problem = events.find((e: DaemonEvent) => e.component === "config");
    assert.ok(problem, JSON.stringify(events));
    assert.equal(problem.level, "warn");
    assert.match(problem.message, /holds passwords and is readable by group\/others/);
    assert.ok(!JSON.stringify(events).includes("pw-in-a-readable-file"));
  } finally {
    const result = await daemon.stop();
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /WARN {2}\[config\] config .* holds passwords/, "and a log line");
    await Deno.remove(dir, { recursive: true });
  }
});
