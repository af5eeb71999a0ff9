/** IVBS test server: the `ivbs-server` command's flags, users file and process. */
import assert from "node:assert/strict";
import { Status } from "../src/ivbs/wire.ts";
import { UsageError } from "../src/args.ts";
import { parseCommandLine } from "../src/command_line.ts";
import { IVBS_SERVER } from "../src/commands/definitions.ts";
import { loadUsersFile, serverCommand } from "../src/commands/ivbs_server.ts";
import { main } from "../main.ts";
import { captureConsole } from "./support/console_capture.ts";
import { MiB, RawClient } from "./support/ivbs_raw_client.ts";
import { setLogLevel } from "../src/log.ts";

// Expected refusals are logged at info/warn; keep the test output readable.
setLogLevel("error");

/** The server a command line asks for, through the command's definition. */
function parseServerArgs(args: string[]) {
  return serverCommand(parseCommandLine(IVBS_SERVER, args).values);
}

Deno.test("parseServerArgs reads every flag", () => {
  const command = parseServerArgs([
    "--host",
    "127.0.0.1",
    "--port",
    "12000",
    "--proxies",
    "3",
    "--data-dir",
    "/tmp/x",
    "--create",
    "a:64M",
    "--create",
    "b:1G:ro",
    "--user",
    "alice:pa:ss",
    "--users-file",
    "u.json",
    "--idle-timeout",
    "2.5",
    "--list-interval",
    "0",
    "--reply-delay",
    "1-20",
    "--admin-port",
    "0",
  ]);
  assert.deepEqual(command, {
    usersFile: "u.json",
    adminPort: 0,
    options: {
      host: "127.0.0.1",
      ports: [12000, 12001, 12002],
      dataDir: "/tmp/x",
      users: [{ username: "alice", password: "pa:ss" }],
      images: [{ name: "a", size: 64 * MiB, readOnly: false }, {
        name: "b",
        size: 1024 * MiB,
        readOnly: true,
      }],
      idleTimeoutMs: 2500,
      listProxiesIntervalMs: 0,
      replyDelayMs: { min: 1, max: 20 },
    },
  });
  assert.deepEqual(parseServerArgs([]).options.ports, [11417]);
  assert.deepEqual(parseServerArgs(["--create", "empty:0"]).options.images, [
    { name: "empty", size: 0, readOnly: false },
  ]);
});

Deno.test("parseServerArgs rejects bad flags with a UsageError that never shows a password", () => {
  const bad = [
    ["--bogus"],
    ["--port", "70000"],
    ["--proxies", "0"],
    ["--port", "1", "--port", "2", "--proxies", "2"],
    ["--create", "disk"],
    ["--create", "disk:10X"],
    ["--create", "disk:1M:rw"],
    ["--user", "secretpassword"],
    ["--idle-timeout", "0"],
    ["--reply-delay", "9-1"],
    ["extra"],
  ];
  for (const args of bad) {
    assert.throws(() => parseServerArgs(args), (error: Error) => {
      assert.ok(error instanceof UsageError, `${args.join(" ")}: ${error}`);
      assert.ok(!error.message.includes("secretpassword"));
      return true;
    });
  }
});

Deno.test("ivbs-server exits 0 on --help and 2 on a bad flag or missing users", async () => {
  const help = await captureConsole(() => main(["ivbs-server", "--help"]));
  assert.equal(help.result, 0);
  for (
    const flag of [
      "--host",
      "--port",
      "--proxies",
      "--data-dir",
      "--create",
      "--user",
      "--users-file",
      "--idle-timeout",
      "--list-interval",
      "--reply-delay",
      "--admin-port",
      "--help",
    ]
  ) {
    assert.ok(help.stdout[0].includes(flag), `--help does not document ${flag}`);
  }
  assert.match(help.stdout[0], /example:/);
  assert.equal((await captureConsole(() => main(["ivbs-server", "--nope"]))).result, 2);
  const noUsers = await captureConsole(() => main(["ivbs-server", "--port", "0"]));
  assert.equal(noUsers.result, 2);
  assert.match(noUsers.stderr.at(-1)!, /^ivbsnetd ivbs-server: no users/);
});

Deno.test("loadUsersFile reads a JSON user list and names the file when it is wrong", async () => {
  const path = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(path, JSON.stringify([{ username: "carol", password: "c-pw" }]));
    assert.deepEqual(await loadUsersFile(path), [{ username: "carol", password: "c-pw" }]);
    await Deno.writeTextFile(path, JSON.stringify([{ username: "carol", password: 5 }]));
    await assert.rejects(
      loadUsersFile(path),
      (e: Error) => e instanceof UsageError && e.message.includes(path),
    );
    await Deno.writeTextFile(path, "[{");
    await assert.rejects(loadUsersFile(path), /is not JSON/);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("ivbsnetd ivbs-server serves until SIGTERM, exits 0 and never prints a password", async () => {
  const main = new URL("../main.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      main,
      "ivbs-server",
      "--port",
      "0",
      "--user",
      "alice:TopSecret1",
      "--create",
      "disk:1M",
      "--list-interval",
      "0",
    ],
    stdout: "piped",
    stderr: "piped",
    env: { IVBSNETD_LOG: "debug" },
  }).spawn();
  const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  try {
    while (!out.includes("ready")) {
      const { value, done } = await stdout.read();
      if (done) break;
      out += value;
    }
    const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(out)?.[1]);
    assert.ok(port > 0, `no address printed: ${out}`);
    const client = await RawClient.connect({ host: "127.0.0.1", port });
    assert.equal(await client.login("alice", "TopSecret1"), Status.OK);
    assert.equal((await client.attach("disk")).header.status, Status.OK);
    client.close();
  } finally {
    child.kill("SIGTERM");
  }
  while (true) {
    const { value, done } = await stdout.read();
    if (done) break;
    out += value;
  }
  const status = await child.status;
  const err = await new Response(child.stderr).text();
  assert.equal(status.code, 0, err);
  assert.match(out, /stopped/);
  assert.ok(!out.includes("TopSecret1") && !err.includes("TopSecret1"), "a password was printed");
});
