/**
 * The systemd unit in systemd/: it passes `systemd-analyze verify` (skipped
 * where systemd-analyze is missing) and says what the README promises: the
 * daemon reports readiness, SIGTERM is its stop signal (devices kept for the
 * next daemon), a crash is restarted, and _netdev mounts come after it.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { hasTool, runTool } from "./tools.ts";

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

Deno.test({
  name: "systemd-analyze verify finds nothing to say about the unit",
  ignore: !HAS_ANALYZE,
  fn: async () => {
    // verify insists that ExecStart's program exists: stand one in for the binary.
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

Deno.test("the unit waits for readiness, keeps devices on stop and restarts a crashed daemon", async () => {
  const unit = settings(await Deno.readTextFile(UNIT));
  assert.deepEqual(unit.get("Type"), ["notify"]);
  assert.deepEqual(unit.get("ExecStart"), [`${BINARY} serve --config /etc/ivbsnetd.json`]);
  assert.deepEqual(unit.get("KillSignal"), ["SIGTERM"]);
  assert.deepEqual(unit.get("Restart"), ["always"]);
  assert.deepEqual(unit.get("Before"), ["remote-fs-pre.target"]);
  assert.equal(unit.get("ExecStop"), undefined, "a stop must not detach devices under mounts");
  assert.equal(unit.get("ExecReload"), undefined, "there is no reload; a restart is safe");
});
