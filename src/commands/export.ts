/**
 * `ivbsnetd export`: serves IVBS images (or memory disks) as NBD exports in
 * the foreground until SIGINT/SIGTERM, for QEMU, qemu-img, nbdinfo, nbdcopy
 * and fio's nbd engine. It wires the IVBS client to the NBD export server, so
 * it lives outside both layers. Flag parsing is separate from running so tests
 * can check it without sockets.
 * @module
 */
import {
  parseHostPort,
  parseSeconds,
  parseSize,
  parseWholeNumber,
  readPasswordFile,
  UsageError,
} from "../args.ts";
import type { CommandLine, FlagValuesOf } from "../command_line.ts";
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
import { type EXPORT, ivbsLogin } from "./definitions.ts";

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
  socketPath?: string;
  tcp?: { hostname: string; port: number };
  names: string[];
  source: ExportSource;
  readOnly: boolean;
  maxClients?: number;
  handshakeTimeoutMs?: number;
}

/** The exports the flags describe; a UsageError names the flag and value that are wrong. */
export function exportCommand(values: FlagValuesOf<typeof EXPORT.flags>): ExportCommand {
  const command: ExportCommand = {
    names: values.name ?? [],
    source: { kind: "memory", size: 0 },
    readOnly: values["read-only"] ?? false,
  };
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
    command.source = { kind: "ivbs", images, ...ivbsLogin(values) };
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

export async function run({ values }: CommandLine<typeof EXPORT.flags>): Promise<number> {
  const command = exportCommand(values);
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
