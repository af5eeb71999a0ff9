/**
 * `ivbsnetd serve` run in the test's own process over a fake driver with no
 * devices: for the config and start-up checks that end before anything serves.
 */
import { runServe } from "../../src/commands/serve.ts";
import { FakeMountDriver } from "../../src/daemon/fake_driver.ts";
import { captureConsole } from "./console_capture.ts";

/** Runs `serve` in-process with a fake driver, capturing stderr lines. */
export async function serveWith(args: string[]): Promise<{ code: number; stderr: string[] }> {
  const { result, stderr } = await captureConsole(() =>
    runServe(args, {
      createDriver: () => new FakeMountDriver({ devices: 0, images: {}, users: {} }),
    })
  );
  return { code: result, stderr };
}
