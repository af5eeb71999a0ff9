/**
 * The one check of "is the pid in the state file still a daemon?"
 * (src/daemon/daemon_process.ts), used by restore() and `serve --replace`: a
 * live process that is not ivbsnetd `serve` (a recycled pid) is no daemon, a
 * real `serve` process is one until it exits.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parseConfig } from "../src/daemon/config.ts";
import { Daemon } from "../src/daemon/daemon.ts";
import { daemonGone, isDaemonCommandLine, isDaemonProcess } from "../src/daemon/daemon_process.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { type MountRecord, statePath, writeState } from "../src/daemon/state_file.ts";
import type { Logger } from "../src/log.ts";

const MAIN = fileURLToPath(new URL("../main.ts", import.meta.url));

Deno.test("isDaemonCommandLine accepts only ivbsnetd's serve, however it was started", () => {
  const cases: [string[], boolean][] = [
    [["deno", "run", "-A", "main.ts", "serve", "--config", "/etc/ivbsnetd.json"], true],
    [["/usr/bin/deno", "run", "-A", "/work/main/main.ts", "serve"], true],
    [["deno", "run", "-A", "/usr/local/lib/ivbsnetd/ivbsnetd.js", "serve", "--replace"], true],
    [["/usr/local/bin/ivbsnetd", "serve", "--config", "/etc/ivbsnetd.json"], true],
    [["dist/ivbsnetd", "serve"], true],
    [["sleep", "60"], false],
    [["sh", "-c", "sleep 60", "serve"], false],
    [["python3", "-m", "http.server", "serve"], false],
    [["deno", "run", "-A", "main.ts", "client"], false],
    [["deno", "test", "-A", "tests/"], false],
    [["/usr/local/bin/ivbsnetd-serve"], false],
    [["notivbsnetd", "serve"], false],
    [[""], false],
    [[], false],
  ];
  for (const [argv, expected] of cases) {
    assert.equal(isDaemonCommandLine(argv), expected, JSON.stringify(argv));
  }
});

Deno.test("a live process that is not ivbsnetd is no daemon, nor is a pid nobody has", async () => {
  const sleeper = new Deno.Command("sleep", { args: ["60"] }).spawn();
  try {
    assert.equal(await isDaemonProcess(sleeper.pid), false);
    assert.equal(await daemonGone(sleeper.pid, 0), true, "nothing to wait for");
  } finally {
    sleeper.kill("SIGKILL");
    await sleeper.status;
  }
  assert.equal(await isDaemonProcess(sleeper.pid), false, "reaped");
  assert.equal(await isDaemonProcess(0), false);
  assert.equal(await isDaemonProcess(-1), false);
  assert.equal(await isDaemonProcess(2 ** 40), false);
});

Deno.test("a running `deno run main.ts serve` is a daemon until it exits", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-pid-" });
  const config = `${dir}/config.json`;
  await Deno.writeTextFile(
    config,
    JSON.stringify({ http: { listen: "127.0.0.1:0" }, stateDir: `${dir}/state` }),
    { mode: 0o600 },
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "serve", "--config", config],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
    env: { IVBSNETD_LOG: "error" },
  }).spawn();
  try {
    // Once it prints its address it is certainly past any exec of deno's own.
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes("listening on")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`serve exited before listening: ${seen}`);
      seen += value;
    }
    reader.releaseLock();
    assert.equal(await isDaemonProcess(child.pid), true);
    assert.equal(await daemonGone(child.pid, 0), false, "still running after no wait");
    child.kill("SIGTERM");
    assert.equal(await daemonGone(child.pid, 30_000, 20), true);
    assert.equal((await child.status).code, 0);
  } finally {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
    await child.status;
    await child.stdout.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("restore takes over a state file whose pid was recycled by another program", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-pid-" });
  const sleeper = new Deno.Command("sleep", { args: ["60"] }).spawn();
  try {
    const record: MountRecord = {
      device: "/dev/nbd2",
      index: 2,
      backendId: "ivbsnetd:0011223344556677",
      image: "disk",
      username: "alice",
      readOnly: false,
      sizeBytes: 1 << 20,
      options: { blockSize: 4096, timeoutS: 0, deadConnTimeoutS: 120 },
    };
    await writeState(dir, [record]);
    // The daemon that wrote it is gone; its pid now belongs to `sleep`.
    const path = statePath(dir);
    const state = JSON.parse(await Deno.readTextFile(path));
    await Deno.writeTextFile(path, JSON.stringify({ ...state, pid: sleeper.pid }));

    const lines: string[] = [];
    const keep = (level: string) => (message: string) => void lines.push(`${level} ${message}`);
    const log: Logger = {
      debug: keep("DEBUG"),
      info: keep("INFO"),
      warn: keep("WARN"),
      error: keep("ERROR"),
    };
    const config = parseConfig(
      JSON.stringify({ users: [{ username: "alice", password: "pw" }], stateDir: dir }),
      "test.json",
    ).config;
    const daemon = new Daemon({
      config,
      driver: new FakeMountDriver({ devices: 4, images: {}, users: {} }),
      log,
    });
    const [outcome] = await daemon.restore();
    assert.match(outcome.error?.message ?? "", /\/dev\/nbd2 is gone/);
    assert.ok(!lines.some((l) => l.includes("another daemon still runs")), lines.join("\n"));
    assert.ok(lines.some((l) => l.includes("taking over devices from the previous daemon")));
    await daemon.shutdown("test");
  } finally {
    sleeper.kill("SIGKILL");
    await sleeper.status;
    await Deno.remove(dir, { recursive: true });
  }
});
