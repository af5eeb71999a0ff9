/**
 * The one check of "is the pid in the state file still a daemon?"
 * (src/daemon/daemon_process.ts), used by restore() and `serve --replace`: a
 * live process that is not ivbsnetd `serve` (a recycled pid) is no daemon, a
 * real `serve` process is one until it exits.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/daemon/config.ts";
import { Daemon } from "../src/daemon/daemon.ts";
import { daemonGone, isDaemonCommandLine, isDaemonProcess } from "../src/daemon/daemon_process.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { type MountRecord, statePath, writeState } from "../src/daemon/state_file.ts";
import { captureLog } from "./support/ivbs_fake_proxy.ts";
import { DaemonProcess, writeConfig } from "../bench/rigs/daemon_harness.ts";

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
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-pid-" });
  const { dir, path } = await writeConfig({ http: { listen: "127.0.0.1:0" }, stateDir });
  try {
    // It printed its address: well past any exec of deno's own.
    const daemon = await DaemonProcess.start(path, { env: { IVBSNETD_LOG: "error" } });
    assert.equal(await isDaemonProcess(daemon.pid), true);
    assert.equal(await daemonGone(daemon.pid, 0), false, "still running after no wait");
    const ended = daemon.stop("SIGTERM");
    assert.equal(await daemonGone(daemon.pid, 30_000, 20), true);
    assert.equal((await ended).code, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(stateDir, { recursive: true });
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
      connections: 1,
    };
    await writeState(dir, [record]);
    // The daemon that wrote it is gone; its pid now belongs to `sleep`.
    const path = statePath(dir);
    const state = JSON.parse(await Deno.readTextFile(path));
    await Deno.writeTextFile(path, JSON.stringify({ ...state, pid: sleeper.pid }));

    const log = captureLog();
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
    const messages = log.lines.map((l) => l.message);
    assert.ok(!messages.some((m) => m.includes("another daemon still runs")), messages.join("\n"));
    assert.ok(messages.includes("taking over devices from the previous daemon"));
    await daemon.shutdown("test");
  } finally {
    sleeper.kill("SIGKILL");
    await sleeper.status;
    await Deno.remove(dir, { recursive: true });
  }
});
