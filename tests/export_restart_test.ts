/**
 * NBD exports ride through a daemon restart: QEMU's NBD client, opened with
 * `reconnect-delay`, keeps writing and reading back a pattern while the daemon
 * serving its export is killed (`kill -9`) and started again on the same
 * config. The export socket keeps its path, so the client reconnects and
 * replays what was in flight; the data lives in IVBS, not in the daemon.
 */
import assert from "node:assert/strict";
import { DaemonProcess, startIvbs, USER, writeConfig } from "../bench/rigs/daemon_harness.ts";
import { hasTool, runTool } from "./support/tools.ts";
import { eventually } from "./support/wait.ts";

/** A daemon (re)starting is slow on a loaded host: waits for one get this long. */
const RESTART_MS = 30_000;

const MIB = 1024 * 1024;
const BLOCKS = 48;
const BLOCK = 64 * 1024;

/** qemu-io commands: write a pattern to each block, read it back, pause a little. */
function patternCommands(): string[] {
  const commands: string[] = [];
  for (let i = 0; i < BLOCKS; i++) {
    const pattern = 1 + (i % 250);
    commands.push(`write -P ${pattern} ${i * BLOCK} ${BLOCK}`);
    commands.push(`read -P ${pattern} ${i * BLOCK} ${BLOCK}`);
    commands.push("sleep 20");
  }
  return commands;
}

/** Checks the whole pattern with a fresh client (no reconnect needed). */
function verifyCommands(): string[] {
  return Array.from(
    { length: BLOCKS },
    (_, i) => `read -P ${1 + (i % 250)} ${i * BLOCK} ${BLOCK}`,
  );
}

async function qemuIo(imageOpts: string, commands: string[]) {
  return await runTool("qemu-io", [
    "--image-opts",
    ...commands.flatMap((c) => ["-c", c]),
    imageOpts,
  ]);
}

/** True once the daemon at `url` lists export `name` as ready. */
async function exportReady(url: string, name: string): Promise<boolean> {
  const response = await fetch(`${url}/api/exports`);
  const { exports } = await response.json() as { exports: { name: string; state: string }[] };
  return exports.some((e) => e.name === name && e.state === "ready");
}

const HAS_QEMU_IO = await hasTool("qemu-io");
if (!HAS_QEMU_IO) console.warn("export_restart_test: qemu-io is not installed; skipped");

for (const stop of ["SIGKILL", "SIGTERM"] as const) {
  Deno.test({
    name: `a QEMU client with reconnect-delay keeps its pattern through ${stop} and restart`,
    ignore: !HAS_QEMU_IO,
    fn: () => restartUnderQemu(stop),
  });
}

async function restartUnderQemu(stop: "SIGKILL" | "SIGTERM"): Promise<void> {
  const ivbs = await startIvbs([{ name: "disk", size: 16 * MIB }]);
  const base = await Deno.makeTempDir({ prefix: "ivbsnetd-export-restart-" });
  const socket = `${base}/state/nbd.sock`;
  const { dir, path } = await writeConfig({
    http: { listen: "127.0.0.1:0" },
    ivbs: { proxies: ivbs.addresses(), connectTimeoutMs: 2000 },
    users: [USER],
    stateDir: `${base}/state`,
    exports: { items: [{ name: "vm1", image: "disk", user: USER.username }] },
  });
  const opts = (delay: number) =>
    `driver=nbd,server.type=unix,server.path=${socket},export=vm1,reconnect-delay=${delay}`;
  let daemon = await DaemonProcess.start(path);
  try {
    await eventually("export vm1 ready", () => exportReady(daemon.url, "vm1"), RESTART_MS);
    let clientDone = false;
    const client = qemuIo(opts(30), patternCommands()).finally(() => clientDone = true);
    // The daemon goes down mid-run: once IVBS has seen a quarter of the writes.
    await eventually(
      "the client's writes reach IVBS",
      () => (ivbs.stats.requests.WRITE ?? 0) >= BLOCKS / 4 || clientDone,
      RESTART_MS,
    );
    if (clientDone) assert.fail(`the client ended early: ${JSON.stringify(await client)}`);
    const stopped = await daemon.stop(stop);
    assert.equal(stopped.code, stop === "SIGKILL" ? 137 : 0, stopped.stderr);
    daemon = await DaemonProcess.start(path);

    const run = await client;
    assert.equal(run.code, 0, run.stderr + run.stdout);
    const { exports } = await (await fetch(`${daemon.url}/api/exports`)).json() as {
      exports: { name: string; state: string; bytesWritten: number }[];
    };
    assert.ok(
      exports.some((e) => e.name === "vm1" && e.state === "ready" && e.bytesWritten > 0),
      `the client went on writing through the new daemon: ${JSON.stringify(exports)}\n${
        run.stdout.slice(-600)
      }${run.stderr}`,
    );
    assert.doesNotMatch(run.stdout + run.stderr, /verification failed|error/i);
    assert.equal(run.stdout.match(/^wrote 65536\/65536 bytes/gm)?.length, BLOCKS);
    assert.equal(run.stdout.match(/^read 65536\/65536 bytes/gm)?.length, BLOCKS);
    assert.ok(
      (ivbs.stats.requests.WRITE ?? 0) >= BLOCKS,
      "writes reached IVBS through both daemons",
    );

    const check = await qemuIo(opts(0), verifyCommands());
    assert.equal(check.code, 0, check.stderr);
    assert.doesNotMatch(check.stdout, /verification failed/);
    assert.equal(check.stdout.match(/^read 65536\/65536 bytes/gm)?.length, BLOCKS);
  } finally {
    await daemon.stop();
    await ivbs.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(base, { recursive: true });
  }
}

/** The daemon's exports: name → state. */
async function exportStates(url: string): Promise<Record<string, string>> {
  const { exports } = await (await fetch(`${url}/api/exports`)).json() as {
    exports: { name: string; state: string }[];
  };
  return Object.fromEntries(exports.map((e) => [e.name, e.state]));
}

Deno.test("an export added through the API is served again after kill -9 and SIGTERM, and forgotten after a shutdown", async () => {
  const ivbs = await startIvbs([{ name: "disk", size: 4 * MIB }, { name: "spare", size: 4 * MIB }]);
  const base = await Deno.makeTempDir({ prefix: "ivbsnetd-export-state-" });
  const stateDir = `${base}/state`;
  const { dir, path } = await writeConfig({
    http: { listen: "127.0.0.1:0" },
    ivbs: { proxies: ivbs.addresses(), connectTimeoutMs: 2000 },
    users: [USER],
    stateDir,
    exports: { items: [{ name: "vm1", image: "disk", user: USER.username }] },
  });
  let daemon = await DaemonProcess.start(path);
  try {
    await eventually("export vm1 ready", () => exportReady(daemon.url, "vm1"), RESTART_MS);
    const added = await fetch(`${daemon.url}/api/exports`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ name: "api1", image: "spare", ...USER, readOnly: true }),
    });
    assert.equal(added.status, 201, await added.text());
    // The state file is written right after the export is added, not before the answer.
    let state = "";
    await eventually("the state file records api1", async () => {
      state = await Deno.readTextFile(`${stateDir}/mounts.json`).catch(() => "");
      return state.includes('"api1"');
    }, RESTART_MS);
    assert.ok(!state.includes(USER.password), "the state file holds no password");
    assert.equal(
      (await Deno.stat(`${stateDir}/mounts.json`)).mode! & 0o777,
      0o600,
      "the state file is 0600",
    );
    assert.deepEqual(JSON.parse(state).exports, [
      { name: "api1", image: "spare", username: USER.username, readOnly: true },
    ], "only the export the config does not list is recorded");

    for (const stop of ["SIGKILL", "SIGTERM"] as const) {
      await daemon.stop(stop);
      daemon = await DaemonProcess.start(path);
      await eventually(`both exports back after ${stop}`, async () => {
        const states = await exportStates(daemon.url);
        return states.vm1 === "ready" && states.api1 === "ready";
      }, RESTART_MS);
    }

    const shutdown = await fetch(`${daemon.url}/api/shutdown`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: "{}",
    });
    assert.equal(shutdown.status, 202);
    assert.equal((await daemon.wait()).code, 0);
    daemon = await DaemonProcess.start(path);
    await eventually("export vm1 ready", () => exportReady(daemon.url, "vm1"), RESTART_MS);
    assert.deepEqual(await exportStates(daemon.url), { vm1: "ready" }, "a shutdown forgets api1");
  } finally {
    await daemon.stop();
    await ivbs.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(base, { recursive: true });
  }
});
