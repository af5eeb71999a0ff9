/**
 * `ivbsnetd proxies [--json]`, `ivbsnetd events [--follow]` and the netdclient
 * `proxies` / `events` commands against a daemon on the fake driver.
 */
import assert from "node:assert/strict";
import { ApiClient } from "../src/cli/api_client.ts";
import { eventsCommand } from "../src/cli/client_actions.ts";
import { runInteractive } from "../src/cli/netdclient.ts";
import { type OneShotIo, runOneShot } from "../src/commands/one_shot.ts";
import type { Terminal } from "../src/cli/prompt.ts";
import { parseConfig } from "../src/daemon/config.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { startServing } from "../src/commands/serve.ts";
import { quietLog } from "./support/operator_fixture.ts";
import { eventually } from "./support/wait.ts";

function startDaemon() {
  const { config } = parseConfig(
    JSON.stringify({
      http: { listen: "127.0.0.1:0" },
      nbd: { devices: 4 },
      ivbs: { proxies: [{ host: "127.0.0.1", port: 11417 }, { host: "127.0.0.1", port: 11418 }] },
    }),
    "test",
  );
  const driver = new FakeMountDriver({
    devices: 4,
    images: { demo: { size: 1 << 30 } },
    users: { demo: "pw" },
  });
  const serving = startServing(config, driver, quietLog);
  return { ...serving, stop: () => serving.daemon.shutdown("test over") };
}

function capture(signal?: AbortSignal) {
  const out: string[] = [];
  const io: OneShotIo = {
    out: { print: (t) => out.push(t) },
    err: { print: (t) => out.push(`stderr: ${t}`) },
    env: () => undefined,
    readStdinLine: () => Promise.resolve(null),
    askSecret: () => Promise.resolve(null),
    signal,
  };
  return { io, out };
}

Deno.test("ivbsnetd proxies prints the known proxies as a table or JSON", async () => {
  const { url, stop } = startDaemon();
  try {
    const table = capture();
    assert.equal(await runOneShot("proxies", ["--server", url], table.io), 0);
    const lines = table.out.join("\n").split("\n");
    assert.match(lines[0], /^PROXY\s+NAME\s+ORIGIN\s+STATE\s+USED BY\s+FAILURES/);
    assert.match(lines[1], /^127\.0\.0\.1:11417\s+-\s+configured\s+idle\s/);
    assert.equal(lines.length, 3);
    const json = capture();
    assert.equal(await runOneShot("proxies", ["--server", url, "--json"], json.io), 0);
    const proxies = JSON.parse(json.out[0]);
    assert.deepEqual(proxies.map((p: { address: string }) => p.address), [
      "127.0.0.1:11417",
      "127.0.0.1:11418",
    ]);
  } finally {
    await stop();
  }
});

Deno.test("ivbsnetd events prints past events, and --follow prints new ones as they happen", async () => {
  const { url, daemon, stop } = startDaemon();
  const abort = new AbortController();
  try {
    await daemon.table.mount({ device: "nbd1", image: "demo", username: "demo", password: "pw" });
    const past = capture();
    assert.equal(await runOneShot("events", ["--server", url], past.io), 0);
    assert.match(past.out.join("\n"), /INFO {2}\[\/dev\/nbd1\] mounted image=demo/);

    const follow = capture(abort.signal);
    const following = eventsCommand(new ApiClient({ server: url }), follow.io.out, {
      follow: true,
      since: daemon.events.lastSeq,
      signal: abort.signal,
    });
    await daemon.table.unmount("nbd1");
    await eventually(
      "the follower printed the unmount",
      () => follow.out.some((line) => / \[\/dev\/nbd1\] unmounted /.test(line)),
    );
    assert.ok(!follow.out.some((line) => / mounted /.test(line)), "nothing before the cursor");
    abort.abort();
    await following;

    const json = capture();
    assert.equal(
      await runOneShot("events", ["--server", url, "--json", "--since", "1"], json.io),
      0,
    );
    assert.ok(json.out.every((line) => JSON.parse(line).seq > 1));
    assert.equal(await runOneShot("events", ["--server", url, "--since", "x"], capture().io), 2);
    assert.equal(await runOneShot("proxies", ["--server", url, "--follow"], capture().io), 2);
  } finally {
    abort.abort();
    await stop();
  }
});

Deno.test("netdclient has proxies and events commands", async () => {
  const { url, daemon, stop } = startDaemon();
  try {
    await daemon.table.mount({ device: "nbd0", image: "demo", username: "demo", password: "pw" });
    const lines = ["proxies", "events", "exit"];
    const shown: string[] = [];
    const terminal: Terminal = {
      write: (text) => shown.push(text),
      readLine: () => Promise.resolve(lines.shift() ?? null),
      readSecret: () => Promise.resolve(null),
    };
    await runInteractive(new ApiClient({ server: url }), terminal);
    const text = shown.join("");
    assert.match(text, /127\.0\.0\.1:11418\s+-\s+configured\s+idle/);
    assert.match(text, /\[\/dev\/nbd0\] mounted/);
  } finally {
    await stop();
  }
});
