/**
 * An error nobody catches inside a running daemon does not kill the process
 * on the spot: it is logged in one line and the daemon takes its normal
 * shutdown path (front-ends first, then devices and exports), exiting 1.
 */
import assert from "node:assert/strict";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { runServe } from "../src/commands/serve.ts";
import { eventually } from "./support/wait.ts";

Deno.test("an unhandled rejection stops serve through its shutdown path with exit 1", async () => {
  const out: string[] = [];
  const original = console.log;
  console.log = (...parts: unknown[]) => out.push(parts.join(" "));
  try {
    const running = runServe(["--listen", "127.0.0.1:0"], {
      createDriver: () => new FakeMountDriver({ devices: 2, images: {}, users: {} }),
    });
    await eventually("serve listening", () => out.some((l) => l.includes("listening on")), 5_000);
    const url = /listening on (\S+)/.exec(out.join("\n"))?.[1];
    assert.ok(url, "serve started");
    // A bug somewhere: a promise rejected with nobody listening.
    void Promise.reject(new Error("a bug nobody caught"));
    assert.equal(await running, 1);
    await assert.rejects(fetch(`${url}/api/health`), "the HTTP front-end was stopped");
  } finally {
    console.log = original;
  }
});
