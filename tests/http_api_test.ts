import assert from "node:assert/strict";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { MountTable } from "../src/daemon/mount_table.ts";
import { ExportTable } from "../src/daemon/export_table.ts";
import { createApp, MAX_BODY_BYTES } from "../src/http/app.ts";
import { logger } from "../src/log.ts";
import { quietLog } from "./support/log.ts";

const TOKEN = "s3cret-token-for-tests";
const PASSWORD = "pw-alice-42";

/** Where export sockets would go; nothing is created there unless a test adds an export. */
const UNUSED_STATE_DIR = "/nonexistent/ivbsnetd-http-test";

function setup(options: { token?: string; devices?: number; stateDir?: string } = {}) {
  const driver = new FakeMountDriver({
    devices: options.devices ?? 4,
    images: {
      disk: { size: 1 << 20 },
      ro: { size: 4096, readOnly: true },
      "<b>evil</b>": { size: 512 },
    },
    users: { alice: PASSWORD },
  });
  const table = new MountTable(driver, { deviceCount: 8, log: quietLog });
  const stateDir = options.stateDir ?? UNUSED_STATE_DIR;
  const exports = new ExportTable(driver, {
    settings: { socket: `${stateDir}/nbd.sock`, items: [] },
    stateDir,
    log: quietLog,
    serverLog: quietLog,
  });
  const shutdowns: string[] = [];
  const app = createApp({
    table,
    exports,
    token: options.token,
    requestShutdown: (reason, options) =>
      shutdowns.push(options?.keepDevices ? `${reason} (keep devices)` : reason),
    startedAt: Date.now(),
    log: quietLog,
  });
  const call = async (method: string, path: string, body?: unknown, headers: HeadersInit = {}) => {
    const init: RequestInit = { method, headers };
    if (body !== undefined) {
      init.body = typeof body === "string" ? body : JSON.stringify(body);
      init.headers = { "content-type": "application/json", ...headers };
    }
    const response = await app.request(path, init);
    const text = await response.text();
    let json: Record<string, unknown> | undefined;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: response.status, text, json, headers: response.headers };
  };
  return { driver, table, exports, app, shutdowns, call };
}

/** Logs of code under test go nowhere unless a test wants to look at them. */

const MOUNT = { image: "disk", username: "alice", password: PASSWORD };
const EXPORT = { image: "disk", username: "alice", password: PASSWORD };

Deno.test("GET /api/health answers ok with version and counts", async () => {
  const { call } = setup();
  const { status, json } = await call("GET", "/api/health");
  assert.equal(status, 200);
  assert.equal(json?.status, "ok");
  assert.equal(json?.mounts, 0);
  assert.equal(json?.tokenRequired, false);
});

Deno.test("GET /api/devices lists free, mounted and foreign devices", async () => {
  const { call, driver } = setup();
  driver.foreign.add("/dev/nbd3");
  assert.equal((await call("POST", "/api/mounts", { ...MOUNT, device: "nbd1" })).status, 201);
  const { status, json } = await call("GET", "/api/devices");
  assert.equal(status, 200);
  const devices = json?.devices as { device: string; state: string; image: string | null }[];
  assert.deepEqual(devices.map((d) => [d.device, d.state, d.image]), [
    ["/dev/nbd0", "free", null],
    ["/dev/nbd1", "mounted", "disk"],
    ["/dev/nbd2", "free", null],
    ["/dev/nbd3", "foreign", null],
  ]);
});

Deno.test("POST /api/mounts without device takes the first free one and answers 201", async () => {
  const { call, driver } = setup();
  driver.foreign.add("/dev/nbd0");
  const { status, json, text, headers } = await call("POST", "/api/mounts", MOUNT);
  assert.equal(status, 201);
  assert.equal(json?.device, "/dev/nbd1");
  assert.equal(json?.image, "disk");
  assert.equal(json?.sizeBytes, 1 << 20);
  assert.equal(json?.state, "mounted");
  assert.equal(json?.readOnly, false);
  assert.equal(json?.proxy, "127.0.0.1:11417");
  assert.equal(headers.get("location"), "/api/mounts/nbd1");
  assert.ok(!text.includes(PASSWORD), "the password is never echoed");
});

Deno.test("POST /api/mounts accepts nbdN and /dev/nbdN and honours readOnly", async () => {
  const { call } = setup();
  const a = await call("POST", "/api/mounts", { ...MOUNT, device: "nbd2", readOnly: true });
  assert.equal(a.status, 201);
  assert.equal(a.json?.device, "/dev/nbd2");
  assert.equal(a.json?.readOnly, true);
  const b = await call("POST", "/api/mounts", { ...MOUNT, device: "/dev/nbd3" });
  assert.equal(b.json?.device, "/dev/nbd3");
  const ro = await call("POST", "/api/mounts", { ...MOUNT, image: "ro", device: "auto" });
  assert.equal(ro.json?.readOnly, true, "an image read-only on the IVBS side mounts read-only");
});

Deno.test("POST /api/mounts takes connections 1..16 and shows each connection", async () => {
  const { call, driver } = setup();
  const made = await call("POST", "/api/mounts", { ...MOUNT, connections: 4 });
  assert.equal(made.status, 201);
  assert.deepEqual(driver.openedConnections, [0, 1, 2, 3]);
  const connections = made.json?.connections as { proxy: string; inFlight: number }[];
  assert.equal(connections.length, 4);
  assert.ok(connections.every((c) => c.proxy === "127.0.0.1:11417" && c.inFlight === 0));
  for (const bad of [0, 17, 2.5, "4", null]) {
    const refused = await call("POST", "/api/mounts", { ...MOUNT, connections: bad });
    assert.equal(refused.status, 400, `connections ${JSON.stringify(bad)} is refused`);
    assert.match(String(refused.json?.error), /connections/);
  }
  assert.equal(driver.openedConnections.length, 4, "a refused request opens no session");
});

Deno.test("GET /api/mounts shows image, size, proxy, in-flight and byte counters", async () => {
  const { call, driver } = setup();
  await call("POST", "/api/mounts", MOUNT);
  driver.attached.get("/dev/nbd0")!.stats.observe("read", 4096, 0.3);
  driver.attached.get("/dev/nbd0")!.stats.observe("write", 512, 2);
  const { status, json } = await call("GET", "/api/mounts");
  assert.equal(status, 200);
  const [mount] = json?.mounts as Record<string, unknown>[];
  assert.equal(mount.device, "/dev/nbd0");
  assert.equal(mount.bytesRead, 4096);
  assert.equal(mount.bytesWritten, 512);
  assert.equal(mount.inFlight, 0);
  assert.equal(mount.failovers, 0);
  assert.equal(mount.proxy, "127.0.0.1:11417");
  assert.ok(!("password" in mount));
});

Deno.test("POST /api/mounts rejects bodies that fail validation with 400 naming the field", async () => {
  const { call, driver } = setup();
  const cases: [unknown, RegExp][] = [
    ["", /body is empty/],
    ["{not json", /not valid JSON/],
    [[1, 2], /invalid body/],
    [{ username: "alice", password: PASSWORD }, /image/],
    [{ ...MOUNT, image: "" }, /image: image must not be empty/],
    [{ ...MOUNT, image: 42 }, /image: image must be a string/],
    [{ ...MOUNT, image: "x".repeat(256) }, /image/],
    [{ ...MOUNT, username: "" }, /username/],
    [{ ...MOUNT, password: 7 }, /password: password must be a string/],
    [{ ...MOUNT, readOnly: "yes" }, /readOnly/],
    [{ ...MOUNT, device: "sda" }, /device.*not an NBD device/],
    [{ ...MOUNT, device: 3 }, /device/],
    [{ ...MOUNT, extra: 1 }, /unknown field "extra"/],
  ];
  for (const [body, pattern] of cases) {
    const { status, json } = await call("POST", "/api/mounts", body);
    assert.equal(status, 400, `status for ${JSON.stringify(body)}`);
    assert.match(String(json?.error), pattern, `message for ${JSON.stringify(body)}`);
    assert.ok(!String(json?.error).includes(PASSWORD));
  }
  assert.equal(driver.openCalls, 0, "nothing reached the driver");
});

Deno.test("POST /api/mounts refuses a body larger than the limit with 413", async () => {
  const { call } = setup();
  const { status, json } = await call("POST", "/api/mounts", {
    ...MOUNT,
    image: "x".repeat(MAX_BODY_BYTES),
  });
  assert.equal(status, 413);
  assert.match(String(json?.error), /exceeds/);
});

Deno.test("POST /api/mounts maps driver refusals to 403, 404, 409 and 503", async () => {
  const { call, driver } = setup();
  const wrongPassword = await call("POST", "/api/mounts", { ...MOUNT, password: "nope" });
  assert.equal(wrongPassword.status, 403);
  assert.match(String(wrongPassword.json?.error), /login as alice refused/);
  const noImage = await call("POST", "/api/mounts", { ...MOUNT, image: "missing" });
  assert.equal(noImage.status, 404);
  assert.match(String(noImage.json?.error), /missing/);
  const beyond = await call("POST", "/api/mounts", { ...MOUNT, device: "nbd9" });
  assert.equal(beyond.status, 404);
  const absent = await call("POST", "/api/mounts", { ...MOUNT, device: "nbd5" });
  assert.equal(absent.status, 404, "nbd5 is managed but the kernel has only 4 devices");
  await call("POST", "/api/mounts", { ...MOUNT, device: "nbd0" });
  const busy = await call("POST", "/api/mounts", { ...MOUNT, device: "nbd0" });
  assert.equal(busy.status, 409);
  assert.match(String(busy.json?.error), /\/dev\/nbd0: device busy/);
  driver.foreign.add("/dev/nbd1");
  const foreign = await call("POST", "/api/mounts", { ...MOUNT, device: "nbd1" });
  assert.equal(foreign.status, 409);
  driver.attachFailures.push("NOT_ROOT");
  const notRoot = await call("POST", "/api/mounts", { ...MOUNT, device: "nbd2" });
  assert.equal(notRoot.status, 503);
  assert.equal(driver.backends.at(-1)?.closed, true, "the session of a failed attach is closed");
  await call("POST", "/api/mounts", MOUNT);
  await call("POST", "/api/mounts", MOUNT);
  const full = await call("POST", "/api/mounts", MOUNT);
  assert.equal(full.status, 409);
  assert.match(String(full.json?.error), /all 4 NBD devices are in use/);
});

Deno.test("POST /api/mounts without the nbd module answers 503 NO_MODULE", async () => {
  const { call, driver } = setup({ devices: 0 });
  const { status, json } = await call("POST", "/api/mounts", MOUNT);
  assert.equal(status, 503);
  assert.match(String(json?.error), /nbd kernel module is not loaded/);
  assert.equal(json?.code, "NO_MODULE");
  assert.equal(driver.openCalls, 0, "no IVBS session is opened for a mount that cannot attach");
});

Deno.test("DELETE /api/mounts/:device accepts nbdN, /dev/nbdN and URL-encoded forms", async () => {
  const { call, driver } = setup();
  for (const path of ["nbd0", "%2Fdev%2Fnbd0", "dev/nbd0"]) {
    await call("POST", "/api/mounts", { ...MOUNT, device: "nbd0" });
    const { status, json } = await call("DELETE", `/api/mounts/${path}`);
    assert.equal(status, 200, path);
    assert.deepEqual(json, { device: "/dev/nbd0", state: "unmounted" });
    assert.equal(driver.attached.size, 0);
  }
  assert.ok(driver.backends.every((b) => b.closed), "every session was closed");
});

Deno.test("DELETE /api/mounts/:device answers 400, 404 and 409 for bad, unknown and idle devices", async () => {
  const { call } = setup();
  const bad = await call("DELETE", "/api/mounts/sda1");
  assert.equal(bad.status, 400);
  assert.match(String(bad.json?.error), /device: "sda1" is not an NBD device/);
  const unknown = await call("DELETE", "/api/mounts/nbd99");
  assert.equal(unknown.status, 404);
  const absent = await call("DELETE", "/api/mounts/nbd6");
  assert.equal(absent.status, 404);
  const idle = await call("DELETE", "/api/mounts/nbd2");
  assert.equal(idle.status, 409);
  assert.match(String(idle.json?.error), /not mounted/);
});

Deno.test("POST /api/shutdown answers 202 and asks the daemon to stop", async () => {
  const { call, shutdowns } = setup();
  assert.equal((await call("POST", "/api/shutdown")).status, 202);
  assert.equal((await call("POST", "/api/shutdown", { reason: "maintenance" })).status, 202);
  assert.deepEqual(shutdowns, ["POST /api/shutdown", "POST /api/shutdown: maintenance"]);
  const bad = await call("POST", "/api/shutdown", { reason: 5 });
  assert.equal(bad.status, 400);
  const junk = await call("POST", "/api/shutdown", "nope");
  assert.equal(junk.status, 400);
  assert.equal(shutdowns.length, 2);
});

Deno.test("POST /api/shutdown with keepDevices asks the daemon to leave its devices attached", async () => {
  const { call, shutdowns } = setup();
  assert.equal((await call("POST", "/api/shutdown", { keepDevices: true })).status, 202);
  assert.equal((await call("POST", "/api/shutdown", { keepDevices: "yes" })).status, 400);
  assert.deepEqual(shutdowns, ["POST /api/shutdown (keep devices)"]);
});

Deno.test("a configured token is required on mutating calls only", async () => {
  const { call, shutdowns } = setup({ token: TOKEN });
  const auth = { authorization: `Bearer ${TOKEN}` };
  for (
    const [method, path, body] of [
      ["POST", "/api/mounts", MOUNT],
      ["DELETE", "/api/mounts/nbd0", undefined],
      ["POST", "/api/shutdown", undefined],
      ["POST", "/", { Command: "mount", Image: "disk", User: "alice", Pass: PASSWORD }],
      ["POST", "/", { Command: "unmount", Device: "nbd0" }],
      ["POST", "/", { Command: "disc" }],
      ["POST", "/api/exports", { ...EXPORT, name: "vm1" }],
      ["DELETE", "/api/exports/vm1", undefined],
    ] as const
  ) {
    const missing = await call(method, path, body);
    assert.equal(missing.status, 401, `${method} ${path} without token`);
    assert.match(String(missing.json?.error), /bearer token/);
    const wrong = await call(method, path, body, { authorization: "Bearer wrong-token-xx" });
    assert.equal(wrong.status, 401, `${method} ${path} with a wrong token`);
  }
  assert.equal(shutdowns.length, 0);
  assert.equal((await call("GET", "/api/mounts")).status, 200);
  assert.equal((await call("GET", "/api/devices")).status, 200);
  assert.equal((await call("GET", "/api/exports")).status, 200);
  assert.equal((await call("GET", "/metrics")).status, 200);
  assert.equal((await call("POST", "/", { Command: "listm" })).status, 200);
  assert.equal((await call("POST", "/api/mounts", MOUNT, auth)).status, 201);
  assert.equal((await call("DELETE", "/api/mounts/nbd0", undefined, auth)).status, 200);
  assert.equal((await call("GET", "/api/health")).json?.tokenRequired, true);
});

Deno.test("without a token mutating calls need no Authorization header", async () => {
  const { call } = setup();
  assert.equal((await call("POST", "/api/mounts", MOUNT)).status, 201);
  assert.equal((await call("DELETE", "/api/mounts/nbd0")).status, 200);
});

Deno.test("GET /metrics renders Prometheus text with per-device counters and a histogram", async () => {
  const { call, driver } = setup();
  await call("POST", "/api/mounts", MOUNT);
  const stats = driver.attached.get("/dev/nbd0")!.stats;
  stats.observe("read", 4096, 0.3);
  stats.observe("read", 4096, 7);
  stats.observe("write", 8192, 5000);
  driver.backends[0].stats.failovers = 2;
  driver.backends[0].stats.reconnects = 3;
  const { status, text, headers } = await call("GET", "/metrics");
  assert.equal(status, 200);
  assert.match(headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  const id = 'device="/dev/nbd0",image="disk"';
  for (
    const line of [
      `ivbsnetd_io_bytes_total{${id},direction="read"} 8192`,
      `ivbsnetd_io_bytes_total{${id},direction="write"} 8192`,
      `ivbsnetd_io_operations_total{${id},op="read"} 2`,
      `ivbsnetd_io_operations_total{${id},op="write"} 1`,
      `ivbsnetd_io_in_flight{${id}} 0`,
      `ivbsnetd_io_latency_seconds_bucket{${id},le="0.0005"} 1`,
      `ivbsnetd_io_latency_seconds_bucket{${id},le="0.01"} 2`,
      `ivbsnetd_io_latency_seconds_bucket{${id},le="1"} 2`,
      `ivbsnetd_io_latency_seconds_bucket{${id},le="+Inf"} 3`,
      `ivbsnetd_io_latency_seconds_count{${id}} 3`,
      `ivbsnetd_ivbs_failovers_total{${id}} 2`,
      `ivbsnetd_ivbs_reconnects_total{${id}} 3`,
      `ivbsnetd_mounts{state="mounted"} 1`,
      "# TYPE ivbsnetd_io_latency_seconds histogram",
    ]
  ) {
    assert.ok(text.split("\n").includes(line), `missing line: ${line}`);
  }
});

Deno.test("GET / renders the status page with mounted and free devices, escaped", async () => {
  const { call } = setup();
  await call("POST", "/api/mounts", { ...MOUNT, image: "<b>evil</b>", device: "nbd1" });
  const { status, text, headers } = await call("GET", "/");
  assert.equal(status, 200);
  assert.match(headers.get("content-type") ?? "", /text\/html/);
  assert.ok(text.includes("&lt;b&gt;evil&lt;/b&gt;"));
  assert.ok(!text.includes("<b>evil</b>"));
  assert.ok(text.includes("<td>/dev/nbd1</td>"));
  assert.ok(text.includes("<li>/dev/nbd0</li>"), "free devices are listed");
  assert.ok(!text.includes("<li>/dev/nbd1</li>"), "a mounted device is not free");
  assert.match(text, /setInterval\(refresh, 2000\)/);
});

Deno.test("GET / says when the nbd module is missing", async () => {
  const { call } = setup({ devices: 0 });
  const { text } = await call("GET", "/");
  assert.match(text, /nbd kernel module is not loaded/);
  assert.match(text, /No image mounted/);
});

Deno.test("GET /status/json keeps the 2013 shape", async () => {
  const { call } = setup();
  await call("POST", "/api/mounts", { ...MOUNT, device: "nbd2" });
  const { json } = await call("GET", "/status/json");
  assert.deepEqual(json, {
    Type: "Mounted",
    Devices: [{ NbdDevice: "/dev/nbd2", ImageName: "disk" }],
  });
});

Deno.test("POST / runs the 2013 commands", async () => {
  const { call, shutdowns, driver } = setup();
  assert.deepEqual((await call("POST", "/", { Command: "check" })).json, {
    Type: "Check",
    Status: "OK",
  });
  const mount = await call("POST", "/", {
    Command: "mount",
    Device: "/dev/nbd1",
    Image: "disk",
    User: "alice",
    Pass: PASSWORD,
  });
  assert.equal(mount.status, 200);
  assert.deepEqual(mount.json, {
    Type: "Mount",
    Status: "OK",
    NbdDevice: "/dev/nbd1",
    ImageName: "disk",
  });
  assert.ok(!mount.text.includes(PASSWORD));
  assert.deepEqual((await call("POST", "/", { Command: "listm" })).json, {
    Type: "Mounted",
    Devices: [{ NbdDevice: "/dev/nbd1", ImageName: "disk" }],
  });
  const all = await call("POST", "/", { Command: "LISTA" });
  assert.equal(all.json?.Type, "All");
  assert.deepEqual((all.json?.Devices as unknown[])[1], {
    NbdDevice: "/dev/nbd1",
    InUse: true,
    ImageName: "disk",
  });
  const unmount = await call("POST", "/", { Command: "unmount", Device: "nbd1" });
  assert.deepEqual(unmount.json, { Type: "Unmount", Status: "OK", NbdDevice: "/dev/nbd1" });
  assert.equal(driver.attached.size, 0);
  const disc = await call("POST", "/", { Command: "disc" });
  assert.equal(disc.status, 202);
  assert.deepEqual(shutdowns, ["2013 disc command"]);
});

Deno.test("POST / rejects malformed 2013 commands with 400", async () => {
  const { call } = setup();
  const cases: [unknown, RegExp][] = [
    [{}, /Command/],
    [{ Command: "format" }, /Command must be one of/],
    [{ Command: 3 }, /Command must be a string/],
    [{ Command: "mount", Image: "disk", User: "alice" }, /Pass is required/],
    [{ Command: "mount", Image: "", User: "alice", Pass: "x" }, /Image must not be empty/],
    [{ Command: "mount", Device: "hda", Image: "d", User: "a", Pass: "x" }, /not an NBD device/],
    [{ Command: "unmount" }, /Device is required/],
    ["[]", /invalid body/],
  ];
  for (const [body, pattern] of cases) {
    const { status, json } = await call("POST", "/", body);
    assert.equal(status, 400, JSON.stringify(body));
    assert.match(String(json?.error), pattern, JSON.stringify(body));
  }
  const wrong = await call("POST", "/", {
    Command: "mount",
    Image: "disk",
    User: "alice",
    Pass: "bad",
  });
  assert.equal(wrong.status, 403);
});

Deno.test("unknown routes answer 404 with a JSON error", async () => {
  const { call } = setup();
  const { status, json } = await call("PUT", "/api/mounts");
  assert.equal(status, 404);
  assert.equal(json?.error, "no route PUT /api/mounts");
});

Deno.test("an unexpected failure answers a plain 500 and logs the cause", async () => {
  const driver = new FakeMountDriver({ devices: 2, images: {}, users: {} });
  driver.listDevices = () => Promise.reject(new Error("sysfs exploded: detail"));
  const logged: unknown[] = [];
  const log = { ...quietLog, error: (_m: string, f?: object) => logged.push(f) };
  const table = new MountTable(driver, { deviceCount: 2, log: quietLog });
  const exports = new ExportTable(driver, {
    settings: { socket: `${UNUSED_STATE_DIR}/nbd.sock`, items: [] },
    stateDir: UNUSED_STATE_DIR,
    log: quietLog,
  });
  const app = createApp({ table, exports, requestShutdown() {}, startedAt: Date.now(), log });
  const response = await app.request("/api/devices");
  assert.equal(response.status, 500);
  assert.deepEqual(await response.json(), { error: "internal error" });
  assert.equal(logged.length, 1);
  assert.match(JSON.stringify(logged[0]), /sysfs exploded/);
});

Deno.test("a refused mount logs no password", async () => {
  const { table } = setup();
  const lines: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => lines.push(args.join(" "));
  try {
    const real = new MountTable(new FakeMountDriver({ devices: 1, images: {}, users: {} }), {
      deviceCount: 1,
      log: logger("test"),
    });
    await assert.rejects(
      real.mount({ image: "x", username: "alice", password: PASSWORD }),
      /login as alice refused/,
    );
  } finally {
    console.error = original;
  }
  assert.ok(lines.length > 0, "the attempt was logged");
  assert.ok(lines.every((line) => !line.includes(PASSWORD)));
  assert.equal(table.size, 0);
});

/** Runs `body` with an API whose exports listen in a fresh temp dir; closes everything after. */
async function withExportApi(
  body: (t: ReturnType<typeof setup> & { dir: string }) => Promise<void>,
  options: { token?: string } = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-http-exports-" });
  const t = setup({ ...options, stateDir: dir });
  try {
    await body({ ...t, dir });
  } finally {
    await t.exports.closeAll();
    await Deno.remove(dir, { recursive: true });
  }
}

async function hasNbdinfo(): Promise<boolean> {
  try {
    const out = await new Deno.Command("nbdinfo", { args: ["--version"], stdout: "null" }).output();
    return out.success;
  } catch {
    return false;
  }
}

Deno.test("POST /api/exports serves the image on the socket and answers 201 with its URI", async () => {
  await withExportApi(async ({ call, dir, driver }) => {
    const { status, json, text, headers } = await call("POST", "/api/exports", {
      ...EXPORT,
      name: "vm1",
    });
    assert.equal(status, 201, text);
    assert.equal(json?.name, "vm1");
    assert.equal(json?.image, "disk");
    assert.equal(json?.sizeBytes, 1 << 20);
    assert.equal(json?.state, "ready");
    assert.equal(json?.clients, 0);
    assert.equal(json?.socket, `${dir}/nbd.sock`);
    assert.equal(json?.uri, `nbd+unix:///vm1?socket=${dir}/nbd.sock`);
    assert.equal(json?.tcpUri, null);
    assert.equal(headers.get("location"), "/api/exports/vm1");
    assert.ok(!text.includes(PASSWORD), "the password is never echoed");
    assert.equal((await Deno.stat(`${dir}/nbd.sock`)).mode! & 0o777, 0o600);
    assert.equal(driver.backends.length, 1, "one probe session");
    assert.ok(driver.backends[0].closed, "the probe session is closed again");

    const list = await call("GET", "/api/exports");
    assert.equal(list.json?.listening, true);
    assert.equal(list.json?.socket, `${dir}/nbd.sock`);
    assert.deepEqual((list.json?.exports as { name: string }[]).map((e) => e.name), ["vm1"]);
    const mounts = await call("GET", "/api/mounts");
    assert.deepEqual(mounts.json?.mounts, []);
    assert.deepEqual((mounts.json?.exports as { uri: string }[]).map((e) => e.uri), [
      `nbd+unix:///vm1?socket=${dir}/nbd.sock`,
    ]);
    assert.equal((await call("GET", "/api/health")).json?.exports, 1);

    if (!(await hasNbdinfo())) {
      console.warn("nbdinfo is not installed; skipping the client part of this test");
      return;
    }
    const info = await new Deno.Command("nbdinfo", {
      args: ["--size", String(json?.uri)],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(info.code, 0, new TextDecoder().decode(info.stderr));
    assert.equal(new TextDecoder().decode(info.stdout).trim(), String(1 << 20));
    assert.ok(driver.backends.length >= 2, "the client got a session of its own");
  });
});

Deno.test("POST /api/exports rejects bad bodies and names with 400 naming the field", async () => {
  const { call, driver } = setup();
  const cases: [unknown, RegExp][] = [
    ["", /body is empty/],
    [{ ...EXPORT }, /name/],
    [{ ...EXPORT, name: "" }, /name: name must be 1-128 characters/],
    [{ ...EXPORT, name: "a/b" }, /name: name must be/],
    [{ ...EXPORT, name: "../etc" }, /name: name must be/],
    [{ ...EXPORT, name: "with space" }, /name: name must be/],
    [{ ...EXPORT, name: "x".repeat(129) }, /name: name must be/],
    [{ ...EXPORT, name: 5 }, /name: name must be a string/],
    [{ ...EXPORT, name: "vm", image: "" }, /image: image must not be empty/],
    [{ ...EXPORT, name: "vm", password: 1 }, /password: password must be a string/],
    [{ ...EXPORT, name: "vm", readOnly: "no" }, /readOnly/],
    [{ ...EXPORT, name: "vm", device: "nbd0" }, /unknown field "device"/],
  ];
  for (const [body, pattern] of cases) {
    const { status, json } = await call("POST", "/api/exports", body);
    assert.equal(status, 400, `status for ${JSON.stringify(body)}`);
    assert.match(String(json?.error), pattern, `message for ${JSON.stringify(body)}`);
    assert.ok(!String(json?.error).includes(PASSWORD));
  }
  assert.equal(driver.openCalls, 0, "nothing reached the driver");
});

Deno.test("POST /api/exports answers 409 for a name in use, also when two race for it", async () => {
  await withExportApi(async ({ call, driver }) => {
    const held = Promise.withResolvers<void>();
    driver.openGate = held.promise;
    const first = call("POST", "/api/exports", { ...EXPORT, name: "vm1" });
    const second = call("POST", "/api/exports", { ...EXPORT, name: "vm1", image: "ro" });
    const losing = await second;
    assert.equal(losing.status, 409);
    assert.match(String(losing.json?.error), /export "vm1" already exists \(adding, image disk\)/);
    assert.equal(losing.json?.code, "DUPLICATE");
    assert.equal((await call("DELETE", "/api/exports/vm1")).status, 409, "busy while adding");
    driver.openGate = null;
    held.resolve();
    assert.equal((await first).status, 201);
    const again = await call("POST", "/api/exports", { ...EXPORT, name: "vm1" });
    assert.equal(again.status, 409);
  });
});

Deno.test("POST /api/exports maps IVBS refusals to 403 and 404 and keeps nothing", async () => {
  await withExportApi(async ({ call }) => {
    const wrong = await call("POST", "/api/exports", { ...EXPORT, name: "a", password: "nope" });
    assert.equal(wrong.status, 403);
    assert.match(String(wrong.json?.error), /Cannot export disk as a: login as alice refused/);
    assert.equal(wrong.json?.code, "LOGIN_DENIED");
    const missing = await call("POST", "/api/exports", { ...EXPORT, name: "a", image: "gone" });
    assert.equal(missing.status, 404);
    assert.equal(missing.json?.code, "IMAGE_NOT_FOUND");
    assert.deepEqual((await call("GET", "/api/exports")).json?.exports, []);
    const ro = await call("POST", "/api/exports", { ...EXPORT, name: "a", image: "ro" });
    assert.equal(ro.status, 201, "the name is free again after failures");
    assert.equal(ro.json?.readOnly, true, "an image read-only on the IVBS side exports read-only");
  });
});

Deno.test("POST /api/exports answers 503 LISTEN_FAILED when the socket path is taken by a file", async () => {
  await withExportApi(async ({ call, dir }) => {
    await Deno.writeTextFile(`${dir}/nbd.sock`, "not a socket");
    const refused = await call("POST", "/api/exports", { ...EXPORT, name: "vm1" });
    assert.equal(refused.status, 503);
    assert.equal(refused.json?.code, "LISTEN_FAILED");
    assert.match(String(refused.json?.error), /nbd\.sock exists and is not a socket/);
    await Deno.remove(`${dir}/nbd.sock`);
    assert.equal((await call("POST", "/api/exports", { ...EXPORT, name: "vm1" })).status, 201);
  });
});

Deno.test("DELETE /api/exports/:name removes it and answers 400 and 404 for bad and unknown names", async () => {
  await withExportApi(async ({ call, driver }) => {
    assert.equal((await call("POST", "/api/exports", { ...EXPORT, name: "vm1" })).status, 201);
    assert.equal((await call("POST", "/api/exports", { ...EXPORT, name: "vm2" })).status, 201);
    const bad = await call("DELETE", "/api/exports/a%2Fb");
    assert.equal(bad.status, 400);
    assert.match(String(bad.json?.error), /invalid export name: name must be/);
    const unknown = await call("DELETE", "/api/exports/vm3");
    assert.equal(unknown.status, 404);
    assert.match(String(unknown.json?.error), /no export named "vm3" \(exports: vm1, vm2\)/);
    assert.equal(unknown.json?.code, "UNKNOWN_EXPORT");
    const removed = await call("DELETE", "/api/exports/vm1");
    assert.equal(removed.status, 200);
    assert.deepEqual(removed.json, { name: "vm1", state: "removed" });
    const left = (await call("GET", "/api/exports")).json?.exports as { name: string }[];
    assert.deepEqual(left.map((e) => e.name), ["vm2"]);
    assert.equal((await call("DELETE", "/api/exports/vm1")).status, 404);
    assert.ok(driver.backends.every((b) => b.closed), "no session left open");
  });
});

Deno.test("GET /metrics and the status page show exports", async () => {
  await withExportApi(async ({ call, dir }) => {
    await call("POST", "/api/exports", { ...EXPORT, name: "vm1" });
    const metrics = await call("GET", "/metrics");
    const id = 'export="vm1",image="disk"';
    for (
      const line of [
        `ivbsnetd_exports{state="ready"} 1`,
        `ivbsnetd_export_clients{${id}} 0`,
        `ivbsnetd_export_size_bytes{${id}} ${1 << 20}`,
        `ivbsnetd_export_io_bytes_total{${id},direction="read"} 0`,
        `ivbsnetd_export_io_operations_total{${id},op="write"} 0`,
        `ivbsnetd_export_io_latency_seconds_count{${id}} 0`,
        `ivbsnetd_export_ivbs_failovers_total{${id}} 0`,
        "# TYPE ivbsnetd_export_io_latency_seconds histogram",
      ]
    ) {
      assert.ok(metrics.text.split("\n").includes(line), `missing line: ${line}`);
    }
    const page = await call("GET", "/");
    assert.ok(page.text.includes("<td>vm1</td>"));
    assert.ok(page.text.includes(`<code>nbd+unix:///vm1?socket=${dir}/nbd.sock</code>`));
  });
  const { call } = setup();
  assert.match((await call("GET", "/")).text, /No NBD export\./);
});

Deno.test("GET /metrics counts liveness probes and failovers by cause, every cause from zero", async () => {
  const { call, driver } = setup();
  await call("POST", "/api/mounts", MOUNT);
  Object.assign(driver.backends[0].stats, {
    failovers: 3,
    probesSent: 5,
    probesAnswered: 4,
    failoverCauses: { "probe-timeout": 1, status: 2 },
  });
  const { text } = await call("GET", "/metrics");
  const id = 'device="/dev/nbd0",image="disk"';
  for (
    const line of [
      `ivbsnetd_ivbs_probes_sent_total{${id}} 5`,
      `ivbsnetd_ivbs_probes_answered_total{${id}} 4`,
      `ivbsnetd_ivbs_failovers_by_cause_total{${id},cause="probe-timeout"} 1`,
      `ivbsnetd_ivbs_failovers_by_cause_total{${id},cause="status"} 2`,
      `ivbsnetd_ivbs_failovers_by_cause_total{${id},cause="dead-peer"} 0`,
      `ivbsnetd_ivbs_failovers_by_cause_total{${id},cause="closed"} 0`,
      `ivbsnetd_ivbs_failovers_by_cause_total{${id},cause="error"} 0`,
      "# TYPE ivbsnetd_ivbs_failovers_by_cause_total counter",
    ]
  ) {
    assert.ok(text.split("\n").includes(line), `missing line: ${line}`);
  }
});
