/**
 * The state file's format versions: the daemon reads every format an earlier
 * ivbsnetd wrote, writes the newest, and refuses a newer one without touching
 * it. `fixtures/state_v1_main_6320cf8.json` was written by `writeState` of
 * ivbsnetd at commit 6320cf8 (today's main when format 2 came), run on two
 * device records and two export records; only the values are made up.
 */
import assert from "node:assert/strict";
import { parseConfig } from "../src/daemon/config.ts";
import { Daemon } from "../src/daemon/daemon.ts";
import {
  parseState,
  readState,
  STATE_VERSION,
  StateFileError,
  statePath,
  writeState,
} from "../src/daemon/state_file.ts";
import { PersistentFakeDriver } from "./support/persistent_fake_driver.ts";
import { recorder } from "./support/log.ts";

const FIXTURE_V1 = new URL("./fixtures/state_v1_main_6320cf8.json", import.meta.url);

Deno.test("format 1, as today's main writes it, reads as the current format", async () => {
  const text = await Deno.readTextFile(FIXTURE_V1);
  assert.equal(JSON.parse(text).version, 1, "the fixture is format 1");
  const state = parseState(text, "fixture");
  assert.equal(state.version, STATE_VERSION);
  assert.deepEqual(state.mounts.map((m) => [m.device, m.backendId, m.username, m.connections]), [
    ["/dev/nbd0", "ivbsnetd:5f0c2a9e41d7b386", "alice", 1],
    ["/dev/nbd3", "ivbsnetd:0a9b8c7d6e5f4a3b", "carol", 1],
  ]);
  assert.deepEqual(state.mounts[1].options, {
    blockSize: 4096,
    timeoutS: 30,
    deadConnTimeoutS: 600,
  });
  assert.deepEqual(state.exports.map((e) => [e.name, e.image, e.username, e.readOnly]), [
    ["vm1", "disk1", "alice", false],
    ["scratch", "scratch", "carol", true],
  ]);
  // Format 1 files from before exports existed have no "exports" key.
  const { exports: _, ...withoutExports } = JSON.parse(text);
  assert.deepEqual(parseState(JSON.stringify(withoutExports), "fixture").exports, []);
});

Deno.test("the daemon writes the current format, which reads back as it was written", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const old = parseState(await Deno.readTextFile(FIXTURE_V1), "fixture");
    await writeState(dir, old.mounts, old.exports);
    const written = JSON.parse(await Deno.readTextFile(statePath(dir)));
    assert.equal(written.version, STATE_VERSION);
    assert.equal(written.mounts[0].connections, 1);
    const again = await readState(dir);
    assert.deepEqual(again?.mounts, old.mounts);
    assert.deepEqual(again?.exports, old.exports);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("hostile or broken state files are a StateFileError that says what is wrong", async () => {
  const v1 = JSON.parse(await Deno.readTextFile(FIXTURE_V1));
  const mount = v1.mounts[0];
  const cases: [string, string, RegExp][] = [
    ["not JSON", "{", /not JSON/],
    ["an array", "[]", /no format version/],
    ["no version", JSON.stringify({ ...v1, version: undefined }), /no format version/],
    ["a string version", JSON.stringify({ ...v1, version: "2" }), /no format version/],
    ["version 0", JSON.stringify({ ...v1, version: 0 }), /no format version/],
    ["version 1.5", JSON.stringify({ ...v1, version: 1.5 }), /no format version/],
    ["no mounts", JSON.stringify({ ...v1, mounts: undefined }), /format 1 .*mounts/],
    [
      "not an nbd device",
      JSON.stringify({ ...v1, mounts: [{ ...mount, device: "/dev/sda" }] }),
      /format 1 .*device/,
    ],
    [
      "a negative size",
      JSON.stringify({ ...v1, mounts: [{ ...mount, sizeBytes: -1 }] }),
      /format 1 .*sizeBytes/,
    ],
    [
      "format 2 without connections",
      JSON.stringify({ ...v1, version: 2 }),
      /format 2 .*connections/,
    ],
    [
      "format 2 with 0 connections",
      JSON.stringify({ ...v1, version: 2, mounts: [{ ...mount, connections: 0 }] }),
      /format 2 .*connections/,
    ],
  ];
  for (const [what, text, message] of cases) {
    assert.throws(
      () => parseState(text, "mounts.json"),
      (error: unknown) =>
        error instanceof StateFileError && error.reason === "unreadable" &&
        message.test(error.message),
      what,
    );
  }
});

Deno.test("a newer format is refused with one clear line and never overwritten", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const newer = JSON.stringify({ version: STATE_VERSION + 1, pid: 1, mounts: [], future: true });
    await Deno.writeTextFile(statePath(dir), newer, { mode: 0o600 });
    await assert.rejects(
      readState(dir),
      (error: unknown) => error instanceof StateFileError && error.reason === "newer",
    );
    const log = recorder();
    const config = parseConfig(
      JSON.stringify({
        users: [{ username: "alice", password: "pw" }],
        stateDir: dir,
        credentials: { path: `${dir}/credentials.json` },
      }),
      "t.json",
    ).config;
    const daemon = new Daemon({ config, driver: new PersistentFakeDriver(new Map()), log });
    assert.deepEqual(await daemon.restore(), []);
    const refusals = log.lines.filter((l) => l.includes("state file from a newer ivbsnetd"));
    assert.equal(refusals.length, 1, log.lines.join("\n"));
    assert.match(
      refusals[0],
      /^ERROR .*format 3, written by a newer ivbsnetd; this one reads formats 1 to 2/,
    );

    await daemon.table.mount({ image: "disk", username: "alice", password: "pw" });
    await daemon.saveState();
    assert.equal(await Deno.readTextFile(statePath(dir)), newer, "left exactly as it was");
    await daemon.shutdown("SIGINT");
    assert.equal(await Deno.readTextFile(statePath(dir)), newer, "even by a shutdown for good");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
