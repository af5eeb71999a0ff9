import assert from "node:assert/strict";
import { parseConfig } from "../src/daemon/config.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { Daemon } from "../src/daemon/daemon.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { MountError, MountTable } from "../src/daemon/mount_table.ts";
import { proxiesFor } from "../src/daemon/system_driver.ts";
import { quietLog } from "./support/log.ts";

const REQUEST = { image: "disk", username: "u", password: "p" };

function fixture(devices = 4) {
  const driver = new FakeMountDriver({
    devices,
    images: { disk: { size: 8192 }, other: { size: 4096 } },
    users: { u: "p" },
  });
  let clock = 0;
  const table = new MountTable(driver, {
    deviceCount: devices,
    log: quietLog,
    now: () => clock,
  });
  return { driver, table, advance: (ms: number) => clock += ms };
}

function gate() {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => open = resolve);
  return { promise, open };
}

Deno.test("concurrent auto mounts get different devices", async () => {
  const { table } = fixture();
  const mounts = await Promise.all([1, 2, 3].map(() => table.mount(REQUEST)));
  assert.deepEqual(mounts.map((m) => m.device), ["/dev/nbd0", "/dev/nbd1", "/dev/nbd2"]);
});

Deno.test("a device being mounted shows as mounting and refuses a second mount", async () => {
  const { table, driver } = fixture();
  const held = gate();
  driver.openGate = held.promise;
  const first = table.mount({ ...REQUEST, device: "nbd1" });
  await Promise.resolve();
  await Promise.resolve();
  assert.deepEqual(table.list().map((m) => [m.device, m.state]), [["/dev/nbd1", "mounting"]]);
  await assert.rejects(table.mount({ ...REQUEST, device: "/dev/nbd1" }), { code: "BUSY" });
  await assert.rejects(table.unmount("nbd1"), { code: "BUSY" });
  held.open();
  assert.equal((await first).state, "mounted");
});

Deno.test("closeAll waits for mounts in progress, detaches everything and refuses new mounts", async () => {
  const { table, driver } = fixture();
  await table.mount(REQUEST);
  const held = gate();
  driver.openGate = held.promise;
  const pending = table.mount(REQUEST);
  await Promise.resolve();
  const closing = table.closeAll();
  await assert.rejects(table.mount(REQUEST), { code: "SHUTTING_DOWN" });
  held.open();
  await assert.rejects(pending, { code: "SHUTTING_DOWN" }, "attach is skipped once closing");
  await closing;
  assert.equal(table.size, 0);
  assert.equal(driver.attached.size, 0);
  assert.ok(driver.backends.every((b) => b.closed), "every session closed");
});

Deno.test("a device that goes away on its own leaves the table and closes its session", async () => {
  const { table, driver } = fixture();
  await table.mount({ ...REQUEST, device: "nbd2" });
  driver.attached.get("/dev/nbd2")!.vanish();
  await driver.attached.get("/dev/nbd2")?.done;
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(table.size, 0);
  assert.equal(driver.backends[0].closed, true);
});

Deno.test("a failing detach keeps the mount and says why; closeAll logs and goes on", async () => {
  const { table, driver } = fixture();
  await table.mount(REQUEST);
  await table.mount(REQUEST);
  driver.attached.get("/dev/nbd0")!.failDetach = "NBD_DISCONNECT: EBUSY";
  await assert.rejects(table.unmount("nbd0"), (error: unknown) => {
    assert.ok(error instanceof MountError);
    assert.equal(error.code, "DETACH_FAILED");
    assert.match(error.message, /Cannot detach \/dev\/nbd0: NBD_DISCONNECT: EBUSY/);
    return true;
  });
  assert.equal(table.list()[0].state, "mounted");
  driver.attached.get("/dev/nbd0")!.failDetach = "still busy";
  await table.closeAll();
  assert.equal(driver.attached.has("/dev/nbd1"), false, "the other device was detached");
  assert.equal(driver.attached.has("/dev/nbd0"), true, "the stuck one is reported, not hidden");
});

Deno.test("throughput is averaged over windows of at least a second", async () => {
  const { table, driver, advance } = fixture();
  await table.mount(REQUEST);
  const stats = driver.attached.get("/dev/nbd0")!.stats;
  stats.observe("read", 4096, 1);
  advance(500);
  assert.equal(table.list()[0].throughput.readBytesPerSec, 0, "too early for a sample");
  advance(1500);
  assert.deepEqual(table.list()[0].throughput, { readBytesPerSec: 2048, writeBytesPerSec: 0 });
  stats.observe("write", 1000, 1);
  advance(1000);
  assert.deepEqual(table.list()[0].throughput, { readBytesPerSec: 0, writeBytesPerSec: 1000 });
});

Deno.test("a session without a proxy shows as reconnecting", async () => {
  const { table, driver } = fixture();
  await table.mount(REQUEST);
  driver.backends[0].proxy = null;
  assert.equal(table.list()[0].state, "reconnecting");
  assert.equal(table.list()[0].proxy, null);
});

Deno.test("the daemon mounts configured images, and one failure does not stop the others", async () => {
  const { config } = parseConfig(
    JSON.stringify({
      nbd: { devices: 4 },
      users: [{ username: "u", password: "p" }, { username: "x", password: "wrong" }],
      mounts: [
        { device: "nbd0", image: "disk", user: "u" },
        { device: "nbd1", image: "missing", user: "u" },
        { device: "nbd2", image: "other", user: "x" },
        { image: "other", user: "u" },
      ],
    }),
    "t.json",
  );
  const driver = new FakeMountDriver({
    devices: 4,
    images: { disk: { size: 8192 }, other: { size: 4096 } },
    users: { u: "p" },
  });
  const daemon = new Daemon({ config, driver, log: quietLog, clock: new ManualClock() });
  await daemon.reconcile();
  const rows = daemon.table.list();
  assert.deepEqual(rows.filter((m) => m.state === "mounted").map((m) => m.image).sort(), [
    "disk",
    "other",
  ]);
  // The failing ones are listed with why, and go on being retried.
  assert.deepEqual(
    rows.filter((m) => m.state === "failing").map((m) => [m.device, m.image, m.attempts]),
    [["/dev/nbd1", "missing", 1], ["/dev/nbd2", "other", 1]],
  );
  const order: string[] = [];
  daemon.onStop(() => {
    order.push(`front-end stopped with ${driver.attached.size} attached`);
    return Promise.resolve();
  });
  const first = daemon.shutdown("test");
  assert.equal(daemon.shutdown("again"), first, "shutdown is idempotent");
  await daemon.done;
  assert.deepEqual(order, ["front-end stopped with 2 attached"]);
  assert.equal(driver.attached.size, 0);
});

Deno.test("a mount with 4 connections opens one session per connection and shows each", async () => {
  const { table, driver } = fixture();
  const mount = await table.mount({ ...REQUEST, connections: 4 });
  assert.deepEqual(driver.openedConnections, [0, 1, 2, 3]);
  const attachment = driver.attached.get(mount.device)!;
  assert.equal(attachment.backends.length, 4, "the kernel side got all four sessions");
  attachment.connections[2].observe("write", 4096, 1);
  const [info] = table.list();
  assert.equal(info.connections.length, 4);
  assert.deepEqual(info.connections.map((c) => c.bytesWritten), [0, 0, 4096, 0]);
  assert.ok(info.connections.every((c) => c.proxy === "127.0.0.1:11417"));
  await table.unmount(mount.device);
  assert.ok(driver.backends.every((b) => b.closed), "unmount closes every session");
});

Deno.test("without a per-mount count the table's default applies, bounded by the driver", async () => {
  const driver = new FakeMountDriver({
    devices: 2,
    images: { disk: { size: 8192 } },
    users: { u: "p" },
  });
  const table = new MountTable(driver, { deviceCount: 2, connections: 3, log: quietLog });
  await table.mount(REQUEST);
  assert.deepEqual(driver.openedConnections, [0, 1, 2]);
  const single = new FakeMountDriver({
    devices: 2,
    images: { disk: { size: 8192 } },
    users: { u: "p" },
  });
  Object.defineProperty(single, "maxConnections", { value: 1 }); // as the ioctl path
  const one = new MountTable(single, { deviceCount: 2, connections: 3, log: quietLog });
  const mount = await one.mount({ ...REQUEST, connections: 8 });
  assert.deepEqual(single.openedConnections, [0]);
  assert.equal(mount.connections.length, 1);
});

Deno.test("when one of a mount's sessions cannot open, the others are closed and the mount fails", async () => {
  const { table, driver } = fixture();
  driver.failConnection = 2;
  await assert.rejects(table.mount({ ...REQUEST, connections: 4 }), { code: "NO_PROXY" });
  assert.equal(driver.backends.length, 3);
  assert.ok(driver.backends.every((b) => b.closed), "no session is left open");
  assert.deepEqual(table.list(), []);
  assert.equal(driver.attached.size, 0);
});

Deno.test("connection i starts on proxy i mod count; the rest follow in configured order", () => {
  const p = (port: number) => ({ host: "127.0.0.1", port });
  const proxies = [p(1), p(2), p(3)];
  const firsts = [0, 1, 2, 3].map((i) => proxiesFor(proxies, i).map((a) => a.port));
  assert.deepEqual(firsts, [[1, 2, 3], [2, 1, 3], [3, 1, 2], [1, 2, 3]]);
  assert.deepEqual(proxiesFor([], 3), []);
});

Deno.test("metrics see a mount's sessions as one: counters summed, the first one's proxy", async () => {
  const { table, driver } = fixture();
  await table.mount({ ...REQUEST, connections: 3 });
  driver.backends.forEach((backend, i) => {
    backend.stats.failovers = i;
    backend.stats.bytesWritten = 1000 * (i + 1);
  });
  driver.backends[1].proxy = null;
  const [snapshot] = table.snapshots();
  assert.equal(snapshot.backend?.stats?.failovers, 0 + 1 + 2);
  assert.equal(snapshot.backend?.stats?.bytesWritten, 1000 + 2000 + 3000);
  assert.equal(snapshot.backend?.proxy, "127.0.0.1:11417");
  assert.equal(snapshot.info.state, "reconnecting", "one connection between proxies shows");
  assert.deepEqual(snapshot.info.connections.map((c) => c.proxy), [
    "127.0.0.1:11417",
    null,
    "127.0.0.1:11417",
  ]);
});
