/**
 * The CSI gRPC server on a unix socket: the vendored csi.proto (spec v1.12.0)
 * loaded with @grpc/proto-loader, and the Identity, Node and (with
 * --controller) Controller services wired to their handlers. A handler throws
 * CsiError to answer with a spec status code; anything else is logged and
 * answered INTERNAL. Requests are never logged whole: they carry secrets.
 * @module
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";
import type { Logger } from "../log.ts";
import type { ControllerService } from "./controller.ts";
import type { NodeService } from "./node.ts";
import { Code, CsiError } from "./status.ts";

/** The official CSI spec's proto, vendored with its licence next to it. */
export const CSI_PROTO = fileURLToPath(new URL("./proto/csi.proto", import.meta.url));

/** The name the CO knows the driver by (CSIDriver object, PV's spec.csi.driver). */
export const DRIVER_NAME = "csi.ivbsnetd.io";

/** proto-loader options: camelCase fields, enums as names, 64-bit numbers as numbers. */
const LOAD_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

interface CsiPackage {
  Identity: grpc.ServiceClientConstructor;
  Node: grpc.ServiceClientConstructor;
  Controller: grpc.ServiceClientConstructor;
}

/** The csi.v1 package's services (for the server and for clients in tests). */
export function loadCsi(): CsiPackage {
  const definition = protoLoader.loadSync(CSI_PROTO, LOAD_OPTIONS);
  const root = grpc.loadPackageDefinition(definition) as unknown as {
    csi: { v1: CsiPackage };
  };
  return root.csi.v1;
}

/** "unix:///run/csi/csi.sock" → "/run/csi/csi.sock"; anything else is refused. */
export function socketPath(endpoint: string): string {
  const match = /^unix:\/\/(\/.+)$/.exec(endpoint) ?? /^(\/.+)$/.exec(endpoint);
  if (!match) throw new TypeError(`endpoint must be unix:///ABSOLUTE/PATH, not ${endpoint}`);
  return match[1];
}

export interface CsiServerOptions {
  endpoint: string;
  /** Reported by GetPluginInfo. */
  version: string;
  node?: NodeService;
  controller?: ControllerService;
  /** Probe: whether the plugin can work now (the daemon answers). */
  ready(): Promise<void>;
  log: Logger;
}

export interface CsiServer {
  /** The unix socket path the server listens on. */
  readonly path: string;
  close(): Promise<void>;
}

type Handler = (request: Record<string, unknown>) => Promise<unknown>;

/** One unary gRPC handler: a CsiError is its status; anything else INTERNAL, logged. */
function unary(
  name: string,
  handler: Handler,
  log: Logger,
): grpc.handleUnaryCall<unknown, unknown> {
  return (call, callback) => {
    const volume = (call.request as { volumeId?: unknown }).volumeId;
    // Through a promise, so an argument check that throws at once is answered too.
    Promise.resolve(call.request as Record<string, unknown>).then(handler).then(
      (reply) => callback(null, reply ?? {}),
      (error) => {
        if (error instanceof CsiError) {
          log.info(`${name} refused`, { volume, code: error.status, reason: error.message });
          callback({ code: error.status, details: error.message });
          return;
        }
        log.error(`${name} failed`, { volume, error });
        callback({ code: Code.INTERNAL, details: `${name}: internal error` });
      },
    );
  };
}

function capability(type: string) {
  return { rpc: { type } };
}

export async function startCsiServer(options: CsiServerOptions): Promise<CsiServer> {
  const { node, controller, log } = options;
  const csi = loadCsi();
  const server = new grpc.Server();
  const bind = (name: string, handler: Handler) => unary(name, handler, log);

  server.addService(csi.Identity.service, {
    GetPluginInfo: bind(
      "GetPluginInfo",
      () => Promise.resolve({ name: DRIVER_NAME, vendorVersion: options.version }),
    ),
    GetPluginCapabilities: bind("GetPluginCapabilities", () =>
      Promise.resolve({
        capabilities: controller ? [{ service: { type: "CONTROLLER_SERVICE" } }] : [],
      })),
    Probe: bind("Probe", async () => {
      try {
        await options.ready();
      } catch (error) {
        const why = error instanceof Error ? error.message : String(error);
        throw new CsiError(Code.FAILED_PRECONDITION, `not ready: ${why}`);
      }
      return { ready: { value: true } };
    }),
  });

  if (node) {
    server.addService(csi.Node.service, {
      NodeStageVolume: bind("NodeStageVolume", (r) => node.stage(r).then(() => ({}))),
      NodeUnstageVolume: bind("NodeUnstageVolume", (r) => node.unstage(r).then(() => ({}))),
      NodePublishVolume: bind("NodePublishVolume", (r) => node.publish(r).then(() => ({}))),
      NodeUnpublishVolume: bind("NodeUnpublishVolume", (r) => node.unpublish(r).then(() => ({}))),
      NodeGetVolumeStats: bind("NodeGetVolumeStats", (r) => node.volumeStats(r)),
      NodeGetInfo: bind("NodeGetInfo", () => node.getInfo()),
      NodeGetCapabilities: bind("NodeGetCapabilities", () =>
        Promise.resolve({
          capabilities: [
            capability("STAGE_UNSTAGE_VOLUME"),
            capability("GET_VOLUME_STATS"),
            capability("VOLUME_CONDITION"),
          ],
        })),
    });
  }

  if (controller) {
    // Methods not listed (CreateVolume, snapshots…) answer UNIMPLEMENTED (grpc-js's default):
    // IVBS volumes are provisioned statically.
    server.addService(csi.Controller.service, {
      ControllerPublishVolume: bind("ControllerPublishVolume", (r) => controller.publish(r)),
      ControllerUnpublishVolume: bind(
        "ControllerUnpublishVolume",
        (r) => controller.unpublish(r).then(() => ({})),
      ),
      ValidateVolumeCapabilities: bind("ValidateVolumeCapabilities", (r) => controller.validate(r)),
      ControllerGetCapabilities: bind(
        "ControllerGetCapabilities",
        () => Promise.resolve({ capabilities: [capability("PUBLISH_UNPUBLISH_VOLUME")] }),
      ),
    });
  }

  const path = socketPath(options.endpoint);
  try {
    // A socket left by a killed predecessor would make bind fail with EADDRINUSE.
    const stat = await Deno.lstat(path);
    if (stat.isSocket) await Deno.remove(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  await new Promise<void>((resolve, reject) =>
    server.bindAsync(
      `unix://${path}`,
      grpc.ServerCredentials.createInsecure(),
      (error) => error ? reject(error) : resolve(),
    )
  );
  log.info("CSI server listening", {
    endpoint: options.endpoint,
    services: ["identity", node && "node", controller && "controller"].filter(Boolean),
  });
  return {
    path,
    close: () =>
      new Promise<void>((resolve) => {
        server.tryShutdown(() => resolve());
      }),
  };
}
