/**
 * The daemon's side of surviving a restart, without a kernel: the state file,
 * what the mount table records and releases, and how a new daemon takes the
 * devices over (tests/kernel/restart_test.ts does it with the real kernel).
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/daemon/config.ts";
import { Daemon } from "../src/daemon/daemon.ts";
import { PersistentFakeDriver } from "./support/persistent_fake_driver.ts";
import {
  type MountRecord,
  readState,
  StateFileError,
  statePath,
  writeState,
} from "../src/daemon/state_file.ts";
import { recorder } from "./support/log.ts";

const MIB = 1024 * 1024;

function configFor(stateDir: string, mounts: unknown[] = []) {
  return parseConfig(
    JSON.stringify({
      users: [{ username: "alice", password: "pw" }],
      mounts,
      stateDir,
    }),
    "test.json",
  ).config;
}

const RECORD: MountRecord = {
  device: "/dev/nbd2",
  index: 2,
  backendId: "ivbsnetd:0011223344556677",
  image: "disk",
  username: "alice",
  readOnly: false,
  sizeBytes: 8 * MIB,
  options: { blockSize: 4096, timeoutS: 0, deadConnTimeoutS: 120 },
  connections: 1,
};

Deno.test("the state file round-trips, is 0600, names the user and holds no password", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeState(`${dir}/state`, [RECORD]);
    const text = await Deno.readTextFile(statePath(`${dir}/state`));
    assert.ok(!/password/i.test(text));
    assert.equal((await Deno.stat(statePath(`${dir}/state`))).mode! & 0o777, 0o600);
    const state = await readState(`${dir}/state`);
    assert.equal(state?.pid, Deno.pid);
    assert.deepEqual(state?.mounts, [RECORD]);
    const leftovers = [...Deno.readDirSync(`${dir}/state`)].map((e) => e.name);
    assert.deepEqual(leftovers, ["mounts.json"], "no temp file left behind");
    await writeState(`${dir}/state`, []);
    assert.equal(await readState(`${dir}/state`), null, "no mounts: no file");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a damaged state file is a StateFileError, not a crash", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(statePath(dir), "{not json");
    await assert.rejects(readState(dir), StateFileError);
    await Deno.writeTextFile(statePath(dir), JSON.stringify({ version: 9, mounts: [] }));
    await assert.rejects(readState(dir), StateFileError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("keepDevices shutdown releases persistent devices and a new daemon takes them over", async () => {
  const dir = await Deno.makeTempDir();
  const kernel = new Map<number, string>();
  const mounts = [{ image: "disk", user: "alice" }];
  try {
    const first = new PersistentFakeDriver(kernel);
    const old = new Daemon({ config: configFor(dir, mounts), driver: first, log: recorder() });
    await old.reconcile();
    const [mounted] = old.table.list();
    assert.equal(mounted.device, "/dev/nbd0", "the kernel picked the device");
    assert.deepEqual(
      old.proxies.list().flatMap((p) => p.usedBy),
      ["/dev/nbd0"],
      "the proxy registry names the device the kernel picked, not a placeholder",
    );
    await old.saveState();
    const saved = await readState(dir);
    assert.deepEqual(saved?.mounts.map((m) => [m.device, m.backendId, m.username]), [
      ["/dev/nbd0", "fake:1", "alice"],
    ]);

    await old.shutdown("SIGTERM", { keepDevices: true });
    assert.equal(first.released, 1);
    assert.equal(first.attached.get("/dev/nbd0")?.detachCalls, 0, "released, not detached");
    assert.equal(kernel.get(0), "fake:1", "still attached in the kernel");
    assert.equal((await readState(dir))?.mounts.length, 1, "the state survives");

    const second = new PersistentFakeDriver(kernel);
    const log = recorder();
    const next = new Daemon({ config: configFor(dir, mounts), driver: second, log });
    const restored = await next.restore();
    assert.equal(restored[0].mount?.device, "/dev/nbd0", log.lines.join("\n"));
    assert.deepEqual(second.reattached.map((r) => [r.index, r.backendId]), [[0, "fake:1"]]);
    await next.reconcile();
    assert.deepEqual(
      next.table.list().map((m) => [m.device, m.state]),
      [["/dev/nbd0", "mounted"]],
      "the configured mount claims the device taken over and is not made twice",
    );

    await next.shutdown("SIGINT");
    assert.equal(kernel.size, 0, "detached");
    assert.equal(await readState(dir), null, "nothing left to take over");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore drops devices that are gone with one line each and forgets them", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeState(dir, [RECORD, { ...RECORD, device: "/dev/nbd3", index: 3 }]);
    const driver = new PersistentFakeDriver(new Map());
    const log = recorder();
    const daemon = new Daemon({ config: configFor(dir), driver, log });
    const outcomes = await daemon.restore();
    assert.equal(outcomes.filter((o) => o.error).length, 2);
    const gone = log.lines.filter((l) => l.includes("device of the previous daemon is gone"));
    assert.equal(gone.length, 2);
    assert.deepEqual(driver.reattached, [], "nothing to reattach");
    assert.equal(await readState(dir), null, "the state forgets them");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a device of a user missing from the config is not taken over, and says why", async () => {
  const dir = await Deno.makeTempDir();
  const kernel = new Map([[2, RECORD.backendId]]);
  try {
    await writeState(dir, [{ ...RECORD, username: "bob" }]);
    const log = recorder();
    const daemon = new Daemon({
      config: configFor(dir),
      driver: new PersistentFakeDriver(kernel),
      log,
    });
    const [outcome] = await daemon.restore();
    assert.match(outcome.error?.message ?? "", /user bob not in the config/);
    assert.ok(log.lines.some((l) => l.startsWith("ERROR cannot take over a device")));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("unmount detaches a device an earlier daemon left that nobody took over", async () => {
  const dir = await Deno.makeTempDir();
  const kernel = new Map([[2, RECORD.backendId], [3, "someone-else"]]);
  try {
    const driver = new PersistentFakeDriver(kernel);
    driver.foreign.add("/dev/nbd2").add("/dev/nbd3");
    const daemon = new Daemon({ config: configFor(dir), driver, log: recorder() });
    await daemon.table.unmount("nbd2");
    assert.equal(kernel.has(2), false, "the orphan is detached");
    await assert.rejects(daemon.table.unmount("nbd3"), /not mounted by this daemon/);
    assert.equal(kernel.get(3), "someone-else", "another tool's device is left alone");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a prepared take-over logs in without touching the device; takeOver or abandon ends it", async () => {
  const dir = await Deno.makeTempDir();
  const kernel = new Map([[2, RECORD.backendId], [3, "ivbsnetd:other"]]);
  try {
    const driver = new PersistentFakeDriver(kernel);
    const daemon = new Daemon({ config: configFor(dir), driver, log: recorder() });
    const prepared = await daemon.table.prepareAdopt(RECORD, "pw");
    assert.equal(driver.openCalls, 1, "logged in and attached the image");
    assert.equal(driver.reattached.length, 0, "the kernel is not handed a socket yet");
    assert.deepEqual(daemon.table.list().map((m) => [m.device, m.state]), [
      ["/dev/nbd2", "mounting"],
    ]);
    await assert.rejects(daemon.table.prepareAdopt(RECORD, "pw"), /already mounting/);

    const info = await prepared.takeOver();
    assert.equal(info.state, "mounted");
    assert.deepEqual(driver.reattached.map((r) => r.backendId), [RECORD.backendId]);
    await assert.rejects(prepared.abandon(), /already used/);

    const other = { ...RECORD, device: "/dev/nbd3", index: 3, backendId: "ivbsnetd:other" };
    const dropped = await daemon.table.prepareAdopt(other, "pw");
    await dropped.abandon();
    assert.deepEqual(daemon.table.list().map((m) => m.device), ["/dev/nbd2"], "entry freed");
    assert.equal(driver.reattached.length, 1, "an abandoned take-over never reaches the kernel");
    await assert.rejects(
      daemon.table.prepareAdopt({ ...other, sizeBytes: 4 * MIB }, "pw"),
      /image disk is \d+ bytes, the device 4194304/,
    );
    assert.deepEqual(daemon.table.list().map((m) => m.device), ["/dev/nbd2"]);
    await daemon.shutdown("SIGINT");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("prepareTakeover logs in for every device and export; restore and the exports then only hand over", async () => {
  const dir = await Deno.makeTempDir();
  const kernel = new Map<number, string>();
  const config = parseConfig(
    JSON.stringify({
      users: [{ username: "alice", password: "pw" }],
      mounts: [{ image: "disk", user: "alice" }],
      exports: { items: [{ name: "vm1", image: "disk", user: "alice" }] },
      stateDir: dir,
      credentials: { path: `${dir}/credentials.json` },
    }),
    "test.json",
  ).config;
  try {
    const old = new Daemon({ config, driver: new PersistentFakeDriver(kernel), log: recorder() });
    await old.reconcile();
    await old.saveState();
    await old.shutdown("SIGTERM", { keepDevices: true });

    const driver = new PersistentFakeDriver(kernel);
    const next = new Daemon({ config, driver, log: recorder() });
    const prepared = await next.prepareTakeover();
    assert.equal(prepared.size, 1);
    assert.equal(driver.openCalls, 2, "one session for the device, one probe for the export");
    assert.equal(driver.reattached.length, 0, "nothing handed over yet");

    const [outcome] = await next.restore(prepared);
    assert.equal(outcome.mount?.device, "/dev/nbd0");
    assert.equal(driver.reattached.length, 1);
    await next.reconcile();
    assert.deepEqual(next.exports.list().map((e) => [e.name, e.state]), [["vm1", "ready"]]);
    assert.equal(driver.openCalls, 2, "no second login for either");
    await next.shutdown("SIGINT");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
