/**
 * The HTTP app over a fake driver's mount and export tables, with no socket
 * (requests through `app.request`) and a quiet log: for route tests that need
 * no IVBS and no kernel.
 */
import type { Hono } from "hono";
import type { FakeMountDriver } from "../../src/daemon/fake_driver.ts";
import { MountTable } from "../../src/daemon/mount_table.ts";
import { ExportTable } from "../../src/daemon/export_table.ts";
import { type AppOptions, createApp } from "../../src/http/app.ts";
import { quietLog } from "./log.ts";
export { quietLog };

/** `createApp` over new tables of `driver`; `options` adds to or overrides the defaults. */
export function fakeApp(
  driver: FakeMountDriver,
  options: Partial<AppOptions> & { deviceCount?: number } = {},
): { app: Hono; table: MountTable; exports: ExportTable } {
  const table = new MountTable(driver, { deviceCount: options.deviceCount ?? 16, log: quietLog });
  const exports = new ExportTable(driver, {
    // Exports are never added through these apps: nothing is created there.
    settings: { socket: "/nonexistent/ivbsnetd-fake-app/nbd.sock", items: [] },
    stateDir: "/nonexistent/ivbsnetd-fake-app",
    log: quietLog,
    serverLog: quietLog,
  });
  const app = createApp({
    table,
    exports,
    requestShutdown: () => {},
    startedAt: Date.now(),
    log: quietLog,
    ...options,
  });
  return { app, table, exports };
}
