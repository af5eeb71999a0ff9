import assert from "node:assert/strict";
import { DEFAULT_LIVENESS } from "../src/ivbs/liveness.ts";
import { ConfigError, loadConfig, parseConfig, parseListenAddress } from "../src/daemon/config.ts";
import { serveWith } from "./support/serve_in_process.ts";
import { defaultStateDir } from "../src/daemon/config_paths.ts";

const FULL = {
  http: { listen: "127.0.0.1:9090", token: "0123456789abcdef" },
  ivbs: {
    proxies: [{ host: "127.0.0.1", port: 11417 }, { host: "ivbs-b.example" }],
    deadPeerTimeoutMs: 10_000,
    ioTimeoutMs: 60_000,
    connectTimeoutMs: 2_000,
    backoff: { initialMs: 50, maxMs: 2_000 },
  },
  nbd: { devices: 8, blockSize: 512, timeoutS: 30, connections: 2 },
  users: [{ username: "alice", password: "pw-a" }, { username: "bob", password: "pw-b" }],
  mounts: [
    { device: "/dev/nbd0", image: "db", user: "alice" },
    { device: "nbd3", image: "logs", user: "bob", readOnly: true, connections: 4 },
    { device: "auto", image: "scratch", user: "alice" },
    { image: "other", user: "bob" },
  ],
};

function problem(value: unknown): string {
  try {
    parseConfig(typeof value === "string" ? value : JSON.stringify(value), "/etc/ivbsnetd.json");
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
    assert.equal(error.code, "CONFIG");
    assert.ok(!error.message.includes("\n"), "one line");
    return error.message;
  }
  assert.fail(`accepted: ${JSON.stringify(value)}`);
}

Deno.test("parseConfig reads every field of the current format", () => {
  const { config, warnings } = parseConfig(JSON.stringify(FULL), "f.json");
  assert.deepEqual(warnings, []);
  assert.equal(config.format, "current");
  assert.deepEqual(config.http, {
    listen: { host: "127.0.0.1", port: 9090 },
    token: FULL.http.token,
  });
  assert.deepEqual(config.ivbs.proxies, [
    { host: "127.0.0.1", port: 11417 },
    { host: "ivbs-b.example", port: 11417 },
  ]);
  assert.equal(config.ivbs.deadPeerTimeoutMs, 10_000);
  assert.equal(config.ivbs.ioTimeoutMs, 60_000);
  assert.equal(config.ivbs.connectTimeoutMs, 2_000);
  assert.deepEqual(config.ivbs.backoff, { initialMs: 50, maxMs: 2_000 });
  assert.deepEqual(config.nbd, {
    devices: 8,
    blockSize: 512,
    timeoutS: 30,
    maxInFlight: 128,
    attach: "auto",
    deadConnTimeoutS: 120,
    requeueAfterS: 5,
    connections: 2,
  });
  assert.deepEqual(config.mounts, [
    { device: "/dev/nbd0", image: "db", username: "alice", password: "pw-a", readOnly: false },
    {
      device: "/dev/nbd3",
      image: "logs",
      username: "bob",
      password: "pw-b",
      readOnly: true,
      connections: 4,
    },
    { device: "auto", image: "scratch", username: "alice", password: "pw-a", readOnly: false },
    { device: "auto", image: "other", username: "bob", password: "pw-b", readOnly: false },
  ]);
});

Deno.test("parseConfig fills defaults for an empty object", () => {
  const { config } = parseConfig("{}", "f.json");
  assert.deepEqual(config.http, { listen: { host: "127.0.0.1", port: 8080 } });
  assert.deepEqual(config.ivbs.proxies, [{ host: "127.0.0.1", port: 11417 }]);
  assert.equal(config.ivbs.deadPeerTimeoutMs, 15_000);
  assert.equal(config.ivbs.ioTimeoutMs, 120_000);
  assert.deepEqual(config.ivbs.backoff, { initialMs: 100, maxMs: 5_000 });
  assert.deepEqual(config.nbd, {
    devices: 16,
    blockSize: 4096,
    timeoutS: 0,
    maxInFlight: 128,
    attach: "auto",
    deadConnTimeoutS: 120,
    requeueAfterS: 5,
    connections: 1,
  });
  assert.deepEqual(config.mounts, []);
});

Deno.test("parseConfig reads the 2013 format, pairing mounts with users by position", () => {
  const text = JSON.stringify({
    Mounted: [
      { NbdDevice: "/dev/nbd0", ImageName: "vm-a" },
      { NbdDevice: "/dev/nbd1", ImageName: "vm-b" },
    ],
    User: [{ Username: "u1", Password: "p1" }, { Username: "u2", Password: "p2" }],
  });
  const { config, warnings } = parseConfig(text, "old.json");
  assert.equal(config.format, "2013");
  assert.deepEqual(warnings, []);
  assert.deepEqual(config.ivbs.proxies, [{ host: "127.0.0.1", port: 11417 }]);
  assert.deepEqual(config.http.listen, { host: "127.0.0.1", port: 8080 });
  assert.deepEqual(config.mounts, [
    { device: "/dev/nbd0", image: "vm-a", username: "u1", password: "p1", readOnly: false },
    { device: "/dev/nbd1", image: "vm-b", username: "u2", password: "p2", readOnly: false },
  ]);
});

Deno.test("parseConfig warns about unknown 2013 fields and unpaired users", () => {
  const { warnings } = parseConfig(
    JSON.stringify({
      Mounted: [],
      User: [{ Username: "u", Password: "p" }],
      LogLevel: 3,
    }),
    "old.json",
  );
  assert.equal(warnings.length, 2);
  assert.match(warnings[0], /ignoring unknown 2013 fields LogLevel/);
  assert.match(warnings[1], /1 User entries have no Mounted entry/);
});

Deno.test("parseConfig rejects broken configs with one line naming the file and field", () => {
  const cases: [unknown, RegExp][] = [
    ["{nope", /^config \/etc\/ivbsnetd\.json: not valid JSON/],
    ["[]", /expected a JSON object at the top level/],
    [{ http: { listen: "localhost" } }, /http\.listen: "localhost" is not host:port/],
    [{ http: { listen: "127.0.0.1:70000" } }, /http\.listen/],
    [{ http: { token: "short" } }, /http\.token: token must have at least 8 characters/],
    [{ http: { token: "has a space!" } }, /http\.token: token may use only letters, digits/],
    [{ http: { port: 80 } }, /http: unknown field "port"/],
    [{ ivbs: { proxies: [] } }, /ivbs\.proxies: at least one proxy is needed/],
    [{ ivbs: { proxies: [{ host: "" }] } }, /ivbs\.proxies\[0\]\.host: host must not be empty/],
    [{ ivbs: { proxies: [{ host: "a", port: 0 }] } }, /ivbs\.proxies\[0\]\.port/],
    [
      { ivbs: { deadPeerTimeoutMs: "15s" } },
      /ivbs\.deadPeerTimeoutMs: deadPeerTimeoutMs must be a number/,
    ],
    [{ ivbs: { backoff: { initialMs: 9000 } } }, /ivbs\.backoff: initialMs must not exceed maxMs/],
    [{ nbd: { blockSize: 300 } }, /nbd\.blockSize: blockSize must be 512, 1024, 2048 or 4096/],
    [{ nbd: { devices: 0 } }, /nbd\.devices/],
    [{ nbd: { connections: 0 } }, /nbd\.connections/],
    [{ nbd: { connections: 17 } }, /nbd\.connections: connections must be 1 to 16/],
    [{ nbd: { connections: 1.5 } }, /nbd\.connections/],
    [
      {
        users: [{ username: "a", password: "x" }],
        mounts: [{ image: "i", user: "a", connections: 99 }],
      },
      /mounts\[0\]\.connections: connections must be 1 to 16/,
    ],
    [{ users: [{ username: "a" }] }, /users\[0\]\.password/],
    [
      { users: [{ username: "a", password: "x" }, { username: "a", password: "y" }] },
      /users\[1\]\.username: duplicate user "a"/,
    ],
    [
      { mounts: [{ image: "x", user: "ghost" }] },
      /mounts\[0\]\.user: unknown user "ghost" \(users: none\)/,
    ],
    [
      {
        users: [{ username: "a", password: "x" }],
        mounts: [{ device: "sda", image: "i", user: "a" }],
      },
      /mounts\[0\]\.device: "sda" is not an NBD device/,
    ],
    [
      {
        users: [{ username: "a", password: "x" }],
        mounts: [{ device: "nbd1", image: "i", user: "a" }, {
          device: "/dev/nbd1",
          image: "j",
          user: "a",
        }],
      },
      /mounts\[1\]\.device: \/dev\/nbd1 is mounted twice/,
    ],
    [
      {
        nbd: { devices: 2 },
        users: [{ username: "a", password: "x" }],
        mounts: [{ device: "nbd5", image: "i", user: "a" }],
      },
      /mounts\[0\]\.device: \/dev\/nbd5 is beyond nbd\.devices \(2\)/,
    ],
    [
      { users: [{ username: "a", password: "x" }], mounts: [{ image: "", user: "a" }] },
      /mounts\[0\]\.image: image must not be empty/,
    ],
    [
      { Mounted: [{ NbdDevice: "/dev/nbd0", ImageName: "x" }] },
      /2013 format\): Mounted\[0\]: no User\[0\] to pair with/,
    ],
    [{
      Mounted: [{ NbdDevice: "disk0", ImageName: "x" }],
      User: [{ Username: "u", Password: "p" }],
    }, /Mounted\[0\]\.NbdDevice/],
    [
      { Mounted: [{ NbdDevice: "/dev/nbd0" }], User: [{ Username: "u", Password: "p" }] },
      /Mounted\[0\]\.ImageName/,
    ],
  ];
  for (const [value, pattern] of cases) {
    const message = problem(value);
    assert.match(message, /^config \/etc\/ivbsnetd\.json/, message);
    assert.match(message, pattern, message);
  }
});

const USERS = [{ username: "alice", password: "pw-a" }, { username: "bob", password: "pw-b" }];

Deno.test("parseConfig reads the exports section and the state directory", () => {
  const { config } = parseConfig(
    JSON.stringify({
      stateDir: "/var/run/ivbs/",
      users: USERS,
      exports: {
        listen: { tcp: "127.0.0.1:10809" },
        items: [
          { name: "vm1", image: "disk-1", user: "alice" },
          { name: "logs.ro", image: "logs", user: "bob", readOnly: true },
        ],
      },
    }),
    "f.json",
  );
  assert.equal(config.stateDir, "/var/run/ivbs");
  assert.deepEqual(config.exports, {
    socket: "/var/run/ivbs/nbd.sock",
    tcp: { host: "127.0.0.1", port: 10809 },
    items: [
      { name: "vm1", image: "disk-1", username: "alice", password: "pw-a", readOnly: false },
      { name: "logs.ro", image: "logs", username: "bob", password: "pw-b", readOnly: true },
    ],
  });
  const custom = parseConfig(
    JSON.stringify({ exports: { listen: { socket: "/srv/nbd/exports.sock", tcp: "[::1]:0" } } }),
    "f.json",
  ).config.exports;
  assert.equal(custom.socket, "/srv/nbd/exports.sock");
  assert.deepEqual(custom.tcp, { host: "::1", port: 0 });
});

Deno.test("without a stateDir the socket goes under the default state directory", () => {
  const { config } = parseConfig("{}", "f.json");
  assert.equal(config.exports.socket, `${config.stateDir}/nbd.sock`);
  assert.deepEqual(config.exports.items, []);
  assert.equal(config.exports.tcp, undefined);
  assert.equal(defaultStateDir(0, "/run/user/0"), "/run/ivbsnetd");
  assert.equal(defaultStateDir(1000, "/run/user/1000/"), "/run/user/1000/ivbsnetd");
  assert.equal(defaultStateDir(1000, undefined), "/tmp/ivbsnetd-1000");
  assert.equal(defaultStateDir(1000, "relative"), "/tmp/ivbsnetd-1000");
  const legacy = parseConfig(
    JSON.stringify({ Mounted: [], User: [] }),
    "old.json",
  ).config;
  assert.deepEqual(legacy.exports.items, [], "the 2013 format has no exports");
});

Deno.test("parseConfig rejects broken exports sections with one line naming the field", () => {
  const cases: [unknown, RegExp][] = [
    [{ stateDir: "run/ivbsnetd" }, /stateDir: stateDir must be an absolute path/],
    [{ exports: { listen: { socket: "nbd.sock" } } }, /exports\.listen\.socket: socket must be/],
    [
      { exports: { listen: { socket: "/" + "s".repeat(120) } } },
      /exports\.listen\.socket: socket path must be at most 107 bytes/,
    ],
    [
      { exports: { listen: { tcp: "0.0.0.0:10809" } } },
      /exports\.listen\.tcp: exports listen on TCP on loopback only/,
    ],
    [{ exports: { listen: { tcp: ":10809" } } }, /exports\.listen\.tcp: .*loopback only/],
    [{ exports: { listen: { tcp: "10809" } } }, /exports\.listen\.tcp: "10809" is not host:port/],
    [{ exports: { listen: { unix: "/x" } } }, /exports\.listen: unknown field "unix"/],
    [{ exports: { items: {} } }, /exports\.items/],
    [
      { users: USERS, exports: { items: [{ name: "a/b", image: "i", user: "alice" }] } },
      /exports\.items\[0\]\.name: name must be 1-128 characters/,
    ],
    [
      { users: USERS, exports: { items: [{ image: "i", user: "alice" }] } },
      /exports\.items\[0\]\.name: name must be a string/,
    ],
    [
      { users: USERS, exports: { items: [{ name: "a", image: "", user: "alice" }] } },
      /exports\.items\[0\]\.image: image must not be empty/,
    ],
    [
      { users: USERS, exports: { items: [{ name: "a", image: "i", user: "carol" }] } },
      /exports\.items\[0\]\.user: unknown user "carol" \(users: alice, bob\)/,
    ],
    [
      {
        users: USERS,
        exports: {
          items: [{ name: "a", image: "i", user: "alice" }, { name: "a", image: "j", user: "bob" }],
        },
      },
      /exports\.items\[1\]\.name: duplicate export name "a"/,
    ],
    [
      { users: USERS, exports: { items: [{ name: "a", image: "i", user: "bob", ro: true }] } },
      /exports\.items\[0\]: unknown field "ro"/,
    ],
  ];
  for (const [value, pattern] of cases) {
    const message = problem(value);
    assert.match(message, /^config \/etc\/ivbsnetd\.json: /, message);
    assert.match(message, pattern, message);
    assert.ok(!message.includes("pw-a") && !message.includes("pw-b"), "no password in the message");
  }
});

Deno.test("config errors never contain a password", () => {
  const message = problem({
    users: [{ username: "a", password: "hunter2-secret" }],
    mounts: [{ image: "i", user: "b" }],
  });
  assert.ok(!message.includes("hunter2-secret"));
});

Deno.test("parseListenAddress accepts host:port, [v6]:port and :port", () => {
  assert.deepEqual(parseListenAddress("127.0.0.1:8080"), { host: "127.0.0.1", port: 8080 });
  assert.deepEqual(parseListenAddress("[::1]:0"), { host: "::1", port: 0 });
  assert.deepEqual(parseListenAddress(":9000"), { host: "0.0.0.0", port: 9000 });
  assert.equal(parseListenAddress("8080"), null);
  assert.equal(parseListenAddress("a:b"), null);
  assert.equal(parseListenAddress("a:65536"), null);
});

Deno.test("loadConfig warns when a file with passwords is readable by others", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/c.json`;
    await Deno.writeTextFile(path, JSON.stringify(FULL), { mode: 0o644 });
    await Deno.chmod(path, 0o644);
    const open = await loadConfig(path);
    assert.equal(open.warnings.length, 1);
    assert.match(
      open.warnings[0],
      /holds passwords and is readable by group\/others \(mode 0644\); run: chmod 600/,
    );
    await Deno.chmod(path, 0o600);
    assert.deepEqual((await loadConfig(path)).warnings, []);
    await Deno.writeTextFile(path, "{}");
    await Deno.chmod(path, 0o644);
    assert.deepEqual((await loadConfig(path)).warnings, [], "no secrets, no warning");
    await Deno.writeTextFile(path, JSON.stringify({ exports: { listen: { tcp: "127.0.0.1:1" } } }));
    assert.deepEqual((await loadConfig(path)).warnings, [], "an export listener is no secret");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadConfig names a missing file", async () => {
  await assert.rejects(loadConfig("/nonexistent/ivbsnetd.json"), {
    name: "ConfigError",
    message: "config /nonexistent/ivbsnetd.json: cannot read: no such file",
  });
});

Deno.test("serve exits 2 with one clear line for each kind of broken config", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const files: Record<string, [string, RegExp]> = {
      "json.json": ["{ broken", /not valid JSON/],
      "field.json": [JSON.stringify({ nbd: { blockSize: 3 } }), /nbd\.blockSize/],
      "user.json": [
        JSON.stringify({ mounts: [{ image: "x", user: "nobody" }] }),
        /mounts\[0\]\.user/,
      ],
      "export.json": [
        JSON.stringify({ exports: { items: [{ name: "vm", image: "x", user: "nobody" }] } }),
        /exports\.items\[0\]\.user: unknown user "nobody"/,
      ],
      "legacy.json": [
        JSON.stringify({ Mounted: [{ NbdDevice: "/dev/nbd0", ImageName: "x" }] }),
        /2013 format/,
      ],
    };
    for (const [name, [text, pattern]] of Object.entries(files)) {
      const path = `${dir}/${name}`;
      await Deno.writeTextFile(path, text);
      const { code, stderr } = await serveWith(["--config", path]);
      assert.equal(code, 2, name);
      assert.equal(stderr.length, 1, `${name}: ${stderr.join(" | ")}`);
      assert.match(
        stderr[0],
        new RegExp(`^ivbsnetd serve: config ${path.replace(/[/.]/g, "\\$&")}`),
      );
      assert.match(stderr[0], pattern);
    }
    const missing = await serveWith(["--config", `${dir}/absent.json`]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr[0], /cannot read: no such file/);
    const badFlag = await serveWith(["--frobnicate"]);
    assert.equal(badFlag.code, 2);
    assert.equal(badFlag.stderr.length, 1);
    const badListen = await serveWith(["--listen", "nowhere"]);
    assert.equal(badListen.code, 2);
    assert.match(badListen.stderr[0], /--listen "nowhere" is not HOST:PORT/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config.example.json is a valid config", async () => {
  const path = new URL("../config.example.json", import.meta.url);
  const { config } = parseConfig(await Deno.readTextFile(path), "config.example.json");
  assert.equal(config.format, "current");
  assert.equal(config.mounts.length, 1);
  assert.ok(config.http.token);
});

Deno.test("parseConfig reads ivbs.liveness, defaults from DEFAULT_LIVENESS, 0 turning probes off", () => {
  assert.deepEqual(parseConfig("{}", "f.json").config.ivbs.liveness, { ...DEFAULT_LIVENESS });
  const { config } = parseConfig(
    JSON.stringify({ ivbs: { liveness: { silenceMs: 300, probeTimeoutMs: 0 } } }),
    "f.json",
  );
  assert.deepEqual(config.ivbs.liveness, {
    ...DEFAULT_LIVENESS,
    silenceMs: 300,
    probeTimeoutMs: 0,
  });
  assert.throws(
    () => parseConfig(JSON.stringify({ ivbs: { liveness: { silenceMs: 0 } } }), "f.json"),
    /ivbs\.liveness\.silenceMs/,
  );
  assert.throws(
    () => parseConfig(JSON.stringify({ ivbs: { liveness: { probeMs: 5 } } }), "f.json"),
    /ivbs\.liveness: unknown field "probeMs"/,
  );
});
