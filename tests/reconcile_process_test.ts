/**
 * The daemon left alone at boot: `serve` starts with a configured export while
 * no IVBS proxy is up, the proxy starts seconds later on the port the config
 * named, and the export is served, with nobody touching the daemon, within the
 * reconcile backoff's maximum; systemd is told READY=1 after the first pass
 * with a STATUS= that says what waits and why. Then the config is reloaded by
 * SIGHUP and by POST /api/reload (added, removed, unchanged; a broken one is
 * refused and the running state kept).
 */
import assert from "node:assert/strict";
import { DaemonProcess, USER, writeConfig } from "../bench/rigs/daemon_harness.ts";
import { startIvbsServer } from "../src/ivbs/server/mod.ts";
import { captureLog } from "./support/ivbs_fake_proxy.ts";
import { NbdTestClient } from "./support/nbd_test_client.ts";
import { hasTool } from "./support/tools.ts";
import { eventually } from "./support/wait.ts";
import { type EventView, freePort, getJson } from "./support/daemon_api.ts";

const TOKEN = "reconcile-process-token";
const MIB = 1024 * 1024;
const BACKOFF = { initialMs: 200, maxMs: 2_000 };
/** For the attempt itself (connect, login, probe) on a loaded machine. */
const ATTEMPT_SLACK_MS = 3_000;
const HAS_PYTHON = await hasTool("python3");
if (!HAS_PYTHON) console.warn("reconcile_process_test: python3 missing; sd_notify not checked");

interface ExportView {
  name: string;
  state: string;
  reason?: string;
  nextRetryAt?: string;
  attempts?: number;
}

/** A stand-in for systemd: every datagram sent to `path`, in order. */
class NotifyListener {
  readonly #child: Deno.ChildProcess;
  readonly #done: Promise<void>;

  private constructor(child: Deno.ChildProcess, done: Promise<void>, readonly messages: string[]) {
    this.#child = child;
    this.#done = done;
  }

  static async start(path: string): Promise<NotifyListener> {
    const script = [
      "import json, socket, sys",
      "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
      "s.bind(sys.argv[1])",
      "print('bound', flush=True)",
      "while True: print(json.dumps(s.recv(4096).decode()), flush=True)",
    ].join("\n");
    const child = new Deno.Command("python3", {
      args: ["-c", script, path],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const messages: string[] = [];
    let bound!: () => void;
    const isBound = new Promise<void>((resolve) => bound = resolve);
    const done = (async () => {
      let buffer = "";
      for (;;) {
        const { value, done } = await lines.read();
        if (done) return;
        buffer += value;
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line === "bound") bound();
          else messages.push(JSON.parse(line));
        }
      }
    })();
    const listener = new NotifyListener(child, done, messages);
    await isBound;
    return listener;
  }

  async close(): Promise<void> {
    this.#child.kill();
    await this.#done;
    await this.#child.status;
  }
}

function reload(url: string, token?: string): Promise<Response> {
  return fetch(`${url}/api/reload`, {
    method: "POST",
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
}

Deno.test("a configured export waits for IVBS that starts later, is served within the backoff's maximum, and reload adds and removes exports", async () => {
  const port = freePort();
  const base = await Deno.makeTempDir({ prefix: "ivbsnetd-reconcile-" });
  const stateDir = `${base}/state`;
  const socket = `${stateDir}/nbd.sock`;
  const configFor = (exports: { name: string; image: string }[]) => ({
    http: { listen: "127.0.0.1:0", token: TOKEN },
    ivbs: { proxies: [{ host: "127.0.0.1", port }], connectTimeoutMs: 1_000 },
    users: [USER],
    stateDir,
    reconcile: { backoff: BACKOFF },
    exports: { items: exports.map((e) => ({ ...e, user: USER.username })) },
  });
  const { dir, path } = await writeConfig(configFor([{ name: "vm1", image: "disk" }]));
  const notify = HAS_PYTHON ? await NotifyListener.start(`${base}/notify`) : null;
  const daemon = await DaemonProcess.start(path, {
    env: notify ? { NOTIFY_SOCKET: `${base}/notify` } : {},
  });
  let ivbs: Awaited<ReturnType<typeof startIvbsServer>> | null = null;
  let stopped = false;
  const exportsNow = async () =>
    (await getJson<{ exports: ExportView[] }>(`${daemon.url}/api/exports`)).exports;
  const eventsNow = async () =>
    (await getJson<{ events: EventView[] }>(`${daemon.url}/api/events`)).events;
  try {
    // No proxy listens: the export is desired, failing, and retried.
    const failing = await eventually("vm1 failing", async () => {
      const vm1 = (await exportsNow()).find((e) => e.name === "vm1");
      return vm1?.state === "failing" ? vm1 : null;
    });
    assert.match(failing.reason!, /127\.0\.0\.1/);
    assert.ok(failing.nextRetryAt && failing.attempts! >= 1, JSON.stringify(failing));
    if (notify) {
      await eventually("READY=1", () => notify.messages.length > 0);
      assert.equal(notify.messages[0], "READY=1\nSTATUS=0 ready, 1 waiting: IVBS unreachable");
    }

    // Seconds later, IVBS comes up on the port the config names.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    ivbs = await startIvbsServer({
      users: [USER],
      images: [{ name: "disk", size: 4 * MIB }, { name: "small", size: MIB }],
      ports: [port],
      listProxiesIntervalMs: 0,
      log: captureLog(),
    });
    const upAt = Date.now();
    await eventually(
      "vm1 ready",
      async () => (await exportsNow()).find((e) => e.name === "vm1")?.state === "ready",
      BACKOFF.maxMs + ATTEMPT_SLACK_MS + 10_000,
    );
    const client = await NbdTestClient.connect(socket, "vm1");
    try {
      assert.equal(client.size, 4 * MIB);
      assert.equal((await client.read(MIB, 64 * 1024)).length, 64 * 1024, "an NBD client reads it");
    } finally {
      client.conn.close();
    }

    const vm1 = (await eventsNow()).filter((e) =>
      e.component === "reconcile" && e.export === "vm1"
    );
    assert.deepEqual(vm1.map((e) => [e.level, e.message]), [
      ["info", "export attaching"],
      ["warn", "export failing; retrying with backoff"],
      ["info", "export ready"],
    ], "failing and ready once each, however many retries");
    assert.equal(vm1[1].fields.code, "NO_PROXY");
    const tookMs = Date.parse(vm1[2].time) - upAt;
    console.log(
      `reconcile_process_test: vm1 served ${tookMs} ms after IVBS came up ` +
        `(backoff max ${BACKOFF.maxMs} ms, ${vm1[2].fields.attempts} attempts)`,
    );
    assert.ok(tookMs <= BACKOFF.maxMs + ATTEMPT_SLACK_MS, `served ${tookMs} ms after IVBS came up`);
    if (notify) {
      await eventually("STATUS=1 ready", () => notify.messages.includes("STATUS=1 ready"));
    }

    // SIGHUP: an export added to the file comes up, vm1 is not touched.
    await Deno.writeTextFile(
      path,
      JSON.stringify(configFor([{ name: "vm1", image: "disk" }, { name: "vm2", image: "small" }])),
    );
    Deno.kill(daemon.pid, "SIGHUP");
    await eventually(
      "vm2 ready",
      async () => (await exportsNow()).find((e) => e.name === "vm2")?.state === "ready",
    );
    assert.equal(
      (await eventsNow()).filter((e) => e.export === "vm1" && e.message === "export ready").length,
      1,
      "vm1 untouched by the reload",
    );

    // POST /api/reload: vm1 dropped from the file is removed, vm2 unchanged.
    await Deno.writeTextFile(path, JSON.stringify(configFor([{ name: "vm2", image: "small" }])));
    assert.equal((await reload(daemon.url)).status, 401, "needs the token");
    const answer = await reload(daemon.url, TOKEN);
    assert.equal(answer.status, 200);
    assert.deepEqual(await answer.json(), {
      added: [],
      removed: [`export vm1: disk (${USER.username})`],
      unchanged: [`export vm2: small (${USER.username})`],
      restartNeeded: [],
    });
    assert.deepEqual((await exportsNow()).map((e) => [e.name, e.state]), [["vm2", "ready"]]);
    await assert.rejects(NbdTestClient.connect(socket, "vm1"), "vm1 is no longer served");

    // A broken config is refused with the reason; what runs stays.
    await Deno.writeTextFile(path, JSON.stringify({ exports: { items: 5 } }));
    const refused = await reload(daemon.url, TOKEN);
    assert.equal(refused.status, 400);
    assert.match((await refused.json()).error, /exports\.items/);
    assert.deepEqual((await exportsNow()).map((e) => [e.name, e.state]), [["vm2", "ready"]]);

    const result = await daemon.stop("SIGINT");
    stopped = true;
    assert.equal(result.code, 0, result.stderr);
    assert.match(
      result.stderr,
      /ERROR +\[daemon\] config reload refused; the running state is kept/,
    );
    assert.ok(!result.stderr.includes(USER.password), "no password in the log");
    assert.ok(!result.stderr.includes(TOKEN), "no token in the log");
  } finally {
    if (!stopped) await daemon.stop();
    await notify?.close();
    await ivbs?.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(base, { recursive: true });
  }
});
