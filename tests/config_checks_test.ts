/**
 * Risky configs as an operator (or an attacker who can edit a file) would
 * write them: each one stops `serve` with exit code 2 and one line on stderr
 * that names the problem and never carries a secret from the file.
 */
import assert from "node:assert/strict";
import { loadConfig, MAX_TIMER_MS, parseConfig } from "../src/daemon/config.ts";
import { jsonSyntaxWhere, mixedFormatKeys } from "../src/daemon/config_checks.ts";
import { looseMode } from "../src/file_mode.ts";
import { serveWith } from "./support/serve_in_process.ts";

const SECRET = "hunter2-Pa55-secret";
const TOKEN_SECRET = "tok3n-that-must-not-leak";

const USERS = [{ username: "alice", password: SECRET }];

/** Each risky config, as the file text, and what its one line must say. */
const RISKY: Record<string, [string, RegExp]> = {
  "mixed 2013 and current keys (the 2013 reading would drop the token)": [
    JSON.stringify({
      Mounted: [{ NbdDevice: "/dev/nbd0", ImageName: "vm" }],
      User: [{ Username: "alice", Password: SECRET }],
      http: { listen: "127.0.0.1:0", token: TOKEN_SECRET },
    }),
    /mixes 2013 keys \(Mounted, User\) with current keys \(http\); use one format/,
  ],
  "non-loopback listen without a token": [
    JSON.stringify({ http: { listen: "0.0.0.0:0" }, users: USERS }),
    /http\.listen 0\.0\.0\.0:0 is not loopback and no http\.token is set/,
  ],
  "listen on every interface written as :port": [
    JSON.stringify({ http: { listen: ":0" } }),
    /http\.listen 0\.0\.0\.0:0 is not loopback/,
  ],
  "a timer beyond 2^31-1 ms": [
    JSON.stringify({ ivbs: { connectTimeoutMs: 2 ** 31 }, users: USERS }),
    /ivbs\.connectTimeoutMs: connectTimeoutMs must be at most 2147483647 ms/,
  ],
  "an I/O timeout beyond 2^31-1 ms": [
    JSON.stringify({ ivbs: { ioTimeoutMs: 1e12 } }),
    /ivbs\.ioTimeoutMs: ioTimeoutMs must be at most 2147483647 ms/,
  ],
  "a backoff beyond 2^31-1 ms": [
    JSON.stringify({ ivbs: { backoff: { maxMs: 2 ** 32 } } }),
    /ivbs\.backoff\.maxMs: maxMs must be at most/,
  ],
  "a JSON syntax error right after a password": [
    `{\n  "users": [{"username": "alice", "password": ${SECRET}}]\n}`,
    /not valid JSON: line 2 column 47$/,
  ],
  "a JSON syntax error inside a password": [
    `{"users": [{"username": "alice", "password": "${SECRET}`,
    /not valid JSON: line 1 column \d+$/,
  ],
};

Deno.test("each risky config stops serve with exit 2 and one line without a secret", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-risky-" });
  try {
    for (const [name, [text, pattern]] of Object.entries(RISKY)) {
      const path = `${dir}/c.json`;
      await Deno.writeTextFile(path, text, { mode: 0o600 });
      const { code, stderr } = await serveWith(["--config", path]);
      assert.equal(code, 2, name);
      assert.equal(stderr.length, 1, `${name}: ${stderr.join(" | ")}`);
      assert.match(stderr[0], pattern, name);
      assert.doesNotMatch(stderr[0], new RegExp(`${SECRET}|${TOKEN_SECRET}|hunter`), name);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--listen on a public address without a token is refused too", async () => {
  const refused = await serveWith(["--listen", "0.0.0.0:0"]);
  assert.equal(refused.code, 2);
  assert.deepEqual(refused.stderr.length, 1);
  assert.match(refused.stderr[0], /not loopback and no http\.token is set/);
  const v6 = await serveWith(["--listen", "[::]:0"]);
  assert.equal(v6.code, 2);
  assert.match(v6.stderr[0], /http\.listen \[::\]:0 is not loopback/);
});

Deno.test("timers up to 2^31-1 ms are accepted", () => {
  const { config } = parseConfig(
    JSON.stringify({ ivbs: { connectTimeoutMs: MAX_TIMER_MS, ioTimeoutMs: 0 } }),
    "t.json",
  );
  assert.equal(config.ivbs.connectTimeoutMs, MAX_TIMER_MS);
});

Deno.test("mixedFormatKeys finds both halves; one format alone is not mixed", () => {
  assert.deepEqual(mixedFormatKeys({ User: [], users: [], nbd: {} }), {
    legacy: ["User"],
    current: ["nbd", "users"],
  });
  assert.equal(mixedFormatKeys({ User: [], Mounted: [], LogLevel: 1 }), null);
  assert.equal(mixedFormatKeys({ users: [] }), null);
});

Deno.test("jsonSyntaxWhere gives a place, never the text", () => {
  const text = `{"password": "${SECRET}`;
  let error: unknown;
  try {
    JSON.parse(text);
  } catch (e) {
    error = e;
  }
  const where = jsonSyntaxWhere(error, text);
  assert.match(where, /^line 1 column \d+$/);
  assert.equal(
    jsonSyntaxWhere(new SyntaxError("Unexpected end of JSON input"), ""),
    "unexpected end of the file",
  );
});

Deno.test("loadConfig warns when a config is writable by group or others, secrets or not", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-mode-" });
  try {
    const path = `${dir}/c.json`;
    await Deno.writeTextFile(path, "{}");
    await Deno.chmod(path, 0o666);
    const [world] = (await loadConfig(path)).warnings;
    assert.match(world, /is writable by others \(mode 0666\); run: chmod 600/);
    await Deno.chmod(path, 0o620);
    const [group] = (await loadConfig(path)).warnings;
    assert.match(group, /is writable by its group \(mode 0620\)/);
    await Deno.chmod(path, 0o644);
    assert.deepEqual((await loadConfig(path)).warnings, [], "readable without secrets is fine");
    await Deno.writeTextFile(path, JSON.stringify({ users: USERS }));
    await Deno.chmod(path, 0o646);
    const [both] = (await loadConfig(path)).warnings;
    assert.match(both, /holds passwords and is readable by group\/others and writable by others/);
    assert.doesNotMatch(both, new RegExp(SECRET));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("looseMode: password files are flagged when readable or writable by others", () => {
  assert.equal(looseMode(0o100600, true), null);
  assert.equal(looseMode(0o100640, true), "is readable by group/others (mode 0640)");
  assert.equal(looseMode(0o100602, true), "is writable by others (mode 0602)");
  assert.equal(looseMode(0o100644, false), null);
  assert.equal(looseMode(null, true), null);
});
