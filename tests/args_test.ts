import assert from "node:assert/strict";
import {
  parseFlags,
  parseHostPort,
  parsePort,
  parseSeconds,
  parseSize,
  parseWholeNumber,
  readPasswordFile,
  UsageError,
} from "../src/args.ts";
import { memoryLog } from "./support/log.ts";

function usageMessage(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    assert.ok(error instanceof UsageError, `not a UsageError: ${error}`);
    assert.equal(error.code, "USAGE");
    return error.message;
  }
  assert.fail("no UsageError thrown");
}

Deno.test("parseSize reads bytes and binary K/M/G/T suffixes", () => {
  assert.equal(parseSize("4096"), 4096);
  assert.equal(parseSize("4k"), 4096);
  assert.equal(parseSize("512M"), 512 * 2 ** 20);
  assert.equal(parseSize("1GiB"), 2 ** 30);
  assert.equal(parseSize("2T"), 2 * 2 ** 40);
  assert.equal(parseSize("0", 0), 0);
});

Deno.test("parseSize names the value it rejects", () => {
  assert.match(usageMessage(() => parseSize("12X")), /size "12X" must be a number/);
  assert.match(usageMessage(() => parseSize("lots")), /size "lots"/);
  assert.match(usageMessage(() => parseSize("0")), /size "0" is out of range/);
  assert.match(usageMessage(() => parseSize("9000000T")), /out of range/);
});

Deno.test("parseHostPort reads host:port and [v6]:port, port 0 only for listeners", () => {
  assert.deepEqual(parseHostPort("127.0.0.1:11417", "--proxy"), { host: "127.0.0.1", port: 11417 });
  assert.deepEqual(parseHostPort("[::1]:11418", "--proxy"), { host: "::1", port: 11418 });
  assert.deepEqual(parseHostPort("127.0.0.1:0", "--tcp", { anyPort: true }), {
    host: "127.0.0.1",
    port: 0,
  });
  for (const bad of ["nohost", "127.0.0.1:0", "127.0.0.1:65536", ":80", "::1:80", "h:-1"]) {
    assert.match(
      usageMessage(() => parseHostPort(bad, "--proxy")),
      /--proxy ".*" is not HOST:PORT/,
    );
  }
});

Deno.test("parsePort and parseWholeNumber name the flag and the value", () => {
  assert.equal(parsePort("0", "--port"), 0);
  assert.equal(parsePort("65535", "--port"), 65535);
  assert.match(usageMessage(() => parsePort("70000", "--port")), /--port "70000" must be a port/);
  assert.match(usageMessage(() => parsePort("", "--port")), /--port ""/);
  assert.equal(parseWholeNumber("128", "--max-in-flight", 1), 128);
  assert.match(
    usageMessage(() => parseWholeNumber("0", "--max-in-flight", 1)),
    /--max-in-flight "0" must be a whole number >= 1/,
  );
  assert.match(usageMessage(() => parseWholeNumber("-1", "--timeout", 0)), /--timeout "-1"/);
  assert.match(usageMessage(() => parseWholeNumber("1.5", "--timeout", 0)), /--timeout "1.5"/);
});

Deno.test("parseSeconds takes decimals and zero only where it means never", () => {
  assert.equal(parseSeconds("2.5", "--idle-timeout"), 2.5);
  assert.equal(parseSeconds("0", "--list-interval", { allowZero: true }), 0);
  assert.match(
    usageMessage(() => parseSeconds("0", "--idle-timeout")),
    /--idle-timeout "0" must be a positive number of seconds/,
  );
  for (const bad of ["", "-1", "soon", "Infinity"]) {
    assert.match(usageMessage(() => parseSeconds(bad, "--x", { allowZero: true })), /--x ".*"/);
  }
});

Deno.test("parseFlags turns parseArgs errors into a one-line UsageError", () => {
  const options = { user: { type: "string" }, help: { type: "boolean", short: "h" } } as const;
  assert.deepEqual({ ...parseFlags(["--user", "u", "-h"], options).values }, {
    user: "u",
    help: true,
  });
  assert.equal(usageMessage(() => parseFlags(["--bogus"], options)), "Unknown option '--bogus'");
  assert.match(usageMessage(() => parseFlags(["extra"], options)), /extra/);
  const ambiguous = usageMessage(() => parseFlags(["--user", "--help"], options));
  assert.ok(!ambiguous.includes("\n"), ambiguous);
});

Deno.test("readPasswordFile returns the first line and warns when others may read the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "args_test_" });
  try {
    const lines: string[] = [];
    const path = `${dir}/pass`;
    await Deno.writeTextFile(path, "s3cret\r\nignored\n", { mode: 0o600 });
    await Deno.chmod(path, 0o600);
    assert.equal(await readPasswordFile(path, memoryLog(lines)), "s3cret");
    assert.deepEqual(lines, []);
    await Deno.chmod(path, 0o644);
    assert.equal(await readPasswordFile(path, memoryLog(lines)), "s3cret");
    assert.match(lines.join("\n"), /readable by group\/others/);
    assert.ok(!lines.join("\n").includes("s3cret"), "the password was logged");
    await Deno.writeTextFile(path, "\n");
    await assert.rejects(readPasswordFile(path, memoryLog(lines)), (e: Error) => {
      assert.ok(e instanceof UsageError);
      assert.match(e.message, /password file .* is empty/);
      return true;
    });
    await assert.rejects(
      readPasswordFile(`${dir}/missing`, memoryLog(lines)),
      Deno.errors.NotFound,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
