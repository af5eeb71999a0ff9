/**
 * `ivbsnetd export`: serves IVBS images (or memory disks) as NBD exports in
 * the foreground until SIGINT/SIGTERM, for QEMU, qemu-img, nbdinfo, nbdcopy
 * and fio's nbd engine. It wires the IVBS client to the NBD export server, so
 * it lives outside both layers. Flag parsing is separate from running so tests
 * can check it without sockets.
 * @module
 */
import {
  parseFlags,
  parseHostPort,
  parseSeconds,
  parseSize,
  parseWholeNumber,
  readPasswordFile,
  UsageError,
} from "../args.ts";
import { logger } from "../log.ts";
import { type Backend, MemoryBackend } from "../block/backend.ts";
import {
  type ExportDefinition,
  ExportServerError,
  shareBackend,
  startExportServer,
} from "../nbd/export_server.ts";
import { IvbsMountError } from "../ivbs/errors.ts";
import { IvbsSession, type IvbsSessionOptions } from "../ivbs/session.ts";
import { untilStopSignal } from "./signals.ts";

export const HELP = `usage: ivbsnetd export --socket PATH [--tcp 127.0.0.1:PORT] [options] SOURCE

Serves NBD exports until SIGINT or SIGTERM. Clients connect with URIs like
nbd+unix:///NAME?socket=PATH or nbd://127.0.0.1:PORT/NAME. Each client of an
IVBS export gets its own IVBS session, so proxy failover is per client.
This runs without a daemon; to add exports to a running daemon (ivbsnetd
serve) use ivbsnetd export-add, export-remove and export-list instead.

listeners:
  --socket PATH          unix socket (mode 0600; a stale one is replaced)
  --tcp HOST:PORT        also listen on TCP; loopback only (NBD has no auth here)

SOURCE, one of:
  --memory SIZE          one memory disk per --name (SIZE with K/M/G/T suffix),
                         shared by that export's clients, lost at exit
  --image IMG            an IVBS image; repeat for several exports
    --user U             IVBS username
    --password-file F    file holding the password (trailing newline ignored)
    --proxy HOST:PORT    an IVBS proxy; repeat for the fallback list

options:
  --name NAME            export name; repeat for several (with --image, pairs
                         with the --image at the same position; default: the
                         image names)
  --read-only            serve every export read-only
  --max-clients N        clients at once, all exports together (default 64)
  --handshake-timeout S  seconds a client may take to negotiate (default 10)
  -h, --help             show this help

example:
  ivbsnetd export --socket /run/ivbsnetd/nbd.sock --image disk0 --user alice \\
    --password-file /etc/ivbsnetd/alice.pass --proxy 127.0.0.1:11417 --proxy 127.0.0.1:11418
  qemu-img info 'nbd+unix:///disk0?socket=/run/ivbsnetd/nbd.sock'
`;

export type ExportSource =
  | { kind: "memory"; size: number }
  | {
    kind: "ivbs";
    /** Image per export, in the order of `names`. */
    images: string[];
    username: string;
    passwordFile: string;
    proxies: { host: string; port: number }[];
  };

export interface ExportCommand {
  help: boolean;
  socketPath?: string;
  tcp?: { hostname: string; port: number };
  names: string[];
  source: ExportSource;
  readOnly: boolean;
  maxClients?: number;
  handshakeTimeoutMs?: number;
}

/** Parses the command line; throws UsageError naming the flag and value. */
export function parseExportArgs(args: string[]): ExportCommand {
  const { values } = parseFlags(args, {
    socket: { type: "string" },
    tcp: { type: "string" },
    name: { type: "string", multiple: true },
    memory: { type: "string" },
    image: { type: "string", multiple: true },
    user: { type: "string" },
    "password-file": { type: "string" },
    proxy: { type: "string", multiple: true },
    "read-only": { type: "boolean" },
    "max-clients": { type: "string" },
    "handshake-timeout": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  const command: ExportCommand = {
    help: values.help ?? false,
    names: values.name ?? [],
    source: { kind: "memory", size: 0 },
    readOnly: values["read-only"] ?? false,
  };
  if (command.help) return command;
  if (!values.socket && !values.tcp) throw new UsageError("give --socket PATH and/or --tcp");
  command.socketPath = values.socket;
  if (values.tcp) {
    const { host, port } = parseHostPort(values.tcp, "--tcp", { anyPort: true });
    command.tcp = { hostname: host, port };
  }
  if (values["max-clients"] !== undefined) {
    command.maxClients = parseWholeNumber(values["max-clients"], "--max-clients", 1);
  }
  if (values["handshake-timeout"] !== undefined) {
    const seconds = parseSeconds(values["handshake-timeout"], "--handshake-timeout");
    command.handshakeTimeoutMs = seconds * 1000;
  }

  const images = values.image ?? [];
  if ((values.memory === undefined) === (images.length === 0)) {
    throw new UsageError("give exactly one source: --memory SIZE or --image IMG");
  }
  if (values.memory !== undefined) {
    if (command.names.length === 0) throw new UsageError("--memory needs at least one --name");
    for (const flag of ["user", "password-file", "proxy"] as const) {
      if (values[flag] !== undefined) throw new UsageError(`--${flag} only goes with --image`);
    }
    command.source = { kind: "memory", size: parseSize(values.memory) };
  } else {
    if (command.names.length === 0) command.names = [...images];
    if (command.names.length !== images.length) {
      throw new UsageError(
        `${command.names.length} --name for ${images.length} --image: give one per image or none`,
      );
    }
    if (!values.user) throw new UsageError("--image needs --user");
    if (!values["password-file"]) throw new UsageError("--image needs --password-file");
    const proxies = (values.proxy ?? []).map((text) => parseHostPort(text, "--proxy"));
    if (proxies.length === 0) throw new UsageError("--image needs at least one --proxy HOST:PORT");
    command.source = {
      kind: "ivbs",
      images,
      username: values.user,
      passwordFile: values["password-file"],
      proxies,
    };
  }
  const duplicate = command.names.find((name, i) => command.names.indexOf(name) !== i);
  if (duplicate !== undefined) throw new UsageError(`--name "${duplicate}" is given twice`);
  return command;
}

/** Exports for the command, plus what to release at exit. */
async function buildExports(
  command: ExportCommand,
): Promise<{ exports: ExportDefinition[]; release: () => Promise<void> }> {
  const log = logger("export");
  const source = command.source;
  if (source.kind === "memory") {
    const disks = command.names.map(() =>
      new MemoryBackend(source.size, { readOnly: command.readOnly })
    );
    return {
      exports: command.names.map((name, i) => ({
        name,
        description: `memory disk, ${source.size} bytes`,
        open: shareBackend(disks[i]),
      })),
      release: async () => {
        for (const disk of disks) await disk.close();
      },
    };
  }
  const password = await readPasswordFile(source.passwordFile, log);
  const exports: ExportDefinition[] = [];
  for (const [i, name] of command.names.entries()) {
    const options: IvbsSessionOptions = {
      proxies: source.proxies,
      image: source.images[i],
      username: source.username,
      password,
      readOnly: command.readOnly,
      log: logger(`ivbs:${name}`),
    };
    // Probe once so a wrong password or image name fails now, not at the first client.
    const probe = await IvbsSession.open(options);
    log.info("IVBS image ready", {
      export: name,
      image: probe.image,
      size: probe.size,
      readOnly: probe.readOnly,
      proxy: probe.proxy ?? undefined,
    });
    await probe.close();
    exports.push({
      name,
      description: `IVBS image ${source.images[i]}`,
      open: async (): Promise<Backend> => await IvbsSession.open(options),
    });
  }
  return { exports, release: () => Promise.resolve() };
}

export async function run(args: string[]): Promise<number> {
  let command: ExportCommand;
  try {
    command = parseExportArgs(args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`ivbsnetd export: ${error.message} (see --help)`);
    return 2;
  }
  if (command.help) {
    console.log(HELP);
    return 0;
  }
  const log = logger("export");
  let built;
  try {
    built = await buildExports(command);
  } catch (error) {
    if (error instanceof IvbsMountError || error instanceof UsageError) {
      console.error(`ivbsnetd export: ${error.message}`);
      return 1;
    }
    if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.PermissionDenied) {
      console.error(`ivbsnetd export: ${error.message}`);
      return 1;
    }
    throw error;
  }
  let server;
  try {
    server = await startExportServer({
      socketPath: command.socketPath,
      tcp: command.tcp,
      exports: built.exports,
      maxClients: command.maxClients,
      handshakeTimeoutMs: command.handshakeTimeoutMs,
      log,
    });
  } catch (error) {
    await built.release();
    if (error instanceof ExportServerError || error instanceof Deno.errors.AddrInUse) {
      console.error(`ivbsnetd export: ${error.message}`);
      return 1;
    }
    throw error;
  }
  const signal = await untilStopSignal();
  log.info("stopping NBD exports", { signal, clients: server.clients().length });
  await server.close();
  await built.release();
  for (const info of server.exports()) {
    const { reads, writes, bytesRead, bytesWritten, errors } = info.stats;
    log.info("export totals", {
      export: info.name,
      reads,
      writes,
      bytesRead,
      bytesWritten,
      errors,
    });
  }
  return 0;
}
