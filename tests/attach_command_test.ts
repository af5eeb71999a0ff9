import assert from "node:assert/strict";
import { UsageError } from "../src/args.ts";
import { parseCommandLine } from "../src/command_line.ts";
import { attachArgs } from "../src/commands/attach.ts";
import { ATTACH } from "../src/commands/definitions.ts";
import { main } from "../main.ts";
import { captureConsole } from "./support/console_capture.ts";

/** The attachment a command line asks for, through the command's definition. */
function parseAttachArgs(args: string[]) {
  return attachArgs(parseCommandLine(ATTACH, args).values);
}

Deno.test("parseAttachArgs reads a memory disk with defaults", () => {
  assert.deepEqual(parseAttachArgs(["--device", "/dev/nbd3", "--memory", "64M"]), {
    device: "/dev/nbd3",
    source: { kind: "memory", size: 64 * 2 ** 20 },
    readOnly: false,
    blockSize: 4096,
    timeoutS: 0,
    maxInFlight: 128,
    maxRequestKb: 1024,
  });
});

Deno.test("parseAttachArgs reads an IVBS image with several proxies", () => {
  const args = parseAttachArgs([
    "--device=/dev/nbd0",
    "--image=disk0",
    "--user=alice",
    "--password-file=/etc/pass",
    "--proxy=127.0.0.1:11417",
    "--proxy=[::1]:11418",
    "--read-only",
    "--block-size=512",
    "--timeout=30",
  ]);
  assert.deepEqual(args?.source, {
    kind: "ivbs",
    image: "disk0",
    username: "alice",
    passwordFile: "/etc/pass",
    proxies: [{ host: "127.0.0.1", port: 11417 }, { host: "::1", port: 11418 }],
  });
  assert.equal(args?.readOnly, true);
  assert.equal(args?.blockSize, 512);
  assert.equal(args?.timeoutS, 30);
});

Deno.test("parseAttachArgs rejects incomplete or contradictory command lines", () => {
  const bad: [string[], RegExp][] = [
    [["--memory", "1M"], /--device/],
    [["--device", "/dev/nbd0"], /exactly one/],
    [["--device", "/dev/nbd0", "--memory", "1M", "--image", "x"], /exactly one/],
    [["--device", "/dev/nbd0", "--image", "x", "--user", "u", "--proxy", "h:1"], /password-file/],
    [["--device", "/dev/nbd0", "--image", "x", "--user", "u", "--password-file", "f"], /proxy/],
    [["--device", "/dev/nbd0", "--memory", "1M", "--timeout", "-1"], /--timeout/],
    [["--device", "/dev/nbd0", "--memory", "1M", "--bogus"], /bogus/],
    [[
      "--device",
      "/dev/nbd0",
      "--image",
      "x",
      "--user",
      "u",
      "--password-file",
      "f",
      "--proxy",
      "nohost",
    ], /HOST:PORT/],
  ];
  for (const [args, message] of bad) {
    assert.throws(() => parseAttachArgs(args), (e: unknown) => {
      assert.ok(e instanceof UsageError, `${args.join(" ")}: ${e}`);
      assert.match(e.message, message);
      return true;
    });
  }
});

Deno.test("attach exits 2 on a usage error, without touching any device", async () => {
  const { result, stderr } = await captureConsole(() => main(["attach", "--device", "/dev/nbd0"]));
  assert.equal(result, 2);
  assert.match(
    stderr.join("\n"),
    /^ivbsnetd attach: give exactly one of --memory SIZE or --image IMG/,
  );
  assert.match(stderr.join("\n"), /\nusage: ivbsnetd attach --device/);
});
