/**
 * What the IVBS benchmarks share: an IVBS test server in this process with one
 * memory image "bench" (user bench / password bench), an IvbsSession attached
 * to it over loopback, and their whole-number flags.
 * @module
 */
import { parseWholeNumber } from "../src/args.ts";
import type { Logger } from "../src/log.ts";
import {
  type IvbsServerOptions,
  type IvbsTestServer,
  startIvbsServer,
} from "../src/ivbs/server/mod.ts";
import { IvbsSession, type IvbsSessionOptions } from "../src/ivbs/session.ts";

export const QUIET: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** A flag that must be a whole number >= 1, or `fallback` when absent. */
export function positive(name: string, value: string | undefined, fallback: number): number {
  return value === undefined ? fallback : parseWholeNumber(value, `--${name}`, 1);
}

/** The server (quiet unless `server.log` says otherwise) and a session on image "bench". */
export async function openBenchImage(
  imageBytes: number,
  server: Omit<IvbsServerOptions, "users" | "images">,
  session: Omit<IvbsSessionOptions, "proxies" | "image" | "username" | "password">,
): Promise<{ server: IvbsTestServer; session: IvbsSession }> {
  const started = await startIvbsServer({
    users: [{ username: "bench", password: "bench" }],
    images: [{ name: "bench", size: imageBytes }],
    log: QUIET,
    ...server,
  });
  try {
    const opened = await IvbsSession.open({
      proxies: started.addresses(),
      image: "bench",
      username: "bench",
      password: "bench",
      ...session,
    });
    return { server: started, session: opened };
  } catch (error) {
    await started.close();
    throw error;
  }
}
