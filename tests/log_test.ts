/**
 * The log line formats (text and JSON), the syslog priority prefixes used when
 * stderr is the journal, the IVBSNETD_LOG / IVBSNETD_LOG_FORMAT settings, and
 * that no format ever prints a secret.
 */
import assert from "node:assert/strict";
import { formatLine, isJournalStream, type LogLevel, type LogRecord } from "../src/log.ts";

const TIME = new Date("2026-12-04T10:11:12.345Z");
const LOG_MODULE = new URL("../src/log.ts", import.meta.url).href;

function record(level: LogLevel, message: string, fields?: object): LogRecord {
  return { time: TIME, level, component: "daemon", message, fields };
}

Deno.test("a text line is time, level, component, message and key=value fields", () => {
  const line = formatLine(
    record("info", "mounted", {
      device: "/dev/nbd0",
      image: "disk 0",
      sizeBytes: 1024,
      skipped: undefined,
    }),
    { format: "text", journal: false },
  );
  assert.equal(
    line,
    '2026-12-04T10:11:12.345Z INFO  [daemon] mounted device=/dev/nbd0 image="disk 0" sizeBytes=1024',
  );
});

Deno.test("a JSON line is one object: time, level, component, msg, then the fields", () => {
  const line = formatLine(
    record("warn", "failover", {
      from: "127.0.0.1:11417",
      error: new Error("connection reset"),
      bytes: 2n ** 64n,
      at: TIME,
      nested: { list: [1, "two"] },
      msg: "a field named like a key",
      skipped: undefined,
    }),
    { format: "json", journal: false },
  );
  assert.ok(!line.includes("\n"));
  assert.deepEqual(JSON.parse(line), {
    time: "2026-12-04T10:11:12.345Z",
    level: "warn",
    component: "daemon",
    msg: "failover",
    from: "127.0.0.1:11417",
    error: "connection reset",
    bytes: "18446744073709551616",
    at: "2026-12-04T10:11:12.345Z",
    nested: { list: [1, "two"] },
    field_msg: "a field named like a key",
  });
});

Deno.test("no format prints a password, token or authorization, however deep", () => {
  const fields = {
    user: "alice",
    password: "hunter2-secret",
    request: { Authorization: "Bearer tok-123", body: { pass: "p4ss" } },
    users: [{ username: "bob", password: "pw-bob" }],
    token: "tok-123",
  };
  for (const format of ["text", "json"] as const) {
    for (const journal of [false, true]) {
      const line = formatLine(record("error", "login refused", fields), { format, journal });
      for (const secret of ["hunter2-secret", "tok-123", "p4ss", "pw-bob"]) {
        assert.ok(!line.includes(secret), `${format} journal=${journal}: ${line}`);
      }
      assert.ok(line.includes("alice") && line.includes("bob"), line);
      assert.ok(line.includes("[redacted]"), line);
    }
  }
});

Deno.test("for the journal, each line starts with its syslog priority and text drops the time", () => {
  const expected: [LogLevel, string][] = [["error", "<3>"], ["warn", "<4>"], [
    "info",
    "<6>",
  ], ["debug", "<7>"]];
  for (const [level, prefix] of expected) {
    const text = formatLine(record(level, "hello", { n: 1 }), { format: "text", journal: true });
    assert.equal(text, `${prefix}${level.toUpperCase().padEnd(5)} [daemon] hello n=1`);
    const json = formatLine(record(level, "hello"), { format: "json", journal: true });
    assert.ok(json.startsWith(prefix), json);
    assert.equal(JSON.parse(json.slice(prefix.length)).level, level);
  }
});

Deno.test("JOURNAL_STREAM counts only when it names stderr's own device and inode", () => {
  const stderr = { dev: 9, ino: 27254 };
  assert.equal(isJournalStream("9:27254", stderr), true);
  assert.equal(isJournalStream("9:27255", stderr), false, "another stream (inherited variable)");
  assert.equal(isJournalStream("8:27254", stderr), false);
  assert.equal(isJournalStream(undefined, stderr), false);
  assert.equal(isJournalStream("", stderr), false);
  assert.equal(isJournalStream("9:27254:1", stderr), false);
  assert.equal(isJournalStream(" 9:27254", stderr), false);
  assert.equal(isJournalStream("9:27254", null), false, "stderr not statable");
  assert.equal(isJournalStream("9:27254", { dev: 9, ino: null }), false);
});

/** Runs a child that logs one line per level, its env set by `setup` (a sh snippet); its stderr. */
async function childLog(setup: string): Promise<string[]> {
  const code = [
    `import { logger } from ${JSON.stringify(LOG_MODULE)};`,
    `const log = logger("child");`,
    `log.debug("d", { password: "never" }); log.info("i", { n: 1 });`,
    `log.warn("w"); log.error("e", { error: new Error("boom") });`,
  ].join(" ");
  // exec keeps sh's stderr, so the stat in $(…) (which shares it) names the child's stderr.
  const script = `${setup}; exec "$DENO" eval --no-check "$CODE"`;
  const out = await new Deno.Command("sh", {
    args: ["-c", script],
    env: { DENO: Deno.execPath(), CODE: code, NO_COLOR: "1" },
    clearEnv: true,
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stderr).split("\n").filter((l) => l !== "");
}

Deno.test("a process whose stderr is the JOURNAL_STREAM prefixes priorities; one that inherited it does not", async () => {
  const PATH_ENV = `export PATH=${JSON.stringify(Deno.env.get("PATH") ?? "/usr/bin:/bin")}`;
  const journal = await childLog(
    `${PATH_ENV}; export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) IVBSNETD_LOG=debug`,
  );
  assert.deepEqual(
    journal.map((l) => l.slice(0, 3)),
    ["<7>", "<6>", "<4>", "<3>"],
    journal.join("\n"),
  );
  assert.match(journal[1], /^<6>INFO {2}\[child\] i n=1$/);
  assert.ok(!journal.join("\n").includes("never"));

  const elsewhere = await childLog(`${PATH_ENV}; export JOURNAL_STREAM=1:1`);
  assert.equal(elsewhere.length, 3, "info and up by default");
  for (const line of elsewhere) assert.match(line, /^\d{4}-\d\d-\d\dT[\d:.]+Z (INFO|WARN|ERROR)/);
});

Deno.test("IVBSNETD_LOG_FORMAT=json and IVBSNETD_LOG=warn; a bad setting is said once and ignored", async () => {
  const PATH_ENV = `export PATH=${JSON.stringify(Deno.env.get("PATH") ?? "/usr/bin:/bin")}`;
  const json = await childLog(`${PATH_ENV}; export IVBSNETD_LOG_FORMAT=json IVBSNETD_LOG=warn`);
  assert.deepEqual(json.map((l) => JSON.parse(l).msg), ["w", "e"]);
  assert.deepEqual(JSON.parse(json[1]).error, "boom");

  const bad = await childLog(`${PATH_ENV}; export IVBSNETD_LOG=loud IVBSNETD_LOG_FORMAT=xml`);
  assert.match(bad[0], /WARN {2}\[log\] IVBSNETD_LOG=loud is not debug, info, warn or error/);
  assert.match(bad[1], /WARN {2}\[log\] IVBSNETD_LOG_FORMAT=xml is not text or json/);
  assert.deepEqual(bad.slice(2).map((l) => l.split(" ")[1]), ["INFO", "WARN", "ERROR"]);
});
