/**
 * The state file names the daemon that serves its stateDir: `serve --replace`
 * finds the daemon to replace by the file's pid alone, so a daemon that takes
 * the stateDir over must write the file back with its own pid at once, even
 * when nothing it took over changes (API exports and no devices). Before
 * 09b80a6 it did not: after `kill -9` and a restart the file still named the
 * killed daemon, and `serve --replace` started beside the running one.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/daemon/config.ts";
import { CredentialStore } from "../src/daemon/credential_store.ts";
import { Daemon } from "../src/daemon/daemon.ts";
import { readState, STATE_FILE, STATE_VERSION } from "../src/daemon/state_file.ts";
import { PersistentFakeDriver } from "./support/persistent_fake_driver.ts";
import { recorder } from "./support/log.ts";

const BOB = { username: "bob", password: "bob-pw-state-owner-4410" };

/** The pid of a process that has exited: what a `kill -9`ed daemon leaves in the file. */
async function deadPid(): Promise<number> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["--version"],
    stdout: "null",
    stderr: "null",
  }).spawn();
  await child.status;
  return child.pid;
}

Deno.test("a daemon that takes API exports and no devices over from a killed daemon writes the state file with its own pid", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-state-owner-" });
  const stateDir = `${dir}/state`;
  const credentials = `${dir}/run/credentials.json`;
  const csi1 = { name: "csi1", image: "disk", username: BOB.username, readOnly: false };
  try {
    // What the killed daemon left: its pid, one API export, and that export's password.
    await Deno.mkdir(stateDir, { mode: 0o700 });
    const killed = await deadPid();
    await Deno.writeTextFile(
      `${stateDir}/${STATE_FILE}`,
      JSON.stringify({
        version: STATE_VERSION,
        pid: killed,
        writtenAt: new Date().toISOString(),
        mounts: [],
        exports: [csi1],
      }),
      { mode: 0o600 },
    );
    await new CredentialStore(credentials, recorder()).write({
      mounts: [],
      exports: [{ name: "csi1", ...BOB }],
    });
    const { config } = parseConfig(
      JSON.stringify({ stateDir, credentials: { path: credentials } }),
      "(test)",
    );
    const log = recorder();
    const daemon = new Daemon({
      config,
      driver: new PersistentFakeDriver(new Map(), { bob: BOB.password }),
      log,
    });
    try {
      assert.deepEqual(await daemon.restore(), [], "no device to take over");
      const state = await readState(stateDir);
      assert.equal(state?.pid, Deno.pid, `the file still names pid ${state?.pid}, not this daemon`);
      assert.deepEqual(state?.exports, [csi1], "the export stays recorded for the next daemon");
      assert.ok(!log.lines.some((line) => line.includes(BOB.password)), "no line has the password");
    } finally {
      await daemon.shutdown("test over");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
