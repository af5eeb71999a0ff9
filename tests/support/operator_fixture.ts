/**
 * A daemon serving an NBD export of an image on the IVBS test server (two
 * proxies, fault injection), with real IVBS sessions and short timeouts, for
 * the operator-view tests. No kernel: exports need none.
 */
import { parseConfig } from "../../src/daemon/config.ts";
import { Daemon } from "../../src/daemon/daemon.ts";
import { createSystemDriver } from "../../src/daemon/system_driver.ts";
import type { KernelDevices } from "../../src/nbd/attach.ts";
import { type IvbsTestServer, startIvbsServer } from "../../src/ivbs/server/mod.ts";
import { captureLog } from "./ivbs_fake_proxy.ts";
import { quietLog } from "./log.ts";
export { quietLog };

export const USER = { username: "alice", password: "operator-pw-77" };

export interface OperatorFixture {
  server: IvbsTestServer;
  daemon: Daemon;
  dir: string;
  /** "127.0.0.1:PORT" of proxy `index`. */
  label(index: number): string;
  cleanup(): Promise<void>;
}

export async function operatorFixture(
  options: { historyIntervalMs?: number; historyPoints?: number } = {},
): Promise<OperatorFixture> {
  const server = await startIvbsServer({
    users: [USER],
    images: [{ name: "disk", size: 4 * 1024 * 1024 }],
    listProxiesIntervalMs: 0,
    log: captureLog(),
  });
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-operator-" });
  const { config } = parseConfig(
    JSON.stringify({
      stateDir: `${dir}/state`,
      http: { listen: "127.0.0.1:0" },
      ivbs: {
        proxies: server.addresses(),
        deadPeerTimeoutMs: 500,
        connectTimeoutMs: 500,
        ioTimeoutMs: 30_000,
        backoff: { initialMs: 10, maxMs: 100 },
      },
    }),
    "(test)",
  );
  const kernel: KernelDevices = {
    kind: "ioctl",
    picksDevice: false,
    maxConnections: 1,
    attach: () => Promise.reject(new Error("no kernel in this test")),
    listDevices: () => Promise.resolve([]),
  };
  const daemon = new Daemon({
    config,
    driver: createSystemDriver(config, kernel, quietLog),
    log: quietLog,
    logFor: () => quietLog,
    history: { intervalMs: options.historyIntervalMs ?? 60_000, points: options.historyPoints },
  });
  return {
    server,
    daemon,
    dir,
    label: (index) => `127.0.0.1:${server.proxies[index].port}`,
    cleanup: async () => {
      await daemon.shutdown("test over");
      await server.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}
