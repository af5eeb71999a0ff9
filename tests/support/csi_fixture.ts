/**
 * The CSI plugin in this process, served on a unix socket in a temp dir, in
 * front of a real daemon (HTTP API on 127.0.0.1:0) whose devices are faked
 * (FakeMountDriver) and a fake host for mounts and mkfs (FakeHost). Tests talk
 * to it with a real gRPC client (grpc-js) as kubelet and the external-attacher
 * would.
 */
import * as grpc from "@grpc/grpc-js";
import { ApiClient } from "../../src/cli/api_client.ts";
import { startServing } from "../../src/commands/serve.ts";
import { ControllerService } from "../../src/csi/controller.ts";
import { ControllerState } from "../../src/csi/controller_state.ts";
import { NodeService } from "../../src/csi/node.ts";
import { type CsiServer, loadCsi, startCsiServer } from "../../src/csi/server.ts";
import { VolumeFs } from "../../src/csi/volume_fs.ts";
import { parseConfig } from "../../src/daemon/config.ts";
import type { Daemon } from "../../src/daemon/daemon.ts";
import { FakeMountDriver } from "../../src/daemon/fake_driver.ts";
import { captureLog } from "./ivbs_fake_proxy.ts";
import { FakeHost } from "../csi_fake_host.ts";
import { quietLog } from "./log.ts";

export { pathExists } from "../csi_fake_host.ts";

export const USERNAME = "kube";
export const PASSWORD = "csi-secret-pw-31337";
export const SECRETS = { username: USERNAME, password: PASSWORD };
export const IMAGE_SIZE = 64 * 1024 * 1024;

export interface RpcError {
  code: number;
  details: string;
}

/** Calls a unary method; resolves with the reply, rejects with the gRPC error. */
export function rpc<T = Record<string, unknown>>(
  client: grpc.Client,
  method: string,
  request: object,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const call = (client as unknown as Record<string, grpc.requestCallback<T>>)[method];
    (call as unknown as (r: object, cb: grpc.requestCallback<T>) => void).call(
      client,
      request,
      (error, reply) => error ? reject(error) : resolve(reply as T),
    );
  });
}

/** The gRPC status a call fails with (throws if it succeeds). */
export async function rpcError(client: grpc.Client, method: string, request: object) {
  try {
    await rpc(client, method, request);
  } catch (error) {
    const e = error as grpc.ServiceError;
    return { code: e.code, details: e.details } as RpcError;
  }
  throw new Error(`${method} succeeded, a failure was expected`);
}

export interface CsiFixture {
  dir: string;
  host: FakeHost;
  driver: FakeMountDriver;
  daemon: Daemon;
  api: ApiClient;
  log: ReturnType<typeof captureLog>;
  identity: grpc.Client;
  node: grpc.Client;
  controller: grpc.Client;
  /** Stops the CSI server and starts a new one on the same socket (a container restart). */
  restartCsi(): Promise<void>;
  cleanup(): Promise<void>;
}

/** A mount volume capability (ext4 by default). */
export function mountCapability(mode = "SINGLE_NODE_WRITER", fsType = "ext4") {
  return { mount: { fsType, mountFlags: [] }, accessMode: { mode } };
}

export function blockCapability(mode = "SINGLE_NODE_WRITER") {
  return { block: {}, accessMode: { mode } };
}

/** Runs `test` over a new fixture and always cleans up. */
export async function withCsi(test: (f: CsiFixture) => Promise<void>): Promise<void> {
  const f = await csiFixture();
  try {
    await test(f);
  } finally {
    await f.cleanup();
  }
}

export async function csiFixture(): Promise<CsiFixture> {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-csi-" });
  const { config } = parseConfig(
    JSON.stringify({ http: { listen: "127.0.0.1:0" }, nbd: { devices: 4 } }),
    "test",
  );
  const driver = new FakeMountDriver({
    devices: 4,
    images: { disk0: { size: IMAGE_SIZE }, disk1: { size: IMAGE_SIZE } },
    users: { [USERNAME]: PASSWORD },
  });
  const serving = startServing(config, driver, quietLog);
  const api = new ApiClient({ server: serving.url });
  const host = new FakeHost();
  const log = captureLog();
  const csi = loadCsi();
  const socket = `${dir}/csi.sock`;
  const endpoint = `unix://${socket}`;
  const state = new ControllerState(`${dir}/controller.json`);
  const start = () =>
    startCsiServer({
      endpoint,
      version: "test",
      node: new NodeService({ nodeId: "node-a", daemon: api, fs: new VolumeFs(host), log }),
      controller: new ControllerService({ daemon: api, state, log }),
      ready: async () => void await api.health(),
      log,
    });
  let server: CsiServer = await start();
  const credentials = grpc.credentials.createInsecure();
  const clients = {
    identity: new csi.Identity(endpoint, credentials),
    node: new csi.Node(endpoint, credentials),
    controller: new csi.Controller(endpoint, credentials),
  };
  return {
    dir,
    host,
    driver,
    daemon: serving.daemon,
    api,
    log,
    ...clients,
    restartCsi: async () => {
      await server.close();
      server = await start();
    },
    cleanup: async () => {
      for (const client of Object.values(clients)) client.close();
      await server.close();
      await serving.daemon.shutdown("test over");
      await Deno.remove(dir, { recursive: true });
    },
  };
}
