/**
 * The client commands' one definition: every command has `--help`, refuses a
 * bad line with exit code 2, and with `--json` reports errors as JSON; the
 * version comes from deno.json; `ivbsnetd reload` calls `POST /api/reload`
 * and prints what changed.
 */
import assert from "node:assert/strict";
import { CLIENT_COMMANDS, findCommand } from "../src/cli/command_table.ts";
import { type OneShotIo, runOneShot } from "../src/commands/one_shot.ts";
import { VERSION } from "../src/version.ts";

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  const io: OneShotIo = {
    out: { print: (t) => out.push(t) },
    err: { print: (t) => err.push(t) },
    env: () => undefined,
    readStdinLine: () => Promise.resolve(null),
    askSecret: () => Promise.resolve(null),
  };
  return { io, out, err };
}

Deno.test("every client command has --help with its usage, options and exit codes", async () => {
  for (const command of CLIENT_COMMANDS) {
    const run = capture();
    assert.equal(await runOneShot(command.name, ["--help"], run.io), 0, command.name);
    const help = run.out[0];
    assert.ok(help.startsWith(`usage: ivbsnetd ${command.name} [options]`), help);
    assert.match(help, /--json\s/);
    assert.match(help, /-h, --help\s+this help/);
    assert.match(help, /exit codes: 0 done/);
    for (const flag of Object.keys(command.flags)) assert.ok(help.includes(`--${flag}`), flag);
  }
});

Deno.test("a bad command line exits 2 with the usage; with --json the error is JSON on stdout", async () => {
  for (const command of CLIENT_COMMANDS) {
    const plain = capture();
    assert.equal(await runOneShot(command.name, ["--bogus"], plain.io), 2, command.name);
    assert.match(plain.err[0], new RegExp(`^ivbsnetd ${command.name}: Unknown option '--bogus'`));
    assert.match(plain.err[0], /\nusage: ivbsnetd /);
    const json = capture();
    assert.equal(await runOneShot(command.name, ["--json", "--bogus"], json.io), 2);
    assert.deepEqual(json.err, []);
    const error = JSON.parse(json.out[0]);
    assert.equal(error.code, "USAGE");
    assert.match(error.error, /Unknown option '--bogus'/);
    assert.ok(error.usage.startsWith(`usage: ivbsnetd ${command.name}`));
  }
  const tooMany = capture();
  assert.equal(await runOneShot("unmount", ["nbd0", "nbd1"], tooMany.io), 2);
  assert.match(tooMany.err[0], /expected DEVICE\nusage: ivbsnetd unmount \[options\] DEVICE$/);
});

Deno.test("the 2013 words are aliases of the commands, with the flags they imply", () => {
  assert.deepEqual(findCommand("lista"), {
    command: findCommand("list")!.command,
    implied: ["--all"],
  });
  for (
    const [word, name] of [
      ["listm", "list"],
      ["disc", "shutdown"],
      ["liste", "exports"],
      [
        "export-list",
        "exports",
      ],
      ["unexport", "export-remove"],
      ["export", "export-add"],
    ]
  ) {
    assert.equal(findCommand(word)?.command.name, name, word);
  }
  assert.equal(findCommand("format"), null);
});

Deno.test("version prints deno.json's version, as text or JSON; main.ts --version too", async () => {
  const denoJson = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  assert.equal(VERSION, denoJson.version);
  const text = capture();
  assert.equal(await runOneShot("version", [], text.io), 0);
  assert.equal(
    text.out[0],
    `ivbsnetd ${VERSION} (deno ${Deno.version.deno}, v8 ${Deno.version.v8}, typescript ${Deno.version.typescript})`,
  );
  const json = capture();
  assert.equal(await runOneShot("version", ["--json"], json.io), 0);
  assert.deepEqual(JSON.parse(json.out[0]), {
    version: VERSION,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
  });
  const main = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("../main.ts", import.meta.url).pathname, "--version"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(main.code, 0);
  assert.equal(new TextDecoder().decode(main.stdout), text.out[0] + "\n");
});

/** A daemon stand-in answering POST /api/reload as the contract says; records the calls. */
function reloadServer(status: number, body: unknown) {
  const calls: { method: string; path: string; auth: string | null }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (request) => {
    calls.push({
      method: request.method,
      path: new URL(request.url).pathname,
      auth: request.headers.get("authorization"),
    });
    return Response.json(body, { status });
  });
  return { url: `http://127.0.0.1:${server.addr.port}`, calls, close: () => server.shutdown() };
}

Deno.test("reload calls POST /api/reload with the token and prints what changed", async () => {
  const daemon = reloadServer(200, {
    added: ["mount /dev/nbd2: disk (alice)"],
    removed: ["export vm2: disk (alice)"],
    unchanged: ["mount /dev/nbd0: a (b)", "export vm1: c (d)"],
    restartNeeded: ["http"],
  });
  try {
    const run = capture();
    const args = ["--server", daemon.url, "--token", "reload-token-1"];
    assert.equal(await runOneShot("reload", args, run.io), 0, run.err.join("\n"));
    assert.deepEqual(daemon.calls, [
      { method: "POST", path: "/api/reload", auth: "Bearer reload-token-1" },
    ]);
    assert.equal(
      run.out[0],
      "reloaded the config: 1 added (mount /dev/nbd2: disk (alice)), " +
        "1 removed (export vm2: disk (alice)), 2 unchanged\n" +
        "changed but only applied after a restart: http",
    );
    const json = capture();
    assert.equal(await runOneShot("reload", [...args, "--json"], json.io), 0);
    assert.deepEqual(JSON.parse(json.out[0]).unchanged.length, 2);
  } finally {
    await daemon.close();
  }
});

Deno.test("reload refused by the daemon exits 1; as JSON with the daemon's code and status", async () => {
  const daemon = reloadServer(400, {
    error: "config: nbd.devices must be a number",
    code: "CONFIG",
  });
  try {
    const run = capture();
    assert.equal(await runOneShot("reload", ["--server", daemon.url], run.io), 1);
    assert.equal(run.err[0], "ivbsnetd reload: config: nbd.devices must be a number [CONFIG]");
    const json = capture();
    assert.equal(await runOneShot("reload", ["--server", daemon.url, "--json"], json.io), 1);
    assert.deepEqual(JSON.parse(json.out[0]), {
      error: "config: nbd.devices must be a number",
      code: "CONFIG",
      status: 400,
    });
  } finally {
    await daemon.close();
  }
});
