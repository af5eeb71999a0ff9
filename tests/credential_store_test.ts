/**
 * The credential store: root-only (0700 directory, 0600 file), written
 * atomically, emptied with the last mount, and refused (with a line that
 * never quotes it) when others could have read or replaced it. The daemon
 * keeps it beside the state file and takes over a device of a user the
 * config does not know with it.
 */
import assert from "node:assert/strict";
import { CredentialStore } from "../src/daemon/credential_store.ts";
import { parseConfig } from "../src/daemon/config.ts";
import { defaultCredentialsPath } from "../src/daemon/config_paths.ts";
import { Daemon } from "../src/daemon/daemon.ts";
import { readState } from "../src/daemon/state_file.ts";
import { PersistentFakeDriver } from "./support/persistent_fake_driver.ts";
import { recorder } from "./support/log.ts";

const SECRET = "s3cret-never-logged";

const SET = {
  mounts: [{ backendId: "ivbsnetd:00aa", username: "bob", password: SECRET }],
  exports: [{ name: "vm1", username: "carol", password: `${SECRET}-2` }],
};

Deno.test("the store is a 0600 file in a 0700 directory, found again by key and user", async () => {
  const base = await Deno.makeTempDir();
  try {
    const path = `${base}/run/ivbsnetd/credentials.json`;
    const store = new CredentialStore(path, recorder());
    await store.write(SET);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(`${base}/run/ivbsnetd`)).mode! & 0o777, 0o700);
    assert.deepEqual([...Deno.readDirSync(`${base}/run/ivbsnetd`)].map((e) => e.name), [
      "credentials.json",
    ], "no temp file left behind");

    const stored = await new CredentialStore(path, recorder()).load();
    assert.equal(stored.mountPassword("ivbsnetd:00aa", "bob"), SECRET);
    assert.equal(stored.mountPassword("ivbsnetd:00aa", "mallory"), undefined, "another user's");
    assert.equal(stored.mountPassword("ivbsnetd:00bb", "bob"), undefined, "another device's");
    assert.equal(stored.exportPassword("vm1", "carol"), `${SECRET}-2`);

    await store.write({ mounts: [], exports: [] });
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound, "empty: the file goes");
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("a store others could read, replace or that is damaged is not used, and the line never quotes it", async () => {
  const base = await Deno.makeTempDir();
  const path = `${base}/credentials.json`;
  const good = JSON.stringify({ version: 1, ...SET });
  const cases: [string, () => Promise<void>, RegExp][] = [
    ["group-readable", async () => {
      await Deno.writeTextFile(path, good, { mode: 0o640 });
      await Deno.chmod(path, 0o640);
    }, /mode 640/],
    ["a symlink", async () => {
      await Deno.writeTextFile(`${base}/elsewhere.json`, good, { mode: 0o600 });
      await Deno.symlink(`${base}/elsewhere.json`, path);
    }, /not a regular file/],
    ["not JSON, quoting a secret", async () => {
      await Deno.writeTextFile(path, `{"password": "${SECRET}"`, { mode: 0o600 });
    }, /not JSON/],
    ["a wrong shape", async () => {
      await Deno.writeTextFile(
        path,
        JSON.stringify({
          version: 1,
          mounts: [{ backendId: 7, username: "bob", password: SECRET }],
        }),
        { mode: 0o600 },
      );
    }, /not a credential file .*mounts\.0\.backendId/],
    ["a newer format", async () => {
      await Deno.writeTextFile(path, JSON.stringify({ ...SET, version: 2 }), { mode: 0o600 });
    }, /not a credential file/],
  ];
  try {
    for (const [what, make, reason] of cases) {
      await Deno.remove(path).catch(() => {});
      await make();
      const log = recorder();
      const stored = await new CredentialStore(path, log).load();
      assert.equal(stored.mountPassword("ivbsnetd:00aa", "bob"), undefined, what);
      assert.equal(log.lines.length, 1, what);
      assert.match(log.lines[0], /^ERROR ignoring the credential store/, what);
      assert.match(log.lines[0], reason, what);
      assert.ok(!log.lines[0].includes(SECRET), `${what}: the line quotes no secret`);
    }
  } finally {
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("the default place: beside the state on the runtime dir, else named after the stateDir", () => {
  assert.equal(defaultCredentialsPath("/run/ivbsnetd", null), "/run/ivbsnetd/credentials.json");
  assert.equal(
    defaultCredentialsPath("/var/lib/ivbsnetd", "/run/ivbsnetd"),
    "/run/ivbsnetd/credentials-var-lib-ivbsnetd.json",
    "a persistent stateDir keeps its secrets on the runtime tmpfs",
  );
  const long = `/${"x".repeat(240)}`;
  assert.match(
    defaultCredentialsPath(long, "/run/ivbsnetd"),
    /^\/run\/ivbsnetd\/credentials-[0-9a-f]{8}\.json$/,
  );
  const config = (extra: object) =>
    parseConfig(JSON.stringify({ stateDir: "/var/lib/ivbsnetd", ...extra }), "t.json").config;
  assert.equal(
    config({ credentials: { keepInStateDir: true } }).credentialsPath,
    "/var/lib/ivbsnetd/credentials.json",
  );
  assert.equal(
    config({ credentials: { path: "/secure/c.json" } }).credentialsPath,
    "/secure/c.json",
  );
  assert.throws(
    () => config({ credentials: { path: "/secure/c.json", keepInStateDir: true } }),
    /not both/,
  );
});

Deno.test("a device mounted by a user not in the config is taken over with the stored password", async () => {
  const dir = await Deno.makeTempDir();
  const kernel = new Map<number, string>();
  const config = parseConfig(
    JSON.stringify({
      users: [{ username: "alice", password: "pw" }],
      stateDir: `${dir}/state`,
      credentials: { path: `${dir}/run/credentials.json` },
    }),
    "t.json",
  ).config;
  try {
    const first = new PersistentFakeDriver(kernel, { bob: SECRET });
    const log = recorder();
    const old = new Daemon({ config, driver: first, log });
    const mounted = await old.table.mount({ image: "disk", username: "bob", password: SECRET });
    await old.saveState();
    const state = await Deno.readTextFile(`${dir}/state/mounts.json`);
    assert.ok(!state.includes(SECRET), "the state file holds no password");
    await old.shutdown("SIGKILL stand-in", { keepDevices: true });

    const next = new Daemon({
      config,
      driver: new PersistentFakeDriver(kernel, { bob: SECRET }),
      log,
    });
    const [outcome] = await next.restore();
    assert.equal(outcome.mount?.device, mounted.device, outcome.error?.message);
    assert.equal(outcome.mount?.username, "bob");
    assert.ok(!log.lines.some((line) => line.includes(SECRET)), "no line carries the password");

    await next.table.unmount(mounted.device);
    await next.saveState(); // queued after the unmount's own write: both are on disk
    assert.equal(await readState(`${dir}/state`), null);
    await assert.rejects(
      Deno.stat(`${dir}/run/credentials.json`),
      Deno.errors.NotFound,
      "the last unmount removes the stored password",
    );
    await next.shutdown("SIGINT");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
