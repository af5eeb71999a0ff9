/**
 * netdclient's terminal on node:readline, fed keystrokes through a fake TTY
 * stream: Ctrl-C cancels the line being typed, twice on an empty line exits,
 * Ctrl-D exits, the up arrow brings back earlier lines but never a password,
 * and Ctrl-C stops a running `events --follow` without leaving the client.
 * The last case drives the real `ivbsnetd client` through a pseudo-terminal.
 */
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { ApiClient } from "../src/cli/api_client.ts";
import { PROMPT, runInteractive } from "../src/cli/netdclient.ts";
import { ReadlineTerminal } from "../src/cli/prompt.ts";
import { parseConfig } from "../src/daemon/config.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { startServing } from "../src/commands/serve.ts";
import { quietLog } from "./support/operator_fixture.ts";
import { eventually } from "./support/wait.ts";
import { hasTool } from "./support/tools.ts";

const CTRL_C = "\x03";
const CTRL_D = "\x04";
const UP = "\x1b[A";

/** A ReadlineTerminal on a fake TTY: `type` sends keystrokes, `shown` is what it printed. */
function fakeTty() {
  const input = new PassThrough();
  let shown = "";
  const terminal = new ReadlineTerminal({
    input,
    output: { write: (text) => void (shown += text), columns: 200 },
    terminal: true,
  });
  return {
    terminal,
    type: (keys: string) => void input.write(keys),
    shown: () => shown,
  };
}

/** Resolves once the terminal has shown `text` `times` times (readline handled the keys). */
const shows = (tty: ReturnType<typeof fakeTty>, text: string, times = 1) =>
  eventually(
    `the terminal shows ${JSON.stringify(text)} ${times}×`,
    () => tty.shown().split(text).length - 1 >= times,
  );

Deno.test("Ctrl-C cancels the line being typed and prompts again", async () => {
  const tty = fakeTty();
  try {
    const line = tty.terminal.readLine("> ");
    tty.type("mount nbd0 wrong");
    await shows(tty, "mount nbd0 wrong");
    tty.type(CTRL_C);
    await shows(tty, "^C\n");
    tty.type("check\r");
    assert.equal(await line, "check", "the cancelled text is gone");
    assert.match(tty.shown(), /mount nbd0 wrong\^C\n/);
  } finally {
    tty.terminal.close();
  }
});

Deno.test("Ctrl-C on an empty line warns, a second one exits; Ctrl-D exits", async () => {
  const twice = fakeTty();
  const line = twice.terminal.readLine("> ");
  twice.type(CTRL_C);
  await shows(twice, "Ctrl-D)\n");
  assert.match(twice.shown(), /To exit, press Ctrl-C again or Ctrl-D/);
  twice.type(CTRL_C);
  assert.equal(await line, null);
  twice.terminal.close();

  const eof = fakeTty();
  const ended = eof.terminal.readLine("> ");
  eof.type(CTRL_D);
  assert.equal(await ended, null);
  eof.terminal.close();
});

Deno.test("the up arrow recalls earlier lines, but never a password, which is not echoed", async () => {
  const tty = fakeTty();
  try {
    const first = tty.terminal.readLine("> ");
    tty.type("list --all\r");
    assert.equal(await first, "list --all");
    const secret = tty.terminal.readSecret("Password: ");
    tty.type("s3cret-pw\r");
    assert.equal(await secret, "s3cret-pw");
    assert.ok(!tty.shown().includes("s3cret"), "typed without echo");
    const again = tty.terminal.readLine("> ");
    tty.type(UP);
    await shows(tty, "list --all", 2);
    tty.type("\r");
    assert.equal(await again, "list --all", "the previous line, not the password");
  } finally {
    tty.terminal.close();
  }
});

function startDaemon() {
  const { config } = parseConfig(
    JSON.stringify({ http: { listen: "127.0.0.1:0" }, nbd: { devices: 2 } }),
    "test",
  );
  const driver = new FakeMountDriver({
    devices: 2,
    images: { demo: { size: 1 << 20 } },
    users: { demo: "pw" },
  });
  const serving = startServing(config, driver, quietLog);
  return { ...serving, stop: () => serving.daemon.shutdown("test over") };
}

Deno.test("Ctrl-C stops a running events --follow and the client keeps going", async () => {
  const { url, daemon, stop } = startDaemon();
  const tty = fakeTty();
  try {
    const session = runInteractive(new ApiClient({ server: url }), tty.terminal);
    tty.type("events --follow\r");
    await daemon.table.mount({ device: "nbd0", image: "demo", username: "demo", password: "pw" });
    await eventually("the event is followed", () => /\[\/dev\/nbd0\] mounted/.test(tty.shown()));
    tty.type(CTRL_C);
    await shows(tty, PROMPT, 2);
    tty.type("version\r");
    await eventually(
      "the next command ran",
      () => /ivbsnetd \d+\.\d+\.\d+ \(deno/.test(tty.shown()),
    );
    tty.type(CTRL_D);
    await session;
  } finally {
    tty.terminal.close();
    await stop();
  }
});

const scriptMissing = !(await hasTool("script"));

Deno.test({
  name: "ivbsnetd client in a pseudo-terminal: line editing and a cancelled line",
  ignore: scriptMissing,
  sanitizeResources: false,
  fn: async () => {
    // script(1) gives the client a real TTY; keystrokes go in through its stdin.
    const client = `${Deno.execPath()} run -A main.ts client --server 127.0.0.1:9`;
    const child = new Deno.Command("script", {
      args: ["-q", "-e", "-c", client, "/dev/null"],
      cwd: new URL("..", import.meta.url).pathname,
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    let text = "";
    const reading = child.stdout.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({ write: (chunk) => void (text += chunk) }),
    );
    const writer = child.stdin.getWriter();
    const type = (keys: string) => writer.write(new TextEncoder().encode(keys));
    const prompts = () => text.split(PROMPT).length - 1;
    await eventually("the first prompt", () => prompts() >= 1, 60_000);
    // "vrsion", Ctrl-A to the start, right arrow, "e": "version".
    await type("vrsion\x01\x1b[Ce\r");
    await eventually("the edited line ran", () => /ivbsnetd \d+\.\d+\.\d+ \(deno/.test(text));
    await eventually("the second prompt", () => prompts() >= 2);
    await type("forget this");
    await eventually("the typed text", () => text.includes("forget this"));
    await type(CTRL_C);
    await eventually("the third prompt", () => prompts() >= 3);
    await type(CTRL_D);
    await writer.close();
    const status = await child.status;
    await reading;
    assert.equal(status.code, 0, text);
    assert.match(text, /forget this\^C/);
    assert.doesNotMatch(text, /unknown command "forget/);
  },
});
