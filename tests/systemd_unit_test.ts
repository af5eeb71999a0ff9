/**
 * The systemd unit in systemd/: it passes `systemd-analyze verify` (skipped
 * where systemd-analyze is missing) and says what the README promises: the
 * daemon reports readiness, SIGTERM is its stop signal (devices kept for the
 * next daemon), a stop for good stays stopped, a crash is restarted, and
 * _netdev mounts come after it. There is no systemd to run it under here, so
 * the restart rules of systemd.service(5) are applied to the unit's text and
 * to the exit statuses the daemon really ends with.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { hasTool, runTool } from "./tools.ts";
import { DaemonProcess, ivbsnetd, writeConfig } from "../bench/rigs/daemon_harness.ts";
import { EXIT_FAILED, EXIT_USAGE } from "../src/commands/exit_codes.ts";
import { serveWith } from "./serve_in_process.ts";

const UNIT = fileURLToPath(new URL("../systemd/ivbsnetd.service", import.meta.url));
const BINARY = "/usr/local/bin/ivbsnetd";
const HAS_ANALYZE = await hasTool("systemd-analyze");
if (!HAS_ANALYZE) console.warn("systemd_unit_test: systemd-analyze is not installed; skipped");

/** `Key=value` settings of the unit, by key (a repeated key keeps every value). */
function settings(text: string): Map<string, string[]> {
  const found = new Map<string, string[]>();
  for (const line of text.split("\n")) {
    const match = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
    if (match) found.set(match[1], [...(found.get(match[1]) ?? []), match[2]]);
  }
  return found;
}

/** How the main process ended: an exit status, or the signal that killed it. */
type Ending = { code: number } | { signal: Deno.Signal };

/** Signals systemd counts as a clean end (systemd.service(5), SuccessExitStatus=). */
const CLEAN_SIGNALS = new Set(["SIGHUP", "SIGINT", "SIGTERM", "SIGPIPE"]);

/**
 * Whether systemd restarts the service after `ending` when nobody ran
 * `systemctl stop`: the table under Restart= in systemd.service(5), for the
 * settings this unit may use (no timeouts or watchdog involved).
 */
function restarts(unit: Map<string, string[]>, ending: Ending): boolean {
  const words = (key: string) => (unit.get(key) ?? []).flatMap((v) => v.split(/\s+/));
  const id = "code" in ending ? String(ending.code) : ending.signal;
  if (words("RestartPreventExitStatus").includes(id)) return false;
  const clean = "code" in ending
    ? ending.code === 0 || words("SuccessExitStatus").includes(id)
    : CLEAN_SIGNALS.has(ending.signal) || words("SuccessExitStatus").includes(id);
  const restart = unit.get("Restart")?.at(-1) ?? "no";
  switch (restart) {
    case "always":
      return true;
    case "on-success":
      return clean;
    case "on-failure":
      return !clean;
    case "on-abnormal":
      return "signal" in ending && !CLEAN_SIGNALS.has(ending.signal);
    case "on-abort":
      return "signal" in ending && !CLEAN_SIGNALS.has(ending.signal);
    default:
      return false;
  }
}

Deno.test({
  name: "systemd-analyze verify finds nothing to say about the unit",
  ignore: !HAS_ANALYZE,
  fn: async () => {
    // verify insists that ExecStart's program exists: stand one in for the launcher.
    const dir = await Deno.makeTempDir();
    try {
      const stub = `${dir}/ivbsnetd`;
      await Deno.writeTextFile(stub, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
      const unit = `${dir}/ivbsnetd.service`;
      await Deno.writeTextFile(unit, (await Deno.readTextFile(UNIT)).replaceAll(BINARY, stub));
      const result = await runTool("systemd-analyze", ["verify", unit]);
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stderr.trim(), "", "verify prints warnings on stderr and still exits 0");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("the unit waits for readiness, runs the installed launcher and keeps devices on stop", async () => {
  const unit = settings(await Deno.readTextFile(UNIT));
  assert.deepEqual(unit.get("Type"), ["notify"]);
  // tools/install.sh writes the launcher there (tests/install_test.ts).
  assert.deepEqual(unit.get("ExecStart"), [`${BINARY} serve --config /etc/ivbsnetd.json`]);
  assert.deepEqual(unit.get("KillSignal"), ["SIGTERM"]);
  assert.deepEqual(unit.get("Before"), ["remote-fs-pre.target"]);
  assert.equal(unit.get("ExecStop"), undefined, "a stop must not detach devices under mounts");
  // SIGHUP re-reads the config (serve.ts); without a handler it would end the daemon.
  assert.deepEqual(unit.get("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
  // The install writes the README there; the unit must point at something that exists.
  assert.deepEqual(unit.get("Documentation"), [
    "file:///usr/local/share/doc/ivbsnetd/README.md",
  ]);
});

Deno.test("a daemon stopped for good stays stopped; a crash, kill -9 or OOM kill is restarted", async () => {
  const unit = settings(await Deno.readTextFile(UNIT));
  const cases: [string, Ending, boolean][] = [
    ["ivbsnetd shutdown, SIGINT, SIGTERM from outside systemd (exit 0)", { code: 0 }, false],
    ["an uncaught error (exit 1, after the usual shutdown)", { code: EXIT_FAILED }, true],
    ["kill -9, the OOM killer", { signal: "SIGKILL" }, true],
    ["a crash of the runtime", { signal: "SIGSEGV" }, true],
    ["an abort", { signal: "SIGABRT" }, true],
    ["a bad config: a restart cannot fix it", { code: EXIT_USAGE }, false],
  ];
  for (const [what, ending, expected] of cases) {
    assert.equal(restarts(unit, ending), expected, what);
  }
});

Deno.test("the exits the unit counts as a stop for good are the ones the daemon makes", async () => {
  // `ivbsnetd shutdown` ends the daemon with exit 0: a clean end, not restarted.
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-unit-" });
  const { dir, path } = await writeConfig({ http: { listen: "127.0.0.1:0" }, stateDir });
  try {
    const daemon = await DaemonProcess.start(path);
    const asked = await ivbsnetd(["shutdown", "--server", daemon.url]);
    assert.equal(asked.code, 0, asked.stderr);
    const ended = await daemon.wait();
    assert.equal(ended.code, 0, ended.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(stateDir, { recursive: true });
  }
  // A config that cannot be read ends with the usage code the unit does not restart.
  const broken = await serveWith(["--config", "/nonexistent/ivbsnetd.json"]);
  assert.equal(broken.code, EXIT_USAGE, broken.stderr.join("\n"));
});
