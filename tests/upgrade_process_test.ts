/**
 * Restarts and upgrades of the real program, on NBD exports (no kernel
 * needed; tests/kernel/upgrade_test.ts does devices in the NBD VM):
 * - an export added through the API by a user the config does not know (a CSI
 *   volume's) is served again after `kill -9`, SIGTERM and `serve --replace`,
 *   from the credential store, which is the only place its password is kept;
 * - after each restart the state file names the daemon now serving, since
 *   `serve --replace` finds the daemon to replace by it; where it names none
 *   but the export socket answers, `--replace` refuses instead of starting
 *   beside that daemon;
 * - a daemon stopped while it waits for the previous one to leave exits at once;
 * - the daemon of today's main (6320cf8) is replaced by this one, by
 *   `serve --replace` and by SIGTERM then start: every export is served again
 *   and the state file is rewritten in the current format.
 */
import assert from "node:assert/strict";
import { DaemonProcess, type RunResult, USER, writeConfig } from "../bench/rigs/daemon_harness.ts";
import { startIvbsServer } from "../src/ivbs/server/mod.ts";
import { readState, STATE_VERSION } from "../src/daemon/state_file.ts";
import { oldCheckout } from "./support/old_checkout.ts";

const MIB = 1024 * 1024;
/** A user only the API knows, as the CSI plugin's secrets bring it. */
const BOB = { username: "bob", password: "bob-pw-never-logged-7730" };

/**
 * An IVBS test server (4 MiB `images`), a temp dir `base` with the stateDir in
 * it, and a config file for both; `config(base)` adds keys.
 */
async function setup(
  prefix: string,
  { users = [USER], images = ["disk"], config = () => ({}) }: {
    users?: { username: string; password: string }[];
    images?: string[];
    config?: (base: string) => Record<string, unknown>;
  } = {},
) {
  const ivbs = await startIvbsServer({
    users,
    images: images.map((name) => ({ name, size: 4 * MIB })),
    listProxiesIntervalMs: 0,
  });
  const base = await Deno.makeTempDir({ prefix });
  const stateDir = `${base}/state`;
  const { dir, path } = await writeConfig({
    http: { listen: "127.0.0.1:0" },
    ivbs: { proxies: ivbs.addresses(), connectTimeoutMs: 2000 },
    users: [USER],
    stateDir,
    ...config(base),
  });
  return {
    base,
    stateDir,
    path,
    cleanup: async () => {
      await ivbs.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(base, { recursive: true });
    },
  };
}

async function until(what: string, check: () => Promise<boolean>, limitMs = 60_000) {
  const deadline = Date.now() + limitMs;
  while (!(await check().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`gave up waiting: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * The exit of `daemon` (after `signal`, if given); after `limitMs` an error
 * naming `what` instead of a hang (the caller's catch adds every daemon's log).
 */
async function exitOf(
  what: string,
  daemon: DaemonProcess,
  limitMs = 60_000,
  signal?: Deno.Signal,
): Promise<RunResult> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const gaveUp = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`gave up waiting: ${what}`)), limitMs);
  });
  try {
    return await Promise.race([signal ? daemon.stop(signal) : daemon.wait(), gaveUp]);
  } finally {
    clearTimeout(timer);
  }
}

/** `error` with the log of every daemon in `daemons` (each killed first, so its log is whole). */
async function withLogs(error: unknown, daemons: DaemonProcess[]): Promise<Error> {
  const logs = await Promise.all(
    daemons.map(async (d) => `--- daemon pid ${d.pid} ---\n${(await d.stop("SIGKILL")).stderr}`),
  );
  const message = error instanceof Error ? error.message : String(error);
  return new Error(`${message}\n${logs.join("\n")}`, { cause: error });
}

/**
 * The state file names the daemon now serving: `serve --replace` finds the
 * daemon to replace by that pid, so after any restart it must be the new one's.
 */
async function stateNames(stateDir: string, daemon: DaemonProcess): Promise<boolean> {
  return (await readState(stateDir))?.pid === daemon.pid;
}

async function exportStates(url: string): Promise<Record<string, string>> {
  const { exports } = await (await fetch(`${url}/api/exports`)).json() as {
    exports: { name: string; state: string }[];
  };
  return Object.fromEntries(exports.map((e) => [e.name, e.state]));
}

async function ready(url: string, names: string[]): Promise<boolean> {
  const states = await exportStates(url);
  return names.every((name) => states[name] === "ready");
}

async function post(url: string, path: string, body: unknown): Promise<Response> {
  return await fetch(`${url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}

Deno.test(
  "an API export of a user not in the config survives kill -9, SIGTERM and serve --replace through the credential store",
  async () => {
    const credentialsIn = (base: string) => `${base}/run/ivbsnetd/credentials.json`;
    const { base, stateDir, path, cleanup } = await setup("ivbsnetd-credentials-", {
      users: [USER, BOB],
      config: (base) => ({ credentials: { path: credentialsIn(base) } }),
    });
    const credentials = credentialsIn(base);
    const logs: string[] = [];
    let daemon = await DaemonProcess.start(path);
    const started = [daemon];
    try {
      const added = await post(daemon.url, "/api/exports", { name: "csi1", image: "disk", ...BOB });
      assert.equal(added.status, 201, await added.text());
      // Credentials are written first, then the state file.
      await until(
        "the credential store and the state file hold csi1",
        async () =>
          (await Deno.readTextFile(credentials)).includes('"csi1"') &&
          (await Deno.readTextFile(`${stateDir}/mounts.json`)).includes('"csi1"'),
      );
      assert.equal((await Deno.stat(credentials)).mode! & 0o777, 0o600);
      assert.equal((await Deno.stat(`${base}/run/ivbsnetd`)).mode! & 0o777, 0o700);
      const state = await Deno.readTextFile(`${stateDir}/mounts.json`);
      assert.ok(
        state.includes('"bob"') && !state.includes(BOB.password),
        "state: user, no password",
      );

      for (const stop of ["SIGKILL", "SIGTERM"] as const) {
        logs.push((await daemon.stop(stop)).stderr);
        daemon = await DaemonProcess.start(path);
        started.push(daemon);
        await until(`csi1 served again after ${stop}`, () => ready(daemon.url, ["csi1"]));
        await until(
          `the state file names the daemon started after ${stop}`,
          () => stateNames(stateDir, daemon),
        );
      }

      const old = daemon;
      daemon = await DaemonProcess.start(path, { args: ["--replace"] });
      started.push(daemon);
      const left = await exitOf("the old daemon exits after serve --replace", old);
      logs.push(left.stderr);
      assert.equal(left.code, 0, "the old daemon stopped cleanly");
      await until("csi1 served after --replace", () => ready(daemon.url, ["csi1"]));
      await until(
        "the state file names the daemon started with --replace",
        () => stateNames(stateDir, daemon),
      );

      const removed = await fetch(`${daemon.url}/api/exports/csi1`, { method: "DELETE" });
      assert.equal(removed.status, 200, await removed.text());
      await until("removing the export removes its password", async () => {
        try {
          await Deno.stat(credentials);
          return false;
        } catch (error) {
          return error instanceof Deno.errors.NotFound;
        }
      });
    } catch (error) {
      throw await withLogs(error, started);
    } finally {
      logs.push((await daemon.stop()).stderr);
      await cleanup();
    }
    for (const log of logs) assert.ok(!log.includes(BOB.password), "no log line has the password");
  },
);

Deno.test("serve --replace refuses to start beside a daemon the state file does not name, and says why", async () => {
  // Config exports only: nothing for a take-over to record, so no state file names this daemon.
  const { stateDir, path, cleanup } = await setup("ivbsnetd-unnamed-", {
    config: () => ({ exports: { items: [{ name: "vm1", image: "disk", user: USER.username }] } }),
  });
  const running = await DaemonProcess.start(path);
  try {
    await until("vm1 ready", () => ready(running.url, ["vm1"]));
    assert.equal(await readState(stateDir), null, "no state file names the running daemon");

    const refused = await DaemonProcess.start(path, { args: ["--replace"] }).then(
      async (beside) => {
        await beside.stop();
        assert.fail("serve --replace started beside the running daemon");
      },
      (error: Error) => error.message,
    );
    assert.match(refused, /serve exited \(1\) before listening/);
    assert.match(refused, /names no running daemon, but another process serves the export socket/);
    assert.ok(refused.includes(`${stateDir}/nbd.sock`), "the line names the socket");
    assert.ok(await ready(running.url, ["vm1"]), "the running daemon still serves vm1");
  } catch (error) {
    throw await withLogs(error, [running]);
  } finally {
    await running.stop();
    await cleanup();
  }
});

Deno.test("a daemon stopped while it waits for the previous one to leave exits at once, and leaves the previous one serving", async () => {
  const { stateDir, path, cleanup } = await setup("ivbsnetd-stopped-early-");
  const running = await DaemonProcess.start(path);
  const started = [running];
  try {
    const added = await post(running.url, "/api/exports", { name: "api1", image: "disk", ...USER });
    assert.equal(added.status, 201, await added.text());
    await until("the state file names the running daemon", () => stateNames(stateDir, running));
    // Started on the same stateDir, the second daemon listens, then waits (up
    // to 15 s) for the one the state file names to exit before taking over.
    const second = await DaemonProcess.start(path);
    started.push(second);
    const stopped = await exitOf("the second daemon exits on SIGTERM", second, 60_000, "SIGTERM");
    assert.equal(stopped.code, 0, "stopped cleanly");
    assert.ok(
      !stopped.stderr.includes("another daemon still runs on this stateDir"),
      "it stopped waiting for the other daemon when it was told to stop",
    );
    assert.ok(await ready(running.url, ["api1"]), "the first daemon still serves api1");
    assert.ok(await stateNames(stateDir, running), "and the state file still names it");
  } catch (error) {
    throw await withLogs(error, started);
  } finally {
    await running.stop();
    await cleanup();
  }
});

for (const how of ["serve --replace", "SIGTERM, then start"] as const) {
  Deno.test(`upgrade from today's main (${how}): every export is served again, the state file is rewritten in the current format`, async () => {
    const old = await oldCheckout();
    // The config as today's main reads it (its schema is strict: no new keys).
    const { stateDir, path, cleanup } = await setup("ivbsnetd-upgrade-", {
      images: ["disk", "spare"],
      config: () => ({ exports: { items: [{ name: "vm1", image: "disk", user: USER.username }] } }),
    });
    let daemon = await DaemonProcess.start(path, {
      program: [Deno.execPath(), "run", "-A", old.main],
    });
    try {
      await until("vm1 ready under the old daemon", () => ready(daemon.url, ["vm1"]));
      const added = await post(daemon.url, "/api/exports", {
        name: "api1",
        image: "spare",
        ...USER,
      });
      assert.equal(added.status, 201, await added.text());
      await until(
        "the old daemon records api1",
        async () => (await Deno.readTextFile(`${stateDir}/mounts.json`)).includes('"api1"'),
      );
      assert.equal(JSON.parse(await Deno.readTextFile(`${stateDir}/mounts.json`)).version, 1);

      const previous = daemon;
      if (how === "serve --replace") {
        daemon = await DaemonProcess.start(path, { args: ["--replace"] });
        const left = await exitOf("the old daemon exits after serve --replace", previous);
        assert.equal(left.code, 0, "the old daemon stopped cleanly");
      } else {
        assert.equal((await previous.stop("SIGTERM")).code, 0);
        daemon = await DaemonProcess.start(path);
      }
      await until(
        "vm1 and api1 served by the new daemon",
        () => ready(daemon.url, ["vm1", "api1"]),
      );
      await until(
        "the state file is rewritten in the current format",
        async () =>
          JSON.parse(await Deno.readTextFile(`${stateDir}/mounts.json`)).version === STATE_VERSION,
      );
    } finally {
      await daemon.stop();
      await cleanup();
      await old.remove();
    }
  });
}
