/**
 * The IVBS test server as the session-level tests run it: user alice, one
 * 2 MiB image "disk", no LIST_PROXIES pushes, a quiet log; closed after `body`.
 */
import { type IvbsTestServer, startIvbsServer } from "../../src/ivbs/server/mod.ts";
import { captureLog } from "./ivbs_fake_proxy.ts";

export const USER = { username: "alice", password: "correct horse" };
export const MiB = 1024 * 1024;

export async function withServer(
  options: Partial<Parameters<typeof startIvbsServer>[0]>,
  body: (server: IvbsTestServer) => Promise<void>,
): Promise<void> {
  const server = await startIvbsServer({
    users: [USER],
    images: [{ name: "disk", size: 2 * MiB }],
    listProxiesIntervalMs: 0,
    log: captureLog(),
    ...options,
  });
  try {
    await body(server);
  } finally {
    await server.close();
  }
}
