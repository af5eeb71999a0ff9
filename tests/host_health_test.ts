/**
 * The host's nbd health: judged from the facts (module, devices, uid, whether
 * the kernel adds devices), read from this host's sysfs, answered by
 * `GET /api/health` as `nbd: {module, freeDevices, reason?}` and said once at
 * start-up by a real `serve` process.
 */
import assert from "node:assert/strict";
import { judgeNbdHealth, type NbdHostFacts, readNbdHealth } from "../src/nbd/host_health.ts";
import { nbdHealthOf } from "../src/daemon/host_health.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { fakeApp } from "./support/fake_app.ts";
import { DaemonProcess, writeConfig } from "../bench/rigs/daemon_harness.ts";

const free = { inUse: false };
const used = { inUse: true };
const base: NbdHostFacts = {
  module: true,
  devices: [free, used],
  kernelAddsDevices: false,
  uid: 0,
};

Deno.test("judgeNbdHealth names the first thing that blocks a mount", () => {
  const cases: [string, NbdHostFacts, { module: boolean; freeDevices: number | null }, RegExp?][] =
    [
      ["healthy", base, { module: true, freeDevices: 1 }],
      [
        "no module",
        { ...base, module: false },
        { module: false, freeDevices: null },
        /modprobe nbd/,
      ],
      [
        "sysfs unreadable",
        { ...base, devices: null, readError: "permission denied" },
        { module: true, freeDevices: null },
        /cannot read the nbd devices: permission denied/,
      ],
      [
        "not root",
        { ...base, uid: 1000 },
        { module: true, freeDevices: 1 },
        /uid 1000.*needs root/,
      ],
      ["uid unknown: not judged", { ...base, uid: null }, { module: true, freeDevices: 1 }],
      [
        "every device in use (ioctl)",
        { ...base, devices: [used, used] },
        { module: true, freeDevices: 0 },
        /all 2 nbd devices are in use/,
      ],
      [
        "every device in use, but netlink adds one",
        { ...base, devices: [used, used], kernelAddsDevices: true },
        { module: true, freeDevices: 0 },
      ],
      [
        "no devices (nbds_max=0), ioctl",
        { ...base, devices: [] },
        { module: true, freeDevices: 0 },
        /has no devices/,
      ],
    ];
  for (const [what, facts, expected, reason] of cases) {
    const health = judgeNbdHealth(facts);
    assert.equal(health.module, expected.module, what);
    assert.equal(health.freeDevices, expected.freeDevices, what);
    if (reason) assert.match(health.reason ?? "", reason, what);
    else assert.equal(health.reason, undefined, what);
  }
});

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test("readNbdHealth reads this host: the module is there exactly when sysfs shows it", async () => {
  const health = await readNbdHealth({ kernelAddsDevices: false });
  const module = await exists("/sys/module/nbd") || await exists("/sys/block/nbd0");
  assert.equal(health.module, module);
  if (!module) {
    assert.equal(health.freeDevices, null);
    assert.match(health.reason ?? "", /nbd kernel module is not loaded/);
  } else {
    assert.equal(typeof health.freeDevices, "number");
  }
});

Deno.test("GET /api/health says when the nbd module is missing, and counts free devices otherwise", async () => {
  const empty = new FakeMountDriver({ devices: 0, images: {}, users: {} });
  const none = fakeApp(empty, { nbdHealth: () => nbdHealthOf(empty) });
  const missing = await (await none.app.request("/api/health")).json();
  assert.equal(missing.status, "ok", "the daemon itself is fine: exports work");
  assert.equal(missing.nbd.module, false);
  assert.equal(missing.nbd.freeDevices, null);
  assert.match(missing.nbd.reason, /nbd kernel module is not loaded/);

  const driver = new FakeMountDriver({
    devices: 4,
    images: { disk: { size: 1 << 20 } },
    users: { alice: "pw" },
  });
  const some = fakeApp(driver, { nbdHealth: () => nbdHealthOf(driver) });
  await some.table.mount({ image: "disk", username: "alice", password: "pw" });
  driver.foreign.add("/dev/nbd3");
  const health = await (await some.app.request("/api/health")).json();
  assert.deepEqual(health.nbd, { module: true, freeDevices: 2 });
  await some.table.closeAll();
});

Deno.test("serve reports the nbd health once at start-up and in /api/health", async () => {
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-health-" });
  const { dir, path } = await writeConfig({ http: { listen: "127.0.0.1:0" }, stateDir });
  try {
    const daemon = await DaemonProcess.start(path);
    const health = await (await fetch(`${daemon.url}/api/health`)).json();
    const ended = await daemon.stop("SIGINT");
    const here = await readNbdHealth({ kernelAddsDevices: false });
    assert.equal(health.nbd.module, here.module);
    const lines = ended.stderr.split("\n").filter((l) => / \[daemon\] nbd/.test(l));
    assert.equal(lines.length, 1, ended.stderr);
    if (health.nbd.reason === undefined) {
      assert.match(lines[0], /INFO {2}\[daemon\] nbd ready for mounts module=true freeDevices=\d+/);
    } else {
      assert.ok(lines[0].includes(`WARN  [daemon] nbd: mounts will fail: ${health.nbd.reason}`));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(stateDir, { recursive: true });
  }
});
