/**
 * `ivbsnetd serve` run in the test's own process over a fake driver with no
 * devices: for the config and start-up checks that end before anything serves.
 */
import { runServe } from "../../src/commands/serve.ts";
import { FakeMountDriver } from "../../src/daemon/fake_driver.ts";

/** Runs `serve` in-process with a fake driver, capturing stderr lines. */
export async function serveWith(args: string[]): Promise<{ code: number; stderr: string[] }> {
  const stderr: string[] = [];
  const original = console.error;
  console.error = (...parts: unknown[]) => stderr.push(parts.join(" "));
  try {
    const code = await runServe(args, {
      createDriver: () => new FakeMountDriver({ devices: 0, images: {}, users: {} }),
    });
    return { code, stderr };
  } finally {
    console.error = original;
  }
}
