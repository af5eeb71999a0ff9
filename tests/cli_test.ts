import assert from "node:assert/strict";
import { ApiClient, normalizeServer } from "../src/cli/api_client.ts";
import { HELP, PROMPT, runInteractive } from "../src/cli/netdclient.ts";
import { type OneShotIo, runOneShot } from "../src/commands/one_shot.ts";
import { ByteSource, readRawSecret, type Terminal } from "../src/cli/prompt.ts";
import { formatTable } from "../src/cli/table.ts";
import { parseConfig } from "../src/daemon/config.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { startServing } from "../src/commands/serve.ts";
import { setLogLevel } from "../src/log.ts";
import { quietLog } from "./support/log.ts";

setLogLevel("error");

const PASSWORD = "pw-demo-7";
const TOKEN = "token-for-cli-tests";

/** A daemon on 127.0.0.1:0 with a fake driver; `stop` shuts it down. */
function startDaemon(options: { token?: string; stateDir?: string } = {}) {
  const { config } = parseConfig(
    JSON.stringify({
      http: { listen: "127.0.0.1:0", token: options.token },
      nbd: { devices: 4 },
      stateDir: options.stateDir,
    }),
    "test",
  );
  const driver = new FakeMountDriver({
    devices: 4,
    images: { demo: { size: 1 << 30 } },
    users: { demo: PASSWORD },
  });
  const serving = startServing(config, driver, quietLog);
  return {
    driver,
    url: serving.url,
    daemon: serving.daemon,
    stop: () => serving.daemon.shutdown("test over"),
  };
}

/** A port nothing listens on (bound then released). */
function deadPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

function capture(env: Record<string, string> = {}, stdin: string | null = null) {
  const out: string[] = [];
  const err: string[] = [];
  const io: OneShotIo = {
    out: { print: (t) => out.push(t) },
    err: { print: (t) => err.push(t) },
    env: (name) => env[name],
    readStdinLine: () => Promise.resolve(stdin),
    askSecret: () => Promise.resolve(null),
  };
  return { io, out, err };
}

Deno.test("formatTable pads columns and right-aligns where asked", () => {
  const text = formatTable(["A", "NUMBER"], [["long-name", "1"], ["x", "12345"]], [
    "left",
    "right",
  ]);
  assert.equal(text, ["A          NUMBER", "long-name       1", "x           12345"].join("\n"));
});

Deno.test("normalizeServer adds http:// and drops trailing slashes", () => {
  assert.equal(normalizeServer("127.0.0.1:8080"), "http://127.0.0.1:8080");
  assert.equal(normalizeServer("http://h:1/"), "http://h:1");
  assert.throws(() => normalizeServer("ftp://h"), /http:\/\/ or https:\/\//);
});

Deno.test("one-shot mount, list, unmount and check drive the daemon with exit code 0", async () => {
  const daemon = startDaemon();
  try {
    const server = ["--server", daemon.url];
    const check = capture();
    assert.equal(await runOneShot("check", server, check.io), 0);
    assert.match(check.out[0], /^server http:\/\/127\.0\.0\.1:\d+ is up \(version .*, 0 mounts/);

    const mount = capture();
    assert.equal(
      await runOneShot("mount", [...server, "nbd1", "demo", "demo", PASSWORD], mount.io),
      0,
    );
    assert.equal(
      mount.out[0],
      "mounted demo on /dev/nbd1 (1.0 GiB, read-write, proxy 127.0.0.1:11417)",
    );

    const list = capture();
    assert.equal(await runOneShot("list", server, list.io), 0);
    const lines = list.out[0].split("\n");
    assert.match(lines[0], /^DEVICE\s+IMAGE\s+SIZE\s+MODE\s+STATE\s+PROXY/);
    assert.match(lines[1], /^\/dev\/nbd1\s+demo\s+1\.0 GiB\s+rw\s+mounted\s+127\.0\.0\.1:11417/);

    const all = capture();
    assert.equal(await runOneShot("list", [...server, "--all", "--json"], all.io), 0);
    const devices = JSON.parse(all.out[0]) as { device: string; state: string }[];
    assert.deepEqual(devices.map((d) => d.state), ["free", "mounted", "free", "free"]);

    const unmount = capture();
    assert.equal(await runOneShot("unmount", [...server, "/dev/nbd1"], unmount.io), 0);
    assert.equal(unmount.out[0], "unmounted /dev/nbd1");
    assert.equal(daemon.driver.attached.size, 0);
  } finally {
    await daemon.stop();
  }
});

Deno.test("one-shot mount takes the password from stdin or IVBSNETD_PASSWORD", async () => {
  const daemon = startDaemon();
  try {
    const server = ["--server", daemon.url, "--json"];
    const stdin = capture({}, PASSWORD);
    assert.equal(
      await runOneShot("mount", [...server, "--password-stdin", "auto", "demo", "demo"], stdin.io),
      0,
    );
    assert.equal(JSON.parse(stdin.out[0]).device, "/dev/nbd0");
    const env = capture({ IVBSNETD_PASSWORD: PASSWORD });
    assert.equal(await runOneShot("mount", [...server, "auto", "demo", "demo"], env.io), 0);
    assert.equal(JSON.parse(env.out[0]).device, "/dev/nbd1");
    const none = capture();
    assert.equal(await runOneShot("mount", [...server, "auto", "demo", "demo"], none.io), 2);
    const error = JSON.parse(none.out[0]);
    assert.match(error.error, /no password/, "with --json the error is JSON on stdout");
    assert.equal(error.code, "USAGE");
    assert.deepEqual(none.err, []);
  } finally {
    await daemon.stop();
  }
});

Deno.test("one-shot commands exit 1 when the daemon refuses, with its message", async () => {
  const daemon = startDaemon();
  try {
    const server = ["--server", daemon.url];
    const wrong = capture();
    assert.equal(
      await runOneShot("mount", [...server, "auto", "demo", "demo", "bad"], wrong.io),
      1,
    );
    assert.match(
      wrong.err[0],
      /^ivbsnetd mount: Cannot open IVBS image demo: login as demo refused \[LOGIN_DENIED\]$/,
    );
    const idle = capture();
    assert.equal(await runOneShot("unmount", [...server, "nbd2"], idle.io), 1);
    assert.match(idle.err[0], /\/dev\/nbd2 is not mounted/);
  } finally {
    await daemon.stop();
  }
});

Deno.test("one-shot commands exit 3 when no daemon answers", async () => {
  for (const name of ["check", "list", "shutdown"] as const) {
    const run = capture();
    assert.equal(await runOneShot(name, ["--server", `127.0.0.1:${deadPort()}`], run.io), 3);
    assert.match(run.err[0], /is not reachable: connection refused/);
  }
});

Deno.test("one-shot commands exit 2 on usage errors", async () => {
  const cases: [Parameters<typeof runOneShot>[0], string[], RegExp][] = [
    ["mount", ["demo"], /usage: ivbsnetd mount/],
    ["mount", ["a", "b", "c", "d", "e"], /usage/],
    ["unmount", [], /usage: ivbsnetd unmount/],
    ["list", ["--frobnicate"], /Unknown option '--frobnicate'/],
    ["check", ["extra"], /usage/],
    ["unmount", ["--all", "nbd0"], /--all applies to list only/],
    ["check", ["--server", "ftp://x"], /--server/],
    ["mount", ["--password-stdin", "a", "b", "c", "d"], /not both/],
  ];
  for (const [name, args, pattern] of cases) {
    const run = capture();
    assert.equal(await runOneShot(name, args, run.io), 2, `${name} ${args.join(" ")}`);
    assert.match(run.err.join("\n"), pattern);
  }
  const help = capture();
  assert.equal(await runOneShot("list", ["--help"], help.io), 0);
  assert.match(
    help.out[0],
    /exit codes: 0 done, 1 the operation failed.*\n.*3 the server is not reachable/,
  );
});

Deno.test("one-shot commands send the token and explain a 401", async () => {
  const daemon = startDaemon({ token: TOKEN });
  try {
    const server = ["--server", daemon.url];
    const denied = capture();
    assert.equal(
      await runOneShot("mount", [...server, "auto", "demo", "demo", PASSWORD], denied.io),
      1,
    );
    assert.match(denied.err[0], /bearer token \(pass --token or set IVBSNETD_TOKEN\)/);
    const viaEnv = capture({ IVBSNETD_TOKEN: TOKEN });
    assert.equal(
      await runOneShot("mount", [...server, "auto", "demo", "demo", PASSWORD], viaEnv.io),
      0,
    );
    const viaFlag = capture();
    assert.equal(await runOneShot("unmount", [...server, "--token", TOKEN, "nbd0"], viaFlag.io), 0);
  } finally {
    await daemon.stop();
  }
});

Deno.test("one-shot shutdown stops the daemon and detaches its devices", async () => {
  const daemon = startDaemon();
  const server = ["--server", daemon.url];
  assert.equal(
    await runOneShot("mount", [...server, "auto", "demo", "demo", PASSWORD], capture().io),
    0,
  );
  const run = capture();
  assert.equal(await runOneShot("shutdown", server, run.io), 0);
  assert.match(run.out[0], /is shutting down/);
  await daemon.daemon.done;
  assert.equal(daemon.driver.attached.size, 0);
  assert.ok(daemon.driver.backends.every((b) => b.closed));
  assert.equal(await runOneShot("check", server, capture().io), 3, "nothing answers any more");
});

/** A terminal fed from a script; records what was shown and which prompts hid input. */
function scripted(lines: string[]) {
  const shown: string[] = [];
  const secretPrompts: string[] = [];
  const terminal: Terminal = {
    write: (text) => shown.push(text),
    readLine: (prompt) => {
      shown.push(prompt);
      const line = lines.shift() ?? null;
      if (line !== null) shown.push(line + "\n");
      return Promise.resolve(line);
    },
    readSecret: (prompt) => {
      shown.push(prompt);
      secretPrompts.push(prompt);
      shown.push("\n"); // typed characters are not shown
      return Promise.resolve(lines.shift() ?? null);
    },
  };
  return { terminal, shown, secretPrompts, text: () => shown.join("") };
}

Deno.test("netdclient asks for missing mount arguments and the password without echo", async () => {
  const daemon = startDaemon();
  try {
    const session = scripted([
      "mount nbd2",
      "demo",
      "demo",
      PASSWORD,
      "listm",
      "unmount nbd2",
      "listm",
      "exit",
    ]);
    await runInteractive(new ApiClient({ server: daemon.url }), session.terminal);
    const text = session.text();
    assert.deepEqual(session.secretPrompts, ["Password: "]);
    assert.ok(!text.includes(PASSWORD), "the password is never shown");
    assert.match(text, /netdclient> mount nbd2\nImage: demo\nUser: demo\nPassword: \n/);
    assert.match(
      text,
      /mounted demo on \/dev\/nbd2 \(1\.0 GiB, read-write, proxy 127\.0\.0\.1:11417\)/,
    );
    assert.match(text, /DEVICE\s+IMAGE.*\n\/dev\/nbd2\s+demo\s+1\.0 GiB\s+rw\s+mounted/);
    assert.match(text, /unmounted \/dev\/nbd2\nnetdclient> listm\nNo image mounted\.\n/);
    assert.equal(daemon.driver.attached.size, 0);
  } finally {
    await daemon.stop();
  }
});

Deno.test("netdclient runs check, lista, help and reports unknown commands and refusals", async () => {
  const daemon = startDaemon();
  try {
    const session = scripted([
      "check",
      "",
      "lista",
      "help",
      "format c:",
      "mount auto nope demo " + PASSWORD,
      "unmount nbd3",
      "mount auto demo demo",
    ]);
    await runInteractive(new ApiClient({ server: daemon.url }), session.terminal);
    const text = session.text();
    assert.match(text, /is up \(version/);
    assert.match(text, /DEVICE\s+STATE\s+IMAGE\s+SIZE\n\/dev\/nbd0\s+free/);
    assert.ok(text.includes(HELP));
    assert.match(text, /unknown command "format"; type help/);
    assert.match(text, /error: Cannot open IVBS image nope: image nope not found/);
    assert.match(text, /error: \/dev\/nbd3 is not mounted by this daemon/);
    assert.match(text, /Password: \nmount cancelled\n/, "end of input at the password cancels");
    assert.ok(text.endsWith(PROMPT + "\n"), "end of input leaves the prompt cleanly");
  } finally {
    await daemon.stop();
  }
});

Deno.test("netdclient checks the server before each command and keeps going when it is down", async () => {
  const session = scripted(["listm", "mount", "check", "exit"]);
  await runInteractive(new ApiClient({ server: `127.0.0.1:${deadPort()}` }), session.terminal);
  const text = session.text();
  const refusals = text.match(/is not reachable: connection refused/g) ?? [];
  assert.equal(refusals.length, 3);
  assert.ok(!text.includes("Image: "), "no questions asked while the server is down");
});

function streamOf(...chunks: (string | number[])[]): ReadableStream<Uint8Array> {
  return ReadableStream.from(
    chunks.map((c) => typeof c === "string" ? new TextEncoder().encode(c) : new Uint8Array(c)),
  );
}

Deno.test("ByteSource splits lines across chunks and drops CR", async () => {
  const source = new ByteSource(streamOf("mou", "nt a\r\nlistm\n", "tail"));
  assert.equal(await source.line(), "mount a");
  assert.equal(await source.line(), "listm");
  assert.equal(await source.line(), "tail");
  assert.equal(await source.line(), null);
});

Deno.test("readRawSecret handles backspace over UTF-8 and cancels on Ctrl-C", async () => {
  const typed = new ByteSource(streamOf("pé", [0x7f], "w", [0x7f, 0x7f], "xy\r", "rest"));
  assert.equal(await readRawSecret(typed), "xy");
  const cancelled = new ByteSource(streamOf("abc", [0x03]));
  assert.equal(await readRawSecret(cancelled), null);
  const eof = new ByteSource(streamOf([0x04]));
  assert.equal(await readRawSecret(eof), null);
});

/** A daemon whose NBD exports listen in a fresh temp dir; `stop` also removes the dir. */
async function startExportingDaemon(options: { token?: string } = {}) {
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-cli-test-" });
  const daemon = startDaemon({ ...options, stateDir });
  return {
    ...daemon,
    stateDir,
    stop: async () => {
      await daemon.stop();
      await Deno.remove(stateDir, { recursive: true });
    },
  };
}

Deno.test("one-shot export-add, export-list and export-remove drive the daemon's exports", async () => {
  const daemon = await startExportingDaemon();
  try {
    const server = ["--server", daemon.url];
    const uri = `nbd+unix:///vm1?socket=${daemon.stateDir}/nbd.sock`;
    const add = capture({}, PASSWORD);
    assert.equal(
      await runOneShot(
        "export-add",
        [...server, "--password-stdin", "vm1", "demo", "demo"],
        add.io,
      ),
      0,
      add.err.join("\n"),
    );
    assert.equal(add.out[0], `exported demo as vm1 (1.0 GiB, read-write): ${uri}`);

    const ro = capture();
    assert.equal(
      await runOneShot(
        "export-add",
        [...server, "--read-only", "--json", "vm2", "demo", "demo", PASSWORD],
        ro.io,
      ),
      0,
    );
    assert.equal(JSON.parse(ro.out[0]).readOnly, true);

    const list = capture();
    assert.equal(await runOneShot("export-list", server, list.io), 0);
    const lines = list.out[0].split("\n");
    assert.match(lines[0], /^NAME\s+IMAGE\s+SIZE\s+MODE\s+STATE\s+CLIENTS\s+READ\s+WRITTEN\s+URI$/);
    assert.match(lines[1], /^vm1\s+demo\s+1\.0 GiB\s+rw\s+ready\s+0\s+0 B\s+0 B\s+nbd\+unix:/);
    assert.match(lines[2], /^vm2\s+demo\s+1\.0 GiB\s+ro\s+ready/);

    const check = capture();
    assert.equal(await runOneShot("check", server, check.io), 0);
    assert.match(check.out[0], /0 mounts, 2 exports/);

    const remove = capture();
    assert.equal(await runOneShot("export-remove", [...server, "vm1"], remove.io), 0);
    assert.equal(remove.out[0], "removed export vm1 (its clients were disconnected)");
    const json = capture();
    assert.equal(await runOneShot("export-list", [...server, "--json"], json.io), 0);
    assert.deepEqual(JSON.parse(json.out[0]).map((e: { name: string }) => e.name), ["vm2"]);
  } finally {
    await daemon.stop();
  }
});

Deno.test("one-shot export commands exit 1 on refusals, 2 on usage errors and 3 without a daemon", async () => {
  const daemon = await startExportingDaemon({ token: TOKEN });
  try {
    const server = ["--server", daemon.url, "--token", TOKEN];
    assert.equal(
      await runOneShot("export-add", [...server, "vm1", "demo", "demo", PASSWORD], capture().io),
      0,
    );
    const refusals: [Parameters<typeof runOneShot>[0], string[], RegExp][] = [
      [
        "export-add",
        ["vm1", "demo", "demo", PASSWORD],
        /export "vm1" already exists.*\[DUPLICATE\]$/,
      ],
      ["export-add", ["vm3", "demo", "demo", "wrong"], /login as demo refused \[LOGIN_DENIED\]$/],
      ["export-add", ["a/b", "demo", "demo", PASSWORD], /invalid body: name: name must be/],
      ["export-remove", ["vm9"], /no export named "vm9" \(exports: vm1\) \[UNKNOWN_EXPORT\]$/],
    ];
    for (const [name, args, pattern] of refusals) {
      const run = capture();
      assert.equal(await runOneShot(name, [...server, ...args], run.io), 1, args.join(" "));
      assert.match(run.err[0], pattern);
      assert.ok(!run.err[0].includes(PASSWORD));
    }
    const noToken = capture();
    assert.equal(
      await runOneShot("export-remove", ["--server", daemon.url, "vm1"], noToken.io),
      1,
    );
    assert.match(noToken.err[0], /bearer token \(pass --token or set IVBSNETD_TOKEN\)/);
  } finally {
    await daemon.stop();
  }
  const usage: [Parameters<typeof runOneShot>[0], string[], RegExp][] = [
    ["export-add", ["vm1", "demo"], /usage: ivbsnetd export-add \[options\] NAME IMAGE USER/],
    ["export-remove", [], /usage: ivbsnetd export-remove/],
    ["export-list", ["extra"], /usage: ivbsnetd export-list/],
    ["export-list", ["--all"], /--all applies to list only/],
    ["export-remove", ["--read-only", "vm1"], /--read-only applies to mount and export-add only/],
    ["export-add", ["vm1", "demo", "demo"], /no password/],
  ];
  for (const [name, args, pattern] of usage) {
    const run = capture();
    assert.equal(await runOneShot(name, args, run.io), 2, `${name} ${args.join(" ")}`);
    assert.match(run.err.join("\n"), pattern);
  }
  const gone = capture();
  assert.equal(
    await runOneShot("export-list", ["--server", `127.0.0.1:${deadPort()}`], gone.io),
    3,
  );
  assert.match(gone.err[0], /is not reachable: connection refused/);
});

Deno.test("netdclient export asks for what is missing, liste lists and unexport removes", async () => {
  const daemon = await startExportingDaemon();
  try {
    const session = scripted([
      "export vm1",
      "demo",
      "demo",
      PASSWORD,
      "liste",
      "export vm1 demo demo",
      PASSWORD,
      "unexport vm1",
      "liste",
      "unexport",
      "vm1",
      "export a b c d e",
      "exit",
    ]);
    await runInteractive(new ApiClient({ server: daemon.url }), session.terminal);
    const text = session.text();
    const uri = `nbd+unix:///vm1?socket=${daemon.stateDir}/nbd.sock`;
    assert.deepEqual(session.secretPrompts, ["Password: ", "Password: "]);
    assert.ok(!text.includes(PASSWORD), "the password is never shown");
    assert.match(text, /netdclient> export vm1\nImage: demo\nUser: demo\nPassword: \n/);
    assert.ok(text.includes(`exported demo as vm1 (1.0 GiB, read-write): ${uri}\n`));
    assert.match(text, /NAME\s+IMAGE.*\nvm1\s+demo\s+1\.0 GiB\s+rw\s+ready/);
    assert.match(text, /error: export "vm1" already exists/);
    assert.match(text, /removed export vm1.*\nnetdclient> liste\nNo NBD export\.\n/);
    assert.match(text, /netdclient> unexport\nExport name: vm1\nerror: no export named "vm1"/);
    assert.match(
      text,
      /too many arguments\nusage: export-add \[options\] NAME IMAGE USER \[PASSWORD\]/,
    );
    assert.match(HELP, /export-remove .*\(also unexport\)/);
    assert.match(HELP, /exports .*\(also export-list, liste\)/);
  } finally {
    await daemon.stop();
  }
});
