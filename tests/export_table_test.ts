/**
 * The daemon's export table over the fake driver and a real export server on a
 * unix socket in a temp dir: per-client sessions, disconnects, totals, the
 * state directory.
 */
import assert from "node:assert/strict";
import { ExportTable, prepareStateDir } from "../src/daemon/export_table.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { NbdTestClient } from "./support/nbd_test_client.ts";
import { quietLog } from "./support/log.ts";
import { eventually } from "./support/wait.ts";

const REQUEST = { image: "disk", username: "u", password: "p" };

async function fixture() {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-export-table-" });
  const stateDir = `${dir}/state`;
  const driver = new FakeMountDriver({
    devices: 0,
    images: { disk: { size: 1 << 20 } },
    users: { u: "p" },
  });
  const table = new ExportTable(driver, {
    settings: { socket: `${stateDir}/nbd.sock`, items: [] },
    stateDir,
    log: quietLog,
    serverLog: quietLog,
  });
  return {
    dir,
    stateDir,
    driver,
    table,
    cleanup: async () => {
      await table.closeAll();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("each client of an export gets its own session; closeAll disconnects them and removes the socket", async () => {
  const { stateDir, driver, table, cleanup } = await fixture();
  try {
    const info = await table.add({ ...REQUEST, name: "vm1" });
    assert.equal(driver.openCalls, 1, "one probe session at add");
    assert.equal((await Deno.stat(stateDir)).mode! & 0o777, 0o700);
    const a = await NbdTestClient.connect(info.socket, "vm1");
    const b = await NbdTestClient.connect(info.socket, "vm1");
    assert.equal(a.size, 1 << 20);
    await eventually("two clients", () => table.list()[0].clients === 2);
    assert.equal(driver.openCalls, 3, "a session per client");
    const [, first, second] = driver.backends;
    assert.ok(!first.closed && !second.closed);
    first.stats.failovers = 2;
    second.stats.reconnects = 1;
    assert.equal(table.list()[0].failovers, 2, "open sessions count");
    assert.equal(table.list()[0].reconnects, 1);

    b.conn.close();
    await eventually("one client left", () => table.list()[0].clients === 1 && second.closed);
    assert.equal(table.list()[0].reconnects, 1, "a closed session's counters stay in the totals");

    await table.closeAll();
    assert.ok(first.closed, "closeAll closes the client's session");
    assert.equal(await a.conn.read(new Uint8Array(1)), null, "the client sees EOF");
    a.conn.close();
    await assert.rejects(Deno.lstat(info.socket), Deno.errors.NotFound);
    assert.deepEqual(table.list(), []);
    await assert.rejects(table.add({ ...REQUEST, name: "vm2" }), { code: "SHUTTING_DOWN" });
  } finally {
    await cleanup();
  }
});

Deno.test("remove disconnects that export's clients and keeps the others serving", async () => {
  const { driver, table, cleanup } = await fixture();
  try {
    const vm1 = await table.add({ ...REQUEST, name: "vm1" });
    await table.add({ ...REQUEST, name: "vm2" });
    const one = await NbdTestClient.connect(vm1.socket, "vm1");
    const two = await NbdTestClient.connect(vm1.socket, "vm2");
    await eventually("clients", () => table.list().every((e) => e.clients === 1));
    await table.remove("vm1");
    assert.equal(await one.conn.read(new Uint8Array(1)), null, "vm1's client is cut off");
    one.conn.close();
    assert.deepEqual(table.list().map((e) => [e.name, e.clients]), [["vm2", 1]]);
    await assert.rejects(table.remove("vm1"), { code: "UNKNOWN_EXPORT" });
    two.conn.close();
    await eventually("sessions closed", () => driver.backends.every((b) => b.closed));
  } finally {
    await cleanup();
  }
});

Deno.test("closeAll waits for an add in progress, then nothing is left listening", async () => {
  const { driver, table, stateDir, cleanup } = await fixture();
  try {
    const held = Promise.withResolvers<void>();
    driver.openGate = held.promise;
    const adding = table.add({ ...REQUEST, name: "vm1" });
    await eventually("probe started", () => driver.openCalls === 1);
    assert.equal(table.list()[0].state, "adding");
    const closing = table.closeAll();
    held.resolve();
    await assert.rejects(adding, { code: "SHUTTING_DOWN" });
    await closing;
    assert.ok(driver.backends.every((b) => b.closed), "the probe session is closed");
    await assert.rejects(Deno.lstat(`${stateDir}/nbd.sock`), Deno.errors.NotFound);
  } finally {
    await cleanup();
  }
});

Deno.test("prepareStateDir tightens an open directory to 0700 and refuses a symlink", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/open`);
    await Deno.chmod(`${dir}/open`, 0o755);
    const warned: string[] = [];
    await prepareStateDir(`${dir}/open`, { ...quietLog, warn: (m) => warned.push(m) });
    assert.equal((await Deno.stat(`${dir}/open`)).mode! & 0o777, 0o700);
    assert.match(warned[0], /open to others; setting mode 0700/);
    await Deno.symlink(`${dir}/open`, `${dir}/link`);
    await assert.rejects(prepareStateDir(`${dir}/link`, quietLog), /link is a symlink/);
    await Deno.writeTextFile(`${dir}/file`, "");
    await assert.rejects(prepareStateDir(`${dir}/file`, quietLog), /exists|not a directory/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
