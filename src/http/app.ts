/**
 * The HTTP control API (Hono): a thin view of the daemon's mount and export
 * tables. Every body and parameter is validated with zod; errors are
 * `{"error": "…"}` with 400 (validation), 401 (token), 404 (unknown device,
 * export or image), 409 (wrong state, duplicate export name), 413 (body too
 * large), 502/503 (IVBS or kernel unavailable) and a plain 500 for anything
 * unexpected (logged). `GET /api/mounts` carries the exports too, in a
 * separate `exports` array, so one call shows everything served.
 * @module
 */
import { Hono } from "hono";
import type { Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { z } from "zod";
import { type Logger, logger } from "../log.ts";
import { METRICS_CONTENT_TYPE, renderMetrics } from "../daemon/metrics.ts";
import { judgeNbdHealth, type NbdHealth } from "../nbd/host_health.ts";
import { VERSION } from "../version.ts";
import { type RefusalReporter, tokenAuth } from "./auth.ts";
import { MountError, type MountErrorCode, type MountTable } from "../daemon/mount_table.ts";
import { ExportError, type ExportErrorCode, type ExportTable } from "../daemon/export_table.ts";
import {
  ExportNameSchema,
  MAX_IMAGE_NAME_BYTES,
  MAX_USERNAME_BYTES,
  withinBytes,
} from "../daemon/config.ts";
import { ConnectionsSchema, type ListenAddress } from "../daemon/config.ts";
import type { ImageCheckRequest, ImageInfo } from "../daemon/image_check.ts";
import { requestGuard } from "./guard.ts";
import { registerLegacyRoutes } from "./legacy.ts";
import { PAGE_EVENTS, renderLive, renderStatusPage, type StatusPageData } from "./status_page.ts";
import { registerOperatorRoutes } from "./operator_routes.ts";
import type { EventLog } from "../daemon/events.ts";
import type { History } from "../daemon/history.ts";
import type { ProxyRegistry } from "../daemon/proxy_registry.ts";
import type { ReloadResult } from "../daemon/reconciliation.ts";
import {
  DeviceNameSchema,
  DeviceOrAutoSchema,
  readJson,
  readJsonValue,
  validate,
} from "./validation.ts";

export interface AppOptions {
  table: MountTable;
  /** NBD exports (`/api/exports`). */
  exports: ExportTable;
  /** When set, POST/DELETE calls need `Authorization: Bearer <token>`. */
  token?: string;
  /** Starts the daemon's shutdown; must not wait for it (the reply goes out first). */
  requestShutdown(reason: string, options?: { keepDevices?: boolean }): void;
  /** Daemon start time (ms since epoch), for health and metrics. */
  startedAt: number;
  log?: Logger;
  /** Recent events (`/api/events`, the status page). */
  events?: EventLog;
  /** IVBS proxies and their health (`/api/proxies`, the status page, /metrics). */
  proxies?: ProxyRegistry;
  /** Graph points per mount and export (the status page). */
  history?: History;
  /** The API's listen address: Host headers naming it are accepted (see guard.ts). */
  listen?: ListenAddress;
  /** This machine's name, accepted as Host when listening on all interfaces. */
  hostname?: string;
  /** Re-reads the config (`POST /api/reload`); absent = 503. */
  reload?: () => Promise<ReloadResult>;
  /** The nbd module's health (status page, /metrics); default: told from the devices. */
  nbdHealth?(): NbdHealth | Promise<NbdHealth>;
  /** `POST /api/images/check` (the CSI controller's "does this volume exist"). */
  checkImage?: (request: ImageCheckRequest) => Promise<ImageInfo>;
}

/** Largest request body accepted; API bodies are a few hundred bytes. */
export const MAX_BODY_BYTES = 64 * 1024;

/** HTTP status for each mount table refusal. */
export const MOUNT_ERROR_STATUS: Record<MountErrorCode, ContentfulStatusCode> = {
  INVALID_DEVICE: 400,
  UNKNOWN_DEVICE: 404,
  NO_DEVICE: 404,
  IMAGE_NOT_FOUND: 404,
  LOGIN_DENIED: 403,
  ACCESS_DENIED: 403,
  BUSY: 409,
  NO_FREE_DEVICE: 409,
  NOT_MOUNTED: 409,
  NO_PROXY: 502,
  PROTOCOL: 502,
  NO_MODULE: 503,
  NOT_ROOT: 503,
  SHUTTING_DOWN: 503,
  DETACH_FAILED: 500,
  IOCTL: 500,
  MOUNT_FAILED: 500,
};

/** HTTP status for each export table refusal. */
export const EXPORT_ERROR_STATUS: Record<ExportErrorCode, ContentfulStatusCode> = {
  INVALID_NAME: 400,
  DUPLICATE: 409,
  UNKNOWN_EXPORT: 404,
  BUSY: 409,
  SHUTTING_DOWN: 503,
  LISTEN_FAILED: 503,
  LOGIN_DENIED: 403,
  IMAGE_NOT_FOUND: 404,
  ACCESS_DENIED: 403,
  NO_PROXY: 502,
  PROTOCOL: 502,
  OPEN_FAILED: 500,
};

/** The image and the IVBS login that opens it: what mounts, exports and image checks carry. */
const imageLoginFields = {
  image: z.string({ error: "image must be a string" }).min(1, "image must not be empty")
    .refine(...withinBytes(MAX_IMAGE_NAME_BYTES, "image")),
  username: z.string({ error: "username must be a string" }).min(1, "username must not be empty")
    .refine(...withinBytes(MAX_USERNAME_BYTES, "username")),
  password: z.string({ error: "password must be a string" }).max(1024),
};
const ReadOnlySchema = z.boolean({ error: "readOnly must be true or false" }).optional();

export const ExportBodySchema = z.strictObject({
  name: ExportNameSchema,
  ...imageLoginFields,
  readOnly: ReadOnlySchema,
});

export const MountBodySchema = z.strictObject({
  device: DeviceOrAutoSchema.optional(),
  ...imageLoginFields,
  readOnly: ReadOnlySchema,
  /** Connections (IVBS sessions) of the kernel device; default nbd.connections. */
  connections: ConnectionsSchema.optional(),
});

const ShutdownBodySchema = z.strictObject({
  reason: z.string().max(200).optional(),
  /** Exit leaving netlink-attached devices for the next daemon instead of detaching them. */
  keepDevices: z.boolean().optional(),
});

function errorBody(c: Context, status: ContentfulStatusCode, message: string) {
  return c.json({ error: message }, status);
}

export function createApp(options: AppOptions): Hono {
  const { table, exports, token } = options;
  const log = options.log ?? logger("http");
  const app = new Hono();

  app.onError((error, c) => {
    if (error instanceof HTTPException) {
      // bearerAuth's refusal carries its finished answer (JSON and WWW-Authenticate).
      if (error.res) return error.getResponse();
      return errorBody(c, error.status as ContentfulStatusCode, error.message);
    }
    if (error instanceof MountError) {
      // `code` is an extension of {"error"}: stable, for scripts.
      return c.json({ error: error.message, code: error.code }, MOUNT_ERROR_STATUS[error.code]);
    }
    if (error instanceof ExportError) {
      return c.json({ error: error.message, code: error.code }, EXPORT_ERROR_STATUS[error.code]);
    }
    log.error("unexpected error answering a request", {
      method: c.req.method,
      path: c.req.path,
      error,
      stack: error instanceof Error ? error.stack : undefined,
    });
    return errorBody(c, 500, "internal error");
  });
  app.notFound((c) => errorBody(c, 404, `no route ${c.req.method} ${c.req.path}`));

  // Refusals are failures too: a warn line and an event naming the route, never the token.
  const refusals = options.events?.wrap(log, "http") ?? log;
  const onRefused: RefusalReporter = (c, status, reason) =>
    refusals.warn(`refused ${c.req.method} ${c.req.path.slice(0, 200)}: ${reason}`, { status });

  // Before anything else: what a web page could send never reaches a route.
  app.use("*", requestGuard({ listen: options.listen, hostname: options.hostname, onRefused }));

  const limit = bodyLimit({
    maxSize: MAX_BODY_BYTES,
    onError: (c) => errorBody(c, 413, `request body exceeds ${MAX_BODY_BYTES} bytes`),
  });
  // Only POST carries a body here. Limiting GET/DELETE too would make the
  // middleware rebuild body-less requests, which trips Deno's request.signal warning.
  app.use("*", (c, next) => c.req.method === "POST" ? limit(c, next) : next());
  // GETs stay readable without the token; every call that changes state needs it.
  const checkToken = token === undefined ? undefined : tokenAuth(token, onRefused);
  const requireToken = async (c: Context): Promise<void> => {
    await checkToken?.(c, async () => {});
  };
  app.use("/api/*", async (c, next) => {
    const reads = c.req.method === "GET" || c.req.method === "HEAD";
    if (reads || !checkToken) return await next();
    return await checkToken(c, next);
  });

  app.get("/api/health", async (c) =>
    c.json({
      status: table.closing ? "stopping" : "ok",
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - options.startedAt) / 1000),
      mounts: table.size,
      exports: exports.size,
      // Devices that exist and are ours: 0 without the nbd module, not nbd.devices.
      devices: (await table.devices()).length,
      tokenRequired: token !== undefined,
      // Whether mounts can work here, and why not (exports need no nbd).
      nbd: await nbdHealth(),
    }));

  app.get("/api/devices", async (c) => c.json({ devices: await table.devices() }));

  // Exports ride along so one call shows everything served (listm + liste).
  app.get("/api/mounts", (c) => c.json({ mounts: table.list(), exports: exports.list() }));

  app.post("/api/mounts", async (c) => {
    const body = await readJson(c, MountBodySchema);
    const mount = await table.mount(body);
    c.header("Location", `/api/mounts/${encodeURIComponent(mount.device.slice("/dev/".length))}`);
    return c.json(mount, 201);
  });

  app.delete("/api/mounts/:device{.+}", async (c) => {
    const device = validate(DeviceNameSchema, c.req.param("device"), "device");
    await table.unmount(device);
    return c.json({ device, state: "unmounted" });
  });

  const checkImage = options.checkImage;
  if (checkImage) {
    // IVBS has no lookup without a login: the check opens one read-only session and closes it.
    const schema = z.strictObject(imageLoginFields);
    app.post("/api/images/check", async (c) => c.json(await checkImage(await readJson(c, schema))));
  }

  app.get("/api/exports", (c) => c.json({ ...exports.listenInfo(), exports: exports.list() }));

  app.post("/api/exports", async (c) => {
    const body = await readJson(c, ExportBodySchema);
    const info = await exports.add(body);
    c.header("Location", `/api/exports/${info.name}`);
    return c.json(info, 201);
  });

  app.delete("/api/exports/:name", async (c) => {
    const name = validate(ExportNameSchema, c.req.param("name"), "export name");
    await exports.remove(name);
    return c.json({ name, state: "removed" });
  });

  app.post("/api/shutdown", async (c) => {
    const value = await readJsonValue(c);
    const body = value === undefined ? {} : validate(ShutdownBodySchema, value);
    const reason = body.reason ? `POST /api/shutdown: ${body.reason}` : "POST /api/shutdown";
    options.requestShutdown(reason, { keepDevices: body.keepDevices });
    return c.json({ status: "shutting down", mounts: table.size, exports: exports.size }, 202);
  });

  /** The nbd module's health; without a provider, told from the devices we may use. */
  const nbdHealth = async (): Promise<NbdHealth> => {
    if (options.nbdHealth) return await options.nbdHealth();
    const devices = await table.devices();
    return judgeNbdHealth({
      module: devices.length > 0,
      devices: devices.map((d) => ({ inUse: d.state !== "free" })),
      kernelAddsDevices: false,
      uid: null,
    });
  };

  app.get("/metrics", async (c) => {
    const text = renderMetrics({
      mounts: table.snapshots(),
      exports: exports.snapshots(),
      proxies: options.proxies?.list(),
      gauges: {
        uptimeSeconds: (Date.now() - options.startedAt) / 1000,
        managedDevices: table.deviceCount,
      },
      nbd: await nbdHealth(),
    });
    return c.body(text, 200, { "Content-Type": METRICS_CONTENT_TYPE });
  });

  const pageData = async (): Promise<StatusPageData> => {
    const history = options.history;
    return {
      mounts: table.list(),
      devices: await table.devices(),
      exports: exports.list(),
      version: VERSION,
      generatedAt: new Date(),
      proxies: options.proxies?.list(),
      events: options.events?.newest(PAGE_EVENTS),
      history: history && ((key) => history.points(key)),
      historyWindowMs: history && history.intervalMs * history.capacity,
      nbd: await nbdHealth(),
    };
  };

  app.get("/", async (c) => c.html(renderStatusPage(await pageData())));

  registerOperatorRoutes(app, {
    events: options.events,
    proxies: options.proxies,
    renderLive: async () => renderLive(await pageData()),
    reload: options.reload,
  });

  registerLegacyRoutes(app, { table, requireToken, requestShutdown: options.requestShutdown });
  return app;
}
