/**
 * `ivbsnetd csi`: the Kubernetes CSI plugin, a thin gRPC front-end of a
 * running daemon. Without --controller it serves Identity + Node (one per
 * node, beside the daemon); with --controller it serves Identity + Controller
 * (one per cluster, beside the external-attacher). It holds nothing the
 * volumes need: kill or restart it at any time.
 * @module
 */
import { readPasswordFile, UsageError } from "../args.ts";
import type { CommandLine, FlagValuesOf } from "../command_line.ts";
import { DEFAULT_SERVER } from "../cli/api_client.ts";
import { ControllerService } from "../csi/controller.ts";
import { ControllerState } from "../csi/controller_state.ts";
import { systemHost } from "../csi/host.ts";
import { NodeService } from "../csi/node.ts";
import { socketPath, startCsiServer } from "../csi/server.ts";
import { VolumeFs } from "../csi/volume_fs.ts";
import { VERSION } from "../version.ts";
import { logger } from "../log.ts";
import { errorMessage } from "../error_info.ts";
import { EXIT_FAILED, EXIT_OK } from "./exit_codes.ts";
import { untilStopSignal } from "./signals.ts";
import type { CSI } from "./definitions.ts";
import { daemonClient, processEnv } from "./one_shot.ts";

export interface CsiArgs {
  endpoint: string;
  nodeId: string | null;
  controller: boolean;
  stateDir: string;
  server: string;
  tokenFile: string | null;
}

/** The plugin the flags describe; a UsageError names the flag that is wrong. */
export function csiArgs(values: FlagValuesOf<typeof CSI.flags>): CsiArgs {
  if (!values.endpoint) throw new UsageError("--endpoint unix:///PATH is required");
  try {
    socketPath(values.endpoint);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
  const controller = values.controller ?? false;
  if (!controller && !values["node-id"]) {
    throw new UsageError("--node-id NAME is required (or --controller)");
  }
  return {
    endpoint: values.endpoint,
    nodeId: values["node-id"] ?? null,
    controller,
    stateDir: values["state-dir"] ?? "/var/lib/ivbsnetd-csi",
    server: values.server ?? processEnv("IVBSNETD_SERVER") ?? DEFAULT_SERVER,
    tokenFile: values["token-file"] ?? null,
  };
}

export async function run({ values }: CommandLine<typeof CSI.flags>): Promise<number> {
  const log = logger("csi");
  const args = csiArgs(values);
  let token: string | undefined;
  try {
    token = args.tokenFile ? await readPasswordFile(args.tokenFile, log) : undefined;
  } catch (error) {
    throw new UsageError(`cannot read --token-file: ${errorMessage(error)}`);
  }
  const daemon = daemonClient(args.server, token);
  let controller: ControllerService | undefined;
  if (args.controller) {
    await Deno.mkdir(args.stateDir, { recursive: true, mode: 0o700 });
    const state = new ControllerState(`${args.stateDir}/controller.json`);
    controller = new ControllerService({ daemon, state, log });
  }
  const node = args.nodeId && !args.controller
    ? new NodeService({ nodeId: args.nodeId, daemon, fs: new VolumeFs(systemHost), log })
    : undefined;
  let server;
  try {
    server = await startCsiServer({
      endpoint: args.endpoint,
      version: VERSION,
      node,
      controller,
      ready: async () => void await daemon.health(),
      log,
    });
  } catch (error) {
    log.error("cannot serve the CSI endpoint", { endpoint: args.endpoint, error });
    return EXIT_FAILED;
  }
  const signal = await untilStopSignal();
  log.info("stopping", { signal });
  await server.close();
  return EXIT_OK;
}
