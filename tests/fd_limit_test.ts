/**
 * The descriptor budget: start-up raises the soft RLIMIT_NOFILE to the hard
 * limit (through ffi/rlimit.ts), and the HTTP server's share follows what is free.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { getrlimit, RLIMIT_NOFILE } from "../ffi/rlimit.ts";
import {
  httpConnectionCap,
  MAX_HTTP_CONNECTIONS,
  MIN_HTTP_CONNECTIONS,
} from "../src/daemon/fd_limit.ts";
import { hasTool } from "./support/tools.ts";

const FD_LIMIT = fileURLToPath(new URL("../src/daemon/fd_limit.ts", import.meta.url));

Deno.test("getrlimit reads a soft limit no higher than the hard one", () => {
  const { soft, hard } = getrlimit(RLIMIT_NOFILE);
  assert.ok(soft > 0n && soft <= hard);
});

Deno.test({
  name: "raiseDescriptorLimit lifts the soft limit to the hard one in a process started low",
  ignore: !(await hasTool("prlimit")),
  async fn() {
    const script = `import { raiseDescriptorLimit } from ${JSON.stringify(FD_LIMIT)};
      const quiet = { debug() {}, info() {}, warn() {}, error() {} };
      console.log(raiseDescriptorLimit(quiet));`;
    const out = await new Deno.Command("prlimit", {
      args: ["--nofile=100:300", Deno.execPath(), "eval", "--no-check", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.equal(new TextDecoder().decode(out.stdout).trim(), "300");
  },
});

Deno.test("the HTTP share is a quarter of the free descriptors, within bounds", () => {
  assert.equal(httpConnectionCap(1024, 24), 250);
  assert.equal(httpConnectionCap(64, 48), MIN_HTTP_CONNECTIONS);
  assert.equal(httpConnectionCap(1_048_576, 30), MAX_HTTP_CONNECTIONS);
  assert.equal(httpConnectionCap(null, null), 64);
});
