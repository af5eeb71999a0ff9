/**
 * NBD network exports: listens on a unix socket (mode 0600) and optionally on
 * TCP loopback; per client runs the newstyle handshake, then the transmission
 * phase with a backend of its own (for IVBS: its own session, so failover is
 * per client). Several clients may share one export.
 *
 * There is no authentication in NBD without TLS, so access control is the
 * socket's file mode, and TCP listens on loopback addresses only.
 * @module
 */
import { type Backend, backendWithClose } from "../block/backend.ts";
import { type ExportEntry, HandshakeError, negotiate, type NegotiatedExport } from "./handshake.ts";
import { MAX_STRING } from "./handshake.ts";
import { type ServeOptions, serveTransmission } from "./serve.ts";
import { IoStats } from "./stats.ts";
import type { ByteStream } from "../io/stream.ts";
import { type Logger, logger } from "../log.ts";
import { isLoopbackHost } from "../loopback.ts";
import type { Clock } from "../clock.ts";
import { closeQuietly, Listener, type Slot } from "../io/listener.ts";

/** One export: a name and a factory giving each client its own backend. */
export interface ExportDefinition {
  name: string;
  description?: string;
  /** Called once per client (and per NBD_OPT_INFO); the server closes what it returns. */
  open(): Promise<Backend>;
}

export interface ExportServerOptions {
  exports?: ExportDefinition[];
  /** Unix socket path; a stale socket file there is replaced. */
  socketPath?: string;
  /** TCP listener on a loopback address (default host 127.0.0.1); port 0 = ephemeral. */
  tcp?: { hostname?: string; port: number };
  /** Connections served at once (in handshake or transmission); more are closed. Default 64. */
  maxClients?: number;
  /** Deadline for one client's handshake. Default 10 000 ms. */
  handshakeTimeoutMs?: number;
  /**
   * Slot policy when all `maxClients` slots are taken: a newcomer replaces the
   * client that has sent and received nothing for longest, once that is at
   * least this long. Default 60 000 ms. (Before the handshake the deadline
   * above bounds a silent client; after it, idle NBD clients are legitimate,
   * so they lose their slot only to someone waiting for one.)
   */
  idleEvictMs?: number;
  /** Timers of the accept loop and the handshake deadline (tests pass a manual clock). */
  clock?: Clock;
  /** Per-client bounds of the transmission phase. */
  serve?: Pick<ServeOptions, "maxInFlight" | "maxInFlightBytes">;
  log?: Logger;
}

/** An export as the NBD server sees it: its clients now and their counters. */
export interface ExportActivity {
  readonly name: string;
  readonly description?: string;
  /** Clients currently in the transmission phase on this export. */
  readonly clients: number;
  /** Counters of all clients of this export together. */
  readonly stats: IoStats;
}

export interface ExportClientInfo {
  readonly id: number;
  readonly transport: "unix" | "tcp";
  /** Null while the client is still negotiating. */
  readonly export: string | null;
  readonly connectedAt: Date;
}

export type ExportServerErrorCode =
  | "INVALID_NAME"
  | "DUPLICATE"
  | "NO_LISTENER"
  | "NOT_LOOPBACK"
  | "SOCKET_IN_USE"
  | "NOT_A_SOCKET";

/** A configuration the export server refuses; callers map codes to HTTP statuses or exit codes. */
export class ExportServerError extends Error {
  constructor(readonly code: ExportServerErrorCode, message: string) {
    super(message);
    this.name = "ExportServerError";
  }
}

interface ExportRecord extends ExportEntry {
  readonly stats: IoStats;
}

interface Client {
  readonly id: number;
  readonly conn: Deno.Conn;
  /** Its place under the cap; `slot.cut` once we closed the connection ourselves. */
  readonly slot: Slot;
  readonly transport: "unix" | "tcp";
  readonly connectedAt: Date;
  export: string | null;
}

/** Starts listening; resolves once every listener accepts connections. */
export function startExportServer(options: ExportServerOptions): Promise<ExportServer> {
  return ExportServer.start(options);
}

export class ExportServer {
  readonly #exports = new Map<string, ExportRecord>();
  readonly #clients = new Map<number, Client>();
  /** Each client's serve task, for removeExport to await. */
  readonly #tasks = new Map<number, Promise<void>>();
  #listener: Listener<Deno.Conn> | null = null;
  readonly #maxClients: number;
  readonly #handshakeTimeoutMs: number;
  readonly #idleEvictMs: number;
  readonly #clock: Clock | undefined;
  readonly #serve: ExportServerOptions["serve"];
  readonly #log: Logger;
  #socketPath: string | null = null;
  #tcpAddress: { hostname: string; port: number } | null = null;
  #stopping = false;
  #closed: Promise<void> | null = null;

  private constructor(options: ExportServerOptions) {
    this.#maxClients = options.maxClients ?? 64;
    this.#handshakeTimeoutMs = options.handshakeTimeoutMs ?? 10_000;
    this.#idleEvictMs = options.idleEvictMs ?? 60_000;
    this.#clock = options.clock;
    this.#serve = options.serve;
    this.#log = options.log ?? logger("export");
    for (const definition of options.exports ?? []) this.addExport(definition);
  }

  /** The unix socket path, when listening on one. */
  get socketPath(): string | null {
    return this.#socketPath;
  }

  /** The TCP address (with the real port when 0 was asked), when listening on TCP. */
  get tcpAddress(): { hostname: string; port: number } | null {
    return this.#tcpAddress;
  }

  /** Checks the exports, opens the listeners; throws ExportServerError on a bad setup. */
  static async start(options: ExportServerOptions): Promise<ExportServer> {
    const server = new ExportServer(options);
    await server.#listen(options);
    return server;
  }

  async #listen(options: ExportServerOptions): Promise<void> {
    if (!options.socketPath && !options.tcp) {
      throw new ExportServerError("NO_LISTENER", "an NBD export needs a unix socket or TCP port");
    }
    if (options.tcp) checkLoopback(options.tcp.hostname ?? "127.0.0.1");
    const sockets: Deno.Listener[] = [];
    try {
      if (options.socketPath) {
        sockets.push(await listenUnix(options.socketPath));
        this.#socketPath = options.socketPath;
      }
      if (options.tcp) {
        const hostname = options.tcp.hostname ?? "127.0.0.1";
        const listener = Deno.listen({ hostname, port: options.tcp.port });
        sockets.push(listener);
        this.#tcpAddress = { hostname, port: (listener.addr as Deno.NetAddr).port };
      }
    } catch (error) {
      for (const socket of sockets) closeQuietly(socket);
      await this.close();
      throw error;
    }
    // One cap over both sockets. NBD clients are refused at once rather than left
    // hanging in a backlog; a client idle in transmission makes room after idleEvictMs.
    this.#listener = new Listener({
      sources: sockets,
      serve: (conn, slot) => this.#serveClient(conn, slot),
      maxConnections: this.#maxClients,
      minIdleMs: this.#idleEvictMs,
      whenFull: "refuse",
      noun: "NBD client",
      log: this.#log,
      clock: this.#clock,
    });
    this.#log.info("NBD exports listening", {
      socket: this.#socketPath ?? undefined,
      tcp: this.#tcpAddress ? `${this.#tcpAddress.hostname}:${this.#tcpAddress.port}` : undefined,
      exports: [...this.#exports.keys()],
    });
  }

  /** Adds an export; new handshakes see it at once. */
  addExport(definition: ExportDefinition): void {
    const problem = nameProblem(definition.name);
    if (problem) {
      throw new ExportServerError(
        "INVALID_NAME",
        `export name ${JSON.stringify(definition.name)} ${problem}`,
      );
    }
    if (this.#exports.has(definition.name)) {
      throw new ExportServerError("DUPLICATE", `export "${definition.name}" already exists`);
    }
    this.#exports.set(definition.name, {
      name: definition.name,
      description: definition.description,
      open: () => definition.open(),
      stats: new IoStats(),
    });
  }

  /**
   * Removes an export: no new client can choose it, and its current clients are
   * disconnected (their backends closed). Resolves false when there was none.
   */
  async removeExport(name: string): Promise<boolean> {
    if (!this.#exports.delete(name)) return false;
    const leaving = [...this.#clients.values()].filter((client) => client.export === name);
    for (const client of leaving) this.#cut(client);
    await Promise.all(leaving.map((client) => this.#tasks.get(client.id)));
    this.#log.info("NBD export removed", { export: name, disconnected: leaving.length });
    return true;
  }

  exports(): ExportActivity[] {
    const clients = [...this.#clients.values()];
    return [...this.#exports.values()].map((record) => ({
      name: record.name,
      description: record.description,
      clients: clients.filter((client) => client.export === record.name).length,
      stats: record.stats,
    }));
  }

  clients(): ExportClientInfo[] {
    return [...this.#clients.values()].map(({ id, transport, export: name, connectedAt }) => ({
      id,
      transport,
      export: name,
      connectedAt,
    }));
  }

  /**
   * Stops listening, disconnects every client, closes their backends and
   * removes the socket file. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= this.#shutdown();
    return this.#closed;
  }

  async #shutdown(): Promise<void> {
    this.#stopping = true;
    // NBD has no server-side clean disconnect: closing the socket is the signal.
    await this.#listener?.close();
    if (this.#socketPath) await removeSocketFile(this.#socketPath);
  }

  #serveClient(conn: Deno.Conn, slot: Slot): Promise<void> {
    const transport = conn.localAddr.transport === "unix" ? "unix" : "tcp";
    if (transport === "tcp") {
      try {
        (conn as Deno.TcpConn).setNoDelay(true);
      } catch {
        // The peer is already gone; the handshake will see it.
      }
    }
    const client: Client = {
      id: slot.id,
      conn,
      slot,
      transport,
      connectedAt: new Date(),
      export: null,
    };
    this.#clients.set(client.id, client);
    // Negotiating is busy: the handshake deadline bounds it, not eviction.
    slot.setBusy(true);
    const task = this.#serveNegotiated(client).finally(() => {
      this.#clients.delete(client.id);
      this.#tasks.delete(client.id);
    });
    this.#tasks.set(client.id, task);
    return task;
  }

  async #serveNegotiated(client: Client): Promise<void> {
    const log = this.#log;
    let negotiated: NegotiatedExport | null = null;
    try {
      const stream = activityStream(client);
      negotiated = await negotiate(stream, this.#exports, {
        timeoutMs: this.#handshakeTimeoutMs,
        clock: this.#clock,
        log,
      });
      if (!negotiated) {
        log.debug("NBD client left during the handshake", { client: client.id });
        return;
      }
      const record = this.#exports.get(negotiated.name);
      if (!record || this.#stopping) {
        log.debug("NBD export went away during the handshake", { export: negotiated.name });
        return;
      }
      client.export = negotiated.name;
      client.slot.setBusy(false); // from now on, silence may cost it its slot
      log.info("NBD export client connected", {
        client: client.id,
        export: negotiated.name,
        transport: client.transport,
        size: negotiated.backend.size,
        readOnly: negotiated.backend.readOnly,
      });
      await serveTransmission(stream, negotiated.backend, {
        ...this.#serve,
        reader: negotiated.reader,
        stats: record.stats,
        log: this.#transmissionLog(client),
      });
      log.info("NBD export client disconnected", { client: client.id, export: negotiated.name });
    } catch (error) {
      if (error instanceof HandshakeError) {
        log.warn("NBD handshake failed; closing", { client: client.id, code: error.code, error });
      } else if (client.slot.cut) {
        log.debug("NBD export client cut off", { client: client.id, error });
      } else {
        log.warn("NBD export client failed", { client: client.id, export: client.export, error });
      }
    } finally {
      closeQuietly(client.conn);
      if (negotiated) {
        try {
          await negotiated.backend.close();
        } catch (error) {
          log.warn("closing an export backend failed", { export: negotiated.name, error });
        }
      }
    }
  }

  /**
   * The serve loop logs a broken stream as an error; when we cut the stream
   * ourselves (shutdown, export removed) that is expected, so it becomes debug.
   */
  /** The serve loop's lines name the client and its export. */
  #transmissionLog(client: Client): Logger {
    const base = this.#log;
    const named = (fields?: object) => ({
      export: client.export ?? undefined,
      client: client.id,
      ...fields,
    });
    return {
      debug: (message, fields) => base.debug(message, named(fields)),
      info: (message, fields) => base.info(message, named(fields)),
      warn: (message, fields) => base.warn(message, named(fields)),
      error: (message, fields) =>
        client.slot.cut ? base.debug(message, named(fields)) : base.error(message, named(fields)),
    };
  }

  #cut(client: Client): void {
    this.#listener?.cut((slot) => slot === client.slot);
  }
}

/**
 * The client's connection, noting when each read and write starts (for the
 * slot policy). Stamped at the start rather than on completion so that a
 * request costs no extra promise per read and write: the serve loop starts its
 * next read right after the last one completed, and a pending read or write
 * whose start is long past is exactly a client that has gone quiet.
 */
function activityStream(client: Client): ByteStream {
  const { conn } = client;
  return {
    read: (target) => {
      client.slot.touch();
      return conn.read(target);
    },
    write: (data) => {
      client.slot.touch();
      return conn.write(data);
    },
    close: () => conn.close(),
  };
}

/**
 * A factory for one backend shared by every client: each client gets a view
 * whose close() does nothing; the owner closes the backend itself. For memory
 * exports, whose data must outlive any one client.
 */
export function shareBackend(backend: Backend): () => Promise<Backend> {
  const view = backendWithClose(backend, () => Promise.resolve());
  return () => Promise.resolve(view);
}

const encoder = new TextEncoder();

/** Why `name` cannot be an export name (proto.md strings), or null. */
function nameProblem(name: string): string | null {
  if (name.length === 0) return "is empty";
  if (name.includes("\0")) return "contains NUL";
  if (encoder.encode(name).length > MAX_STRING) return `is longer than ${MAX_STRING} bytes`;
  return null;
}

function checkLoopback(hostname: string): void {
  if (!isLoopbackHost(hostname)) {
    throw new ExportServerError(
      "NOT_LOOPBACK",
      `NBD export TCP address ${hostname} is not loopback: NBD has no authentication here`,
    );
  }
}

/**
 * Listens on `path` with mode 0600. A leftover socket file nobody listens on
 * is removed; a live one or a non-socket file is an error.
 */
async function listenUnix(path: string): Promise<Deno.Listener> {
  const existing = await Deno.lstat(path).catch((error) => {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  });
  if (existing) {
    if (!existing.isSocket) {
      throw new ExportServerError("NOT_A_SOCKET", `${path} exists and is not a socket`);
    }
    if (await socketAnswers(path)) {
      throw new ExportServerError("SOCKET_IN_USE", `another process is listening on ${path}`);
    }
    await Deno.remove(path);
  }
  // The umask closes the window between bind() and chmod() in which the socket
  // would be connectable by others.
  const previous = Deno.umask(0o177);
  let listener: Deno.Listener;
  try {
    listener = Deno.listen({ transport: "unix", path });
  } finally {
    Deno.umask(previous);
  }
  await Deno.chmod(path, 0o600);
  return listener;
}

/** Whether a process accepts connections on the unix socket `path`. */
export async function socketAnswers(path: string): Promise<boolean> {
  try {
    const conn = await Deno.connect({ transport: "unix", path });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

async function removeSocketFile(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}
