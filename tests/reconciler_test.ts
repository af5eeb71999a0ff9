/**
 * The reconciler on a manual clock: items that fail N times then come up,
 * backoff capped and retried forever, one log line per change of state (not
 * per retry), a ready item that is lost is reconciled again, removal during
 * an attempt. Then the daemon's desired state over the fake driver: proxies
 * down at start, API actions refused or accepted, reload.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/daemon/config.ts";
import { Daemon } from "../src/daemon/daemon.ts";
import type { MountBackend, OpenBackendRequest, ReattachRequest } from "../src/daemon/driver.ts";
import {
  FakeAttachment,
  type FakeBackend,
  FakeDriverError,
  FakeMountDriver,
} from "../src/daemon/fake_driver.ts";
import { writeState } from "../src/daemon/state_file.ts";
import { errorCode } from "../src/error_info.ts";
import { Reconciler, type UpItem } from "../src/daemon/reconciler.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { eventually } from "./support/wait.ts";
import { quietLog } from "./support/log.ts";

interface Line {
  level: string;
  message: string;
  fields: Record<string, unknown>;
}

function recordingLog() {
  const lines: Line[] = [];
  const at = (level: string) => (message: string, fields: object = {}) =>
    lines.push({ level, message, fields: fields as Record<string, unknown> });
  return { lines, log: { debug() {}, info: at("info"), warn: at("warn"), error: at("error") } };
}

function codeError(code: string, message = `failed with ${code}`): Error {
  return Object.assign(new Error(message), { code });
}

/** An item that fails with `codes` in order, then comes up; `lose()` breaks it. */
class ScriptedItem {
  readonly kind = "mount";
  readonly origin = "config" as const;
  readonly fields: Record<string, string>;
  ups = 0;
  downs = 0;
  gate: Promise<void> | null = null;
  readonly #script: string[];
  #lose: (why: string) => void = () => {};

  constructor(readonly key: string, codes: string[]) {
    this.#script = [...codes];
    this.fields = { device: "auto", image: key };
  }

  async up(): Promise<UpItem> {
    this.ups++;
    if (this.gate) await this.gate;
    const code = this.#script.shift();
    if (code !== undefined) throw codeError(code);
    return {
      lost: new Promise<string>((resolve) => this.#lose = resolve),
      fields: { device: "/dev/nbd3" },
    };
  }

  down(): Promise<void> {
    this.downs++;
    return Promise.resolve();
  }

  lose(why: string): void {
    this.#lose(why);
  }
}

function scriptedItem(key: string, codes: string[]): ScriptedItem {
  return new ScriptedItem(key, codes);
}

const BACKOFF = { initialMs: 1_000, maxMs: 8_000 };

function fixture(random = () => 1) {
  const clock = new ManualClock();
  const { lines, log } = recordingLog();
  const reconciler = new Reconciler({
    backoff: BACKOFF,
    clock,
    log,
    random,
    wallNow: () => Date.UTC(2026, 0, 1) + clock.now(),
  });
  return { clock, lines, reconciler };
}

/** Lets the attempt started by a timer (or start()) run to its end. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

Deno.test("an item that fails is retried with capped backoff, forever, and logged once per change", async () => {
  const { clock, lines, reconciler } = fixture();
  const codes = ["NO_PROXY", "NO_PROXY", "NO_PROXY", "NO_PROXY", "NO_PROXY", "LOGIN_DENIED"];
  const item = scriptedItem("disk", codes);
  reconciler.add(item);
  assert.equal(reconciler.get("disk")?.status.state, "pending", "nothing is tried before start");
  assert.equal(item.ups, 0);
  reconciler.start();
  await settle();
  let view = reconciler.get("disk")!;
  assert.equal(view.status.state, "failing");
  assert.equal(view.status.reason, "failed with NO_PROXY");
  assert.equal(view.status.attempts, 1);
  // random = 1: the full delay, 1 s for the first round.
  assert.equal(
    view.status.nextRetryAt,
    new Date(Date.UTC(2026, 0, 1) + clock.now() + 1_000).toISOString(),
  );

  // Rounds double up to the cap: 1 s, 2 s, 4 s, 8 s, 8 s.
  for (const delay of [1_000, 2_000, 4_000, 8_000, 8_000]) {
    const before: number = item.ups;
    clock.advance(delay - 1);
    await settle();
    assert.equal(item.ups, before, `not retried before ${delay} ms`);
    clock.advance(1);
    await settle();
    assert.equal(item.ups, before + 1, `retried after ${delay} ms`);
  }
  view = reconciler.get("disk")!;
  assert.equal(view.status.state, "failing");
  assert.equal(view.code, "LOGIN_DENIED", "the reason follows the latest failure");
  assert.equal(view.status.attempts, 6);

  clock.advance(8_000);
  await settle();
  view = reconciler.get("disk")!;
  assert.equal(view.status.state, "ready");
  assert.deepEqual(view.fields, { device: "/dev/nbd3", image: "disk" }, "the device it came up on");
  assert.equal(view.status.reason, undefined);
  assert.equal(view.status.nextRetryAt, undefined);

  // Seven attempts, four lines: attaching, failing (NO_PROXY), failing (LOGIN_DENIED), ready.
  assert.deepEqual(lines.map((l) => [l.level, l.message, l.fields.code]), [
    ["info", "mount attaching", undefined],
    ["warn", "mount failing; retrying with backoff", "NO_PROXY"],
    ["warn", "mount failing; retrying with backoff", "LOGIN_DENIED"],
    ["info", "mount ready", undefined],
  ]);
  assert.equal(lines[3].fields.attempts, 7);
  assert.equal(lines[3].fields.device, "/dev/nbd3");
  assert.equal(clock.pending, 0, "no timer once ready");
  reconciler.stop();
});

Deno.test("the jitter keeps at least half of each round's delay", async () => {
  const { clock, reconciler } = fixture(() => 0);
  const item = scriptedItem("disk", ["NO_PROXY", "NO_PROXY"]);
  reconciler.add(item);
  reconciler.start();
  await settle();
  clock.advance(499);
  await settle();
  assert.equal(item.ups, 1);
  clock.advance(1);
  await settle();
  assert.equal(item.ups, 2, "half of 1 s with no jitter on top");
  reconciler.stop();
  assert.equal(clock.pending, 0, "stop cancels the retry timer");
});

Deno.test("firstPass resolves once every item was tried once, failing or not", async () => {
  const { reconciler } = fixture();
  const good = scriptedItem("good", []);
  const bad = scriptedItem("bad", ["IMAGE_NOT_FOUND"]);
  let release!: () => void;
  good.gate = new Promise((resolve) => release = resolve);
  reconciler.add(good);
  reconciler.add(bad);
  reconciler.start();
  let passed = false;
  const pass = reconciler.firstPass().then(() => passed = true);
  await settle();
  assert.equal(passed, false, "waits for the slow item");
  assert.deepEqual(reconciler.summary(), { ready: 0, waiting: 2, reasons: ["image missing"] });
  release();
  await pass;
  assert.deepEqual(reconciler.summary(), { ready: 1, waiting: 1, reasons: ["image missing"] });
  reconciler.stop();
});

Deno.test("a stop before start ends the first pass: firstPass resolves and nothing is tried", async () => {
  const { clock, reconciler } = fixture();
  const item = scriptedItem("disk", []);
  reconciler.add(item);
  reconciler.stop(); // SIGTERM while serve still takes the previous daemon's devices over
  reconciler.start();
  let passed = false;
  const pass = reconciler.firstPass().then(() => passed = true);
  await settle();
  assert.equal(passed, true, "serve would wait here forever, its daemon already stopped");
  await pass;
  assert.equal(item.ups, 0, "no attempt after the stop");
  assert.equal(clock.pending, 0);
});

Deno.test("a ready item that is lost is reconciled again after the backoff, with one line", async () => {
  const { clock, lines, reconciler } = fixture();
  const item = scriptedItem("disk", []);
  reconciler.add(item);
  reconciler.start();
  await settle();
  assert.equal(reconciler.get("disk")?.status.state, "ready");
  lines.length = 0;

  item.lose("the device was detached without an unmount request");
  await settle();
  const view = reconciler.get("disk")!;
  assert.equal(view.status.state, "failing");
  assert.equal(view.code, "LOST");
  assert.equal(view.status.reason, "the device was detached without an unmount request");
  assert.equal(item.ups, 1);
  clock.advance(1_000);
  await settle();
  assert.equal(item.ups, 2);
  assert.equal(reconciler.get("disk")?.status.state, "ready");
  assert.deepEqual(lines.map((l) => l.message), ["mount lost; reconciling", "mount ready"]);
  reconciler.stop();
});

Deno.test("remove stops the retries, and takes down what an attempt in flight brings up", async () => {
  const { clock, reconciler } = fixture();
  const failing = scriptedItem("failing", ["NO_PROXY"]);
  const slow = scriptedItem("slow", []);
  let release!: () => void;
  slow.gate = new Promise((resolve) => release = resolve);
  reconciler.add(failing);
  reconciler.add(slow);
  reconciler.start();
  await settle();
  assert.equal(await reconciler.remove("failing"), true);
  assert.equal(clock.pending, 0, "its retry timer is gone");
  clock.advance(60_000);
  await settle();
  assert.equal(failing.ups, 1, "never tried again");
  assert.equal(failing.downs, 0, "it was never up");

  const removing = reconciler.remove("slow");
  release();
  assert.equal(await removing, true);
  assert.equal(slow.downs, 1, "came up after it was removed: taken down");
  assert.deepEqual(reconciler.list(), []);
  assert.equal(await reconciler.remove("slow"), false);
  reconciler.stop();
});

Deno.test("retryNow tries a failing item at once", async () => {
  const { reconciler } = fixture();
  const item = scriptedItem("disk", ["LOGIN_DENIED"]);
  reconciler.add(item);
  reconciler.start();
  await settle();
  reconciler.retryNow("disk");
  await settle();
  assert.equal(item.ups, 2);
  assert.equal(reconciler.get("disk")?.status.state, "ready");
  reconciler.stop();
});

// ---- the daemon's desired state over the fake driver ----

/** The fake driver with a switch for "no IVBS proxy answers". */
class SwitchableDriver extends FakeMountDriver {
  ivbsDown = false;
  override openBackend(request: OpenBackendRequest): Promise<MountBackend> {
    if (this.ivbsDown) {
      this.openCalls++;
      return Promise.reject(
        new FakeDriverError(
          "no IVBS proxy reachable (127.0.0.1:1: connection refused)",
          "NO_PROXY",
        ),
      );
    }
    return super.openBackend(request);
  }
}

const USERS = [{ username: "u", password: "p" }];

async function daemonFixture(config: object, options: { ivbsDown?: boolean } = {}) {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-reconcile-" });
  const parse = (value: object) =>
    parseConfig(
      JSON.stringify({
        users: USERS,
        nbd: { devices: 4 },
        stateDir: `${dir}/state`,
        reconcile: { backoff: { initialMs: 1_000, maxMs: 4_000 } },
        ...value,
      }),
      "test.json",
    ).config;
  const driver = new SwitchableDriver({
    devices: 4,
    images: { disk: { size: 8192 }, other: { size: 4096 }, third: { size: 4096 } },
    users: { u: "p" },
  });
  driver.ivbsDown = options.ivbsDown ?? false;
  const clock = new ManualClock();
  const daemon = new Daemon({
    config: parse(config),
    driver,
    log: quietLog,
    logFor: () => quietLog,
    clock,
    random: () => 1,
  });
  const events = (component?: string) =>
    daemon.events.since(0).events.filter((e) => !component || e.component === component);
  return {
    dir,
    driver,
    clock,
    daemon,
    parse,
    events,
    cleanup: async () => {
      await daemon.shutdown("test");
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("a configured mount and export wait for IVBS, then come up; the events say failing and ready once each", async () => {
  const t = await daemonFixture({
    mounts: [{ device: "auto", image: "disk", user: "u" }],
    exports: { items: [{ name: "vm1", image: "disk", user: "u" }] },
  }, { ivbsDown: true });
  try {
    assert.equal(t.daemon.table.list()[0].state, "pending", "listed before the first attempt");
    await t.daemon.reconcile();
    const [mount] = t.daemon.table.list();
    assert.equal(mount.device, "auto");
    assert.equal(mount.state, "failing");
    assert.match(mount.reason!, /no IVBS proxy reachable/);
    assert.equal(mount.attempts, 1);
    assert.ok(Date.parse(mount.nextRetryAt!) > Date.now() - 1_000, "a wall-clock time");
    const [exported] = t.daemon.exports.list();
    assert.deepEqual([exported.name, exported.state, exported.clients], ["vm1", "failing", 0]);
    assert.equal(t.daemon.reconciliation.statusLine(), "0 ready, 2 waiting: IVBS unreachable");

    // Still down: retried, not logged again.
    t.clock.advance(1_000);
    await eventually("second attempts", () => t.driver.openCalls === 4);
    await eventually("attempt over", () => t.daemon.table.list()[0]?.attempts === 2);

    t.driver.ivbsDown = false;
    t.clock.advance(2_000);
    await eventually("both up", () =>
      t.daemon.table.list()[0]?.state === "mounted" &&
      t.daemon.exports.list()[0]?.state === "ready");
    assert.equal(t.daemon.table.list()[0].device, "/dev/nbd0");
    assert.equal(t.daemon.reconciliation.statusLine(), "2 ready");
    const linesOf = (kind: string) =>
      t.events("reconcile").filter((e) => e.message.startsWith(kind)).map((e) => [
        e.level,
        e.message,
        e.device ?? e.export,
      ]);
    assert.deepEqual(linesOf("mount"), [
      ["info", "mount attaching", "auto"],
      ["warn", "mount failing; retrying with backoff", "auto"],
      ["info", "mount ready", "/dev/nbd0"],
    ]);
    assert.deepEqual(linesOf("export"), [
      ["info", "export attaching", "vm1"],
      ["warn", "export failing; retrying with backoff", "vm1"],
      ["info", "export ready", "vm1"],
    ]);
  } finally {
    await t.cleanup();
  }
});

Deno.test("a refused mount, unmount, export add and remove each leave a warn event naming them, never the password", async () => {
  const t = await daemonFixture({});
  try {
    await t.daemon.reconcile();
    await assert.rejects(
      t.daemon.table.mount({ device: "nbd2", image: "disk", username: "u", password: "wrong-pw" }),
      { code: "LOGIN_DENIED" },
    );
    await assert.rejects(
      t.daemon.exports.add({ name: "vm9", image: "gone", username: "u", password: "p" }),
      { code: "IMAGE_NOT_FOUND" },
    );
    await assert.rejects(t.daemon.table.unmount("nbd3"), { code: "NOT_MOUNTED" });
    await assert.rejects(t.daemon.exports.remove("nope"), { code: "UNKNOWN_EXPORT" });
    const warned = t.events().filter((e) => e.level === "warn").map((e) => ({
      message: e.message,
      device: e.device,
      export: e.export,
      image: e.fields.image,
      code: e.fields.code,
    }));
    assert.deepEqual(warned, [
      {
        message: "mount refused",
        device: "nbd2",
        export: undefined,
        image: "disk",
        code: "LOGIN_DENIED",
      },
      {
        message: "export refused",
        device: undefined,
        export: "vm9",
        image: "gone",
        code: "IMAGE_NOT_FOUND",
      },
      {
        message: "unmount refused",
        device: "nbd3",
        export: undefined,
        image: undefined,
        code: "NOT_MOUNTED",
      },
      {
        message: "export removal refused",
        device: undefined,
        export: "nope",
        image: undefined,
        code: "UNKNOWN_EXPORT",
      },
    ]);
    assert.ok(!JSON.stringify(t.events()).includes("wrong-pw"), "no password in any event");
    // Refused on the first try: not desired, not retried.
    assert.deepEqual(t.daemon.table.list(), []);
    assert.deepEqual(t.daemon.exports.list(), []);
    const calls = t.driver.openCalls;
    t.clock.advance(60_000);
    await settle();
    assert.equal(t.driver.openCalls, calls);
  } finally {
    await t.cleanup();
  }
});

Deno.test("an accepted API mount is desired: a device that vanishes is mounted again, an unmount is final", async () => {
  const t = await daemonFixture({});
  try {
    await t.daemon.reconcile();
    const info = await t.daemon.table.mount({ image: "disk", username: "u", password: "p" });
    assert.equal(info.device, "/dev/nbd0");
    t.driver.attached.get("/dev/nbd0")!.vanish();
    await eventually("lost", () => t.daemon.table.list()[0]?.state === "failing");
    const [lost] = t.daemon.table.list();
    assert.equal(lost.reason, "the device was detached without an unmount request");
    t.clock.advance(1_000);
    await eventually("mounted again", () => t.daemon.table.list()[0]?.state === "mounted");
    assert.equal(t.daemon.table.list()[0].device, "/dev/nbd0", "on the device it had");
    assert.deepEqual(
      t.events("reconcile").map((e) => e.message),
      ["mount ready", "mount lost; reconciling", "mount ready"],
    );

    await t.daemon.table.unmount("/dev/nbd0");
    t.clock.advance(60_000);
    await settle();
    assert.deepEqual(t.daemon.table.list(), [], "unmounted on request: not desired any more");
    assert.deepEqual(t.daemon.reconciliation.reconciler.list(), []);
  } finally {
    await t.cleanup();
  }
});

Deno.test("reload brings added items up, takes removed ones down and leaves unchanged ones alone", async () => {
  const t = await daemonFixture({
    mounts: [
      { device: "nbd0", image: "disk", user: "u" },
      { device: "nbd1", image: "other", user: "u" },
    ],
    exports: { items: [{ name: "vm1", image: "disk", user: "u" }] },
  });
  try {
    await t.daemon.reconcile();
    const kept = t.driver.attached.get("/dev/nbd0")!;
    const opened = t.driver.openCalls;
    const result = await t.daemon.reload(() =>
      Promise.resolve(t.parse({
        mounts: [
          { device: "nbd0", image: "disk", user: "u" },
          { device: "nbd2", image: "third", user: "u" },
        ],
        exports: { items: [{ name: "vm1", image: "disk", user: "u" }] },
      }))
    );
    assert.deepEqual(result, {
      added: ["mount /dev/nbd2: third (u)"],
      removed: ["mount /dev/nbd1: other (u)"],
      unchanged: ["mount /dev/nbd0: disk (u)", "export vm1: disk (u)"],
      restartNeeded: [],
    });
    await eventually("nbd2 up", () => t.driver.attached.has("/dev/nbd2"));
    assert.ok(!t.driver.attached.has("/dev/nbd1"), "the removed mount is detached");
    assert.equal(t.driver.attached.get("/dev/nbd0"), kept, "the unchanged mount is not touched");
    assert.equal(kept.detachCalls, 0);
    assert.equal(t.driver.openCalls, opened + 1, "one new session: nbd2's");
    assert.deepEqual(t.daemon.exports.list().map((e) => [e.name, e.state]), [["vm1", "ready"]]);

    // A broken config is refused with its error; nothing changes.
    await assert.rejects(
      t.daemon.reload(() => Promise.resolve(t.parse({ nbd: { blockSize: 100 } }))),
      /blockSize must be 512/,
    );
    const refused = t.events().find((e) => e.message.startsWith("config reload refused"));
    assert.equal(refused?.level, "error");
    assert.deepEqual(t.daemon.table.list().map((m) => m.device), ["/dev/nbd0", "/dev/nbd2"]);
  } finally {
    await t.cleanup();
  }
});

Deno.test("reload retries a failing item at once with the config's new password", async () => {
  const t = await daemonFixture({
    users: [{ username: "u", password: "old" }],
    mounts: [{ device: "nbd1", image: "disk", user: "u" }],
  });
  try {
    await t.daemon.reconcile();
    assert.equal(t.daemon.table.list()[0].state, "failing");
    assert.match(t.daemon.table.list()[0].reason!, /login as u refused/);
    const result = await t.daemon.reload(() =>
      Promise.resolve(t.parse({ mounts: [{ device: "nbd1", image: "disk", user: "u" }] }))
    );
    assert.deepEqual(result.unchanged, ["mount /dev/nbd1: disk (u)"]);
    await eventually("mounted", () => t.daemon.table.list()[0]?.state === "mounted");
  } finally {
    await t.cleanup();
  }
});

Deno.test("the config's reconcile.backoff defaults to 1 s … 30 s and refuses initialMs above maxMs", () => {
  assert.deepEqual(parseConfig("{}", "t.json").config.reconcile, {
    backoff: { initialMs: 1_000, maxMs: 30_000 },
  });
  assert.throws(
    () =>
      parseConfig(JSON.stringify({ reconcile: { backoff: { initialMs: 5, maxMs: 1 } } }), "t.json"),
    /reconcile\.backoff: initialMs must not exceed maxMs/,
  );
});

/** The switchable fake with devices a previous daemon left (netlink-like takeover). */
class TakeoverDriver extends SwitchableDriver {
  readonly kernel = new Map<number, string>();
  reattachCalls = 0;

  reattach(request: ReattachRequest, backends: readonly MountBackend[]) {
    this.reattachCalls++;
    if (this.kernel.get(request.index) !== request.backendId) {
      return Promise.reject(new FakeDriverError("gone", "NO_DEVICE"));
    }
    const device = `/dev/nbd${request.index}`;
    const attachment = new FakeAttachment(device, backends as FakeBackend[], () => {
      this.attached.delete(device);
      this.kernel.delete(request.index);
    });
    this.attached.set(device, attachment);
    return Promise.resolve(attachment);
  }

  isStillAttached(index: number, backendId: string): Promise<boolean> {
    return Promise.resolve(this.kernel.get(index) === backendId);
  }
}

Deno.test("a device the previous daemon left is taken over once IVBS answers, by its configured mount or as the API's", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-takeover-" });
  const record = (index: number, image: string) => ({
    device: `/dev/nbd${index}`,
    index,
    backendId: `ivbsnetd:${index}`,
    image,
    username: "u",
    readOnly: false,
    sizeBytes: 4096,
    options: { blockSize: 4096, timeoutS: 0, deadConnTimeoutS: 120 },
    connections: 1,
  });
  try {
    await writeState(`${dir}/state`, [record(1, "other"), record(2, "third")]);
    const driver = new TakeoverDriver({
      devices: 4,
      images: { other: { size: 4096 }, third: { size: 4096 } },
      users: { u: "p" },
    });
    driver.kernel.set(1, "ivbsnetd:1");
    driver.kernel.set(2, "ivbsnetd:2");
    driver.ivbsDown = true;
    const clock = new ManualClock();
    const config = parseConfig(
      JSON.stringify({
        users: USERS,
        nbd: { devices: 4 },
        stateDir: `${dir}/state`,
        mounts: [{ device: "auto", image: "other", user: "u" }],
      }),
      "t.json",
    ).config;
    const daemon = new Daemon({ config, driver, log: quietLog, logFor: () => quietLog, clock });
    try {
      const restored = await daemon.restore();
      assert.deepEqual(restored.map((o) => errorCode(o.error)), ["NO_PROXY", "NO_PROXY"]);
      await daemon.reconcile();
      assert.deepEqual(
        daemon.table.list().map((m) => [m.device, m.image, m.state]),
        [["auto", "other", "failing"], ["/dev/nbd2", "third", "failing"]],
        "the configured mount waits for nbd1; nbd2 (the API's) is desired on its own",
      );
      driver.ivbsDown = false;
      clock.advance(1_000);
      await eventually(
        "both taken over",
        () => daemon.table.list().filter((m) => m.state === "mounted").length === 2,
      );
      assert.deepEqual(daemon.table.list().map((m) => m.device), ["/dev/nbd1", "/dev/nbd2"]);
      assert.ok(driver.reattachCalls >= 2, "taken over, not mounted afresh");
      assert.deepEqual([...driver.kernel.keys()].sort(), [1, 2], "the same kernel devices");
    } finally {
      await daemon.shutdown("test");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
