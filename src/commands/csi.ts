/**
 * `ivbsnetd csi`: the Kubernetes CSI plugin, a thin gRPC front-end of a
 * running daemon. Without --controller it serves Identity + Node (one per
 * node, beside the daemon); with --controller it serves Identity + Controller
 * (one per cluster, beside the external-attacher). It holds nothing the
 * volumes need: kill or restart it at any time.
 * @module
 */
import { parseFlags, readPasswordFile, UsageError } from "../args.ts";
import { ApiClient, DEFAULT_SERVER } from "../cli/api_client.ts";
import { ControllerService } from "../csi/controller.ts";
import { ControllerState } from "../csi/controller_state.ts";
import { systemHost } from "../csi/host.ts";
import { NodeService } from "../csi/node.ts";
import { socketPath, startCsiServer } from "../csi/server.ts";
import { VolumeFs } from "../csi/volume_fs.ts";
import { VERSION } from "../version.ts";
import { logger } from "../log.ts";
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE } from "./exit_codes.ts";
import { untilStopSignal } from "./signals.ts";

export const HELP = `usage: ivbsnetd csi --endpoint unix:///PATH --node-id NAME [options]
       ivbsnetd csi --endpoint unix:///PATH --controller [options]

Serves the Container Storage Interface (spec v1.12) on a unix socket for
Kubernetes. Volumes are existing IVBS images (volume id = image name), with
the IVBS username and password from the PV's secrets. Every device and IVBS
action goes through the daemon's HTTP API (--server).

  --endpoint unix:///P   the socket to serve (kubelet's plugin directory)
  --node-id NAME         this node's name (node mode; usually the Kubernetes node name)
  --controller           serve Identity + Controller instead of Node: record which
                         node has a volume and refuse a second one for a
                         single-node volume (runs beside the external-attacher)
  --state-dir DIR        where the controller keeps its record (default
                         /var/lib/ivbsnetd-csi)
  --server URL           the daemon's API (default ${DEFAULT_SERVER})
  --token-file F         file holding the API's bearer token
  -h, --help             show this help
`;

export interface CsiArgs {
  endpoint: string;
  nodeId: string | null;
  controller: boolean;
  stateDir: string;
  server: string;
  tokenFile: string | null;
}

/** Parses the command line; null for --help. */
export function parseCsiArgs(argv: string[]): CsiArgs | null {
  const { values } = parseFlags(argv, {
    endpoint: { type: "string" },
    "node-id": { type: "string" },
    controller: { type: "boolean" },
    "state-dir": { type: "string" },
    server: { type: "string" },
    "token-file": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) return null;
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
    server: values.server ?? DEFAULT_SERVER,
    tokenFile: values["token-file"] ?? null,
  };
}

export async function run(argv: string[]): Promise<number> {
  const log = logger("csi");
  let args: CsiArgs | null;
  try {
    args = parseCsiArgs(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`ivbsnetd csi: ${error.message} (see --help)`);
    return EXIT_USAGE;
  }
  if (args === null) {
    console.log(HELP);
    return EXIT_OK;
  }
  let token: string | undefined;
  try {
    token = args.tokenFile ? await readPasswordFile(args.tokenFile, log) : undefined;
  } catch (error) {
    console.error(`ivbsnetd csi: cannot read --token-file: ${(error as Error).message}`);
    return EXIT_USAGE;
  }
  const daemon = new ApiClient({ server: args.server, token });
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
