/**
 * THE export table: which IVBS image is served under which NBD export name,
 * beside the mount table and in the same style (one owner, thin views). It
 * owns the NBD export server, started with the first export and closed at
 * shutdown (clients disconnected, their sessions closed, the socket removed).
 * Each client of an export gets its own IVBS session from the driver, so
 * failover is per client; the table only keeps the credentials to open them.
 * @module
 */
import { errorMessage } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import { type Backend, backendWithClose } from "../block/backend.ts";
import { type ExportServer, ExportServerError, startExportServer } from "../nbd/export_server.ts";
import { EXPORT_NAME_PATTERN, EXPORT_NAME_RULE, type ExportSettings } from "./config.ts";
import type { DeviceIoStats, MountBackend, MountDriver } from "./driver.ts";
import type { ExportRecord } from "./state_file.ts";
import type { WatchSession } from "./proxy_registry.ts";
import { RateSampler } from "./rate.ts";
import { asRefusal } from "./refusal.ts";
import {
  EXPORT_REFUSAL,
  ExportError,
  type ExportInfo,
  type ExportListenInfo,
  type ExportRequest,
  type ExportSnapshot,
  type ExportState,
} from "./export_types.ts";
import { parentDir, prepareStateDir } from "./state_dir.ts";
import { NO_IO } from "./desired_status.ts";

export * from "./export_types.ts";
export { prepareStateDir } from "./state_dir.ts";

export interface ExportTableOptions {
  settings: ExportSettings;
  /** Created with mode 0700 before the socket is opened in it. */
  stateDir: string;
  log?: Logger;
  /** For the NBD export server's own lines (clients, handshakes); default component "export". */
  serverLog?: Logger;
  /** Clock for throughput sampling (tests pass a fake one). */
  now?: () => number;
  /** Follows each client's (and the probe's) IVBS session. */
  watchSession?: WatchSession;
  /** Called after an export was added or removed (to save the state file). */
  onChange?: () => void;
}

interface Entry {
  name: string;
  image: string;
  username: string;
  password: string;
  readOnly: boolean;
  state: ExportState;
  sizeBytes: number;
  createdAt: Date;
  /** Settles when the add attempt has finished either way. */
  settled: Promise<unknown>;
  /** Client sessions open now, and the counters of the ones already closed. */
  sessions: Set<MountBackend>;
  closed: { failovers: number; reconnects: number };
  rate: RateSampler;
}

/** What opening a session on an export's image needs (and a probe fills in). */
type SessionTarget = Pick<
  Entry,
  "name" | "image" | "username" | "password" | "readOnly" | "sizeBytes"
>;

/** "[::1]" for IPv6 literals in URIs. */
function uriHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

export class ExportTable {
  readonly #driver: MountDriver;
  readonly #settings: ExportSettings;
  readonly #stateDir: string;
  readonly #log: Logger;
  readonly #serverLog: Logger;
  readonly #now: () => number;
  readonly #watchSession: WatchSession | undefined;
  readonly #onChange: () => void;
  readonly #entries = new Map<string, Entry>();
  #server: ExportServer | null = null;
  #starting: Promise<ExportServer> | null = null;
  /** Probes made ahead by `prepare`, by export name, for `add` to use once. */
  readonly #prepared = new Map<
    string,
    { request: ExportRequest; sizeBytes: number; readOnly: boolean }
  >();
  #closing = false;

  constructor(driver: MountDriver, options: ExportTableOptions) {
    this.#driver = driver;
    this.#settings = options.settings;
    this.#stateDir = options.stateDir;
    this.#log = options.log ?? logger("exports");
    this.#serverLog = options.serverLog ?? logger("export");
    this.#now = options.now ?? (() => performance.now());
    this.#watchSession = options.watchSession;
    this.#onChange = options.onChange ?? (() => {});
  }

  get size(): number {
    return this.#entries.size;
  }

  get closing(): boolean {
    return this.#closing;
  }

  /** Where clients connect; `listening` is false until the first export. */
  listenInfo(): ExportListenInfo {
    return {
      listening: this.#server !== null,
      socket: this.#settings.socket,
      tcp: this.#tcpAddress(),
    };
  }

  #tcpAddress(): string | null {
    const running = this.#server?.tcpAddress;
    if (running) return `${uriHost(running.hostname)}:${running.port}`;
    const wanted = this.#settings.tcp;
    return wanted ? `${uriHost(wanted.host)}:${wanted.port}` : null;
  }

  /**
   * Serves `request.image` as export `request.name`. The image and credentials
   * are checked once now (one IVBS session, closed again) so a wrong password
   * fails here and not at the first client. `quiet` (the reconciler's
   * attempts, which log their own changes) puts its progress lines at debug.
   */
  async add(request: ExportRequest, options: { quiet?: boolean } = {}): Promise<ExportInfo> {
    const progress = (message: string, fields: object) =>
      options.quiet ? this.#log.debug(message, fields) : this.#log.info(message, fields);
    if (this.#closing) throw new ExportError("the daemon is shutting down", "SHUTTING_DOWN");
    if (!EXPORT_NAME_PATTERN.test(request.name)) {
      throw new ExportError(
        `export name ${JSON.stringify(request.name.slice(0, 140))} ${EXPORT_NAME_RULE}`,
        "INVALID_NAME",
      );
    }
    const existing = this.#entries.get(request.name);
    if (existing) {
      throw new ExportError(
        `export "${request.name}" already exists (${existing.state}, image ${existing.image})`,
        "DUPLICATE",
      );
    }
    // From here to the reservation nothing awaits, so two requests cannot take the same name.
    let finish!: () => void;
    const entry: Entry = {
      name: request.name,
      image: request.image,
      username: request.username,
      password: request.password,
      readOnly: request.readOnly ?? false,
      state: "adding",
      sizeBytes: 0,
      createdAt: new Date(),
      settled: new Promise<void>((resolve) => finish = resolve),
      sessions: new Set(),
      closed: { failovers: 0, reconnects: 0 },
      rate: new RateSampler(this.#now),
    };
    this.#entries.set(entry.name, entry);
    progress("adding export", {
      export: entry.name,
      image: entry.image,
      user: entry.username,
    });
    try {
      const server = await this.#ensureServer();
      if (!this.#usePrepared(entry, request)) await this.#probe(entry);
      if (this.#closing) throw new ExportError("the daemon is shutting down", "SHUTTING_DOWN");
      server.addExport({
        name: entry.name,
        description: `IVBS image ${entry.image}`,
        open: () => this.#openClient(entry),
      });
      entry.state = "ready";
    } catch (error) {
      this.#entries.delete(entry.name);
      throw this.#wrap(error, `Cannot export ${entry.image} as ${entry.name}`);
    } finally {
      finish();
    }
    progress("export ready", {
      export: entry.name,
      image: entry.image,
      size: entry.sizeBytes,
      uri: this.#uri(entry.name),
    });
    this.#onChange();
    return this.#info(entry, this.#liveStats());
  }

  /**
   * An IVBS session on the export's image, as its credentials and mode say,
   * and the end of its watch (to call once it is closed).
   */
  async #openSession(
    entry: SessionTarget,
    check = false,
  ): Promise<{ backend: MountBackend; unwatch: () => void }> {
    const watch = this.#watchSession?.({ export: entry.name, image: entry.image, check });
    const unwatch = () => watch?.closed();
    try {
      const backend = await this.#driver.openBackend({
        image: entry.image,
        username: entry.username,
        password: entry.password,
        readOnly: entry.readOnly,
        onEvent: watch?.onEvent,
        log: watch?.log,
      });
      return { backend, unwatch };
    } catch (error) {
      unwatch();
      throw error;
    }
  }

  /**
   * Checks an export's image and credentials ahead (the probe `add` makes),
   * so that a later `add` of the same request serves it without a round trip
   * to IVBS: `serve --replace` does it while the old daemon still serves the
   * export. Throws what the probe throws.
   */
  async prepare(request: ExportRequest): Promise<void> {
    const entry: SessionTarget = { ...request, readOnly: request.readOnly ?? false, sizeBytes: 0 };
    await this.#probe(entry);
    this.#prepared.set(request.name, {
      request,
      sizeBytes: entry.sizeBytes,
      readOnly: entry.readOnly,
    });
  }

  /** Takes the prepared probe of `request` (the same one only); false when there is none. */
  #usePrepared(entry: Entry, request: ExportRequest): boolean {
    const prepared = this.#prepared.get(request.name);
    this.#prepared.delete(request.name);
    const same = prepared !== undefined && prepared.request.image === request.image &&
      prepared.request.username === request.username &&
      prepared.request.password === request.password &&
      (prepared.request.readOnly ?? false) === (request.readOnly ?? false);
    if (!same) return false;
    entry.sizeBytes = prepared.sizeBytes;
    entry.readOnly = prepared.readOnly;
    return true;
  }

  async #probe(entry: SessionTarget): Promise<void> {
    const { backend, unwatch } = await this.#openSession(entry, true);
    entry.sizeBytes = backend.size;
    entry.readOnly = backend.readOnly;
    try {
      await backend.close();
    } catch (error) {
      this.#log.warn("closing the probe session failed", { export: entry.name, error });
    }
    unwatch();
  }

  /** One client's own session; its counters join the export's totals when it closes. */
  async #openClient(entry: Entry): Promise<Backend> {
    const { backend, unwatch } = await this.#openSession(entry);
    entry.sessions.add(backend);
    return trackClose(backend, () => {
      unwatch();
      entry.sessions.delete(backend);
      entry.closed.failovers += backend.stats?.failovers ?? 0;
      entry.closed.reconnects += backend.stats?.reconnects ?? 0;
    });
  }

  #ensureServer(): Promise<ExportServer> {
    if (this.#starting) return this.#starting;
    const starting = this.#startServer();
    this.#starting = starting;
    // A failed start (socket in use…) is retried by the next add.
    starting.catch(() => {
      if (this.#starting === starting) this.#starting = null;
    });
    return starting;
  }

  async #startServer(): Promise<ExportServer> {
    const { socket, tcp } = this.#settings;
    try {
      if (parentDir(socket) === this.#stateDir) await prepareStateDir(this.#stateDir, this.#log);
      const server = await startExportServer({
        socketPath: socket,
        tcp: tcp ? { hostname: tcp.host, port: tcp.port } : undefined,
        log: this.#serverLog,
      });
      if (this.#closing) {
        await server.close();
        throw new ExportError("the daemon is shutting down", "SHUTTING_DOWN");
      }
      this.#server = server;
      return server;
    } catch (error) {
      if (error instanceof ExportError) throw error;
      const where = tcp ? `${socket} and ${uriHost(tcp.host)}:${tcp.port}` : socket;
      throw new ExportError(
        `Cannot listen for NBD clients on ${where}: ${errorMessage(error)}`,
        "LISTEN_FAILED",
      );
    }
  }

  #wrap(error: unknown, what: string): ExportError {
    if (error instanceof ExportError) return error;
    if (error instanceof ExportServerError) {
      const code = error.code === "INVALID_NAME" || error.code === "DUPLICATE"
        ? error.code
        : "LISTEN_FAILED";
      return new ExportError(`${what}: ${error.message}`, code);
    }
    return asRefusal(EXPORT_REFUSAL, error, what, this.#log);
  }

  /** Stops serving `name`: no new client can choose it, current clients are disconnected. */
  async remove(name: string): Promise<void> {
    const entry = this.#entries.get(name);
    if (!entry) {
      const known = [...this.#entries.keys()].join(", ") || "none";
      throw new ExportError(
        `no export named ${JSON.stringify(name.slice(0, 140))} (exports: ${known})`,
        "UNKNOWN_EXPORT",
      );
    }
    if (entry.state !== "ready") {
      throw new ExportError(`export "${name}" is ${entry.state}; try again`, "BUSY");
    }
    entry.state = "removing";
    this.#log.info("removing export", { export: name, image: entry.image });
    await this.#server?.removeExport(name);
    this.#entries.delete(name);
    this.#log.info("export removed", { export: name, image: entry.image });
    this.#onChange();
  }

  /**
   * The exports served or being added, as the state file records them (no
   * passwords); one whose add fails is gone from the next record.
   */
  records(): ExportRecord[] {
    return [...this.#entries.values()].filter((e) => e.state !== "removing").map((e) => ({
      name: e.name,
      image: e.image,
      username: e.username,
      readOnly: e.readOnly,
    }));
  }

  /** The credentials of the exports `records()` lists (for the credential store). */
  credentials(): { name: string; username: string; password: string }[] {
    return [...this.#entries.values()].filter((e) => e.state !== "removing").map((e) => ({
      name: e.name,
      username: e.username,
      password: e.password,
    }));
  }

  /**
   * Refuses new exports, waits for adds in progress, then closes the export
   * server: every client is disconnected, its session closed, the socket
   * removed. Never throws (this runs on the way out).
   */
  async closeAll(): Promise<void> {
    this.#closing = true;
    await Promise.allSettled([...this.#entries.values()].map((e) => e.settled));
    const server = this.#server ?? await this.#starting?.catch(() => null) ?? null;
    if (server) {
      try {
        await server.close();
      } catch (error) {
        this.#log.error("closing the NBD export server failed", { error });
      }
    }
    this.#server = null;
    this.#entries.clear();
  }

  /** Exports, ordered by name. */
  list(): ExportInfo[] {
    const live = this.#liveStats();
    return this.#sorted().map((entry) => this.#info(entry, live));
  }

  /** Exports with their live counters, for metrics. */
  snapshots(): ExportSnapshot[] {
    const live = this.#liveStats();
    return this.#sorted().map((entry) => ({
      info: this.#info(entry, live),
      stats: live.get(entry.name)?.stats ?? null,
    }));
  }

  #sorted(): Entry[] {
    return [...this.#entries.values()].sort((a, b) => a.name < b.name ? -1 : 1);
  }

  #liveStats(): Map<string, { clients: number; stats: DeviceIoStats }> {
    const exports = this.#server?.exports() ?? [];
    return new Map(exports.map((e) => [e.name, { clients: e.clients, stats: e.stats }]));
  }

  /** The row of an export that is desired but not served (yet): where it will be, no I/O. */
  desiredRow(
    spec: { name: string; image: string; username: string; readOnly: boolean },
    status: Pick<ExportInfo, "state" | "reason" | "nextRetryAt" | "attempts">,
  ): ExportInfo {
    const tcp = this.#tcpAddress();
    return {
      name: spec.name,
      image: spec.image,
      username: spec.username,
      ...status,
      sizeBytes: 0,
      readOnly: spec.readOnly,
      socket: this.#settings.socket,
      uri: this.#uri(spec.name),
      tcpUri: tcp === null ? null : `nbd://${tcp}/${spec.name}`,
      clients: 0,
      ...NO_IO,
      throughput: { ...NO_IO.throughput },
      createdAt: null,
    };
  }

  #uri(name: string): string {
    return `nbd+unix:///${name}?socket=${this.#settings.socket}`;
  }

  #info(entry: Entry, live: Map<string, { clients: number; stats: DeviceIoStats }>): ExportInfo {
    const served = live.get(entry.name);
    const io = served?.stats;
    const bytesRead = io?.bytesRead ?? 0;
    const bytesWritten = io?.bytesWritten ?? 0;
    let failovers = entry.closed.failovers;
    let reconnects = entry.closed.reconnects;
    for (const session of entry.sessions) {
      failovers += session.stats?.failovers ?? 0;
      reconnects += session.stats?.reconnects ?? 0;
    }
    const tcp = this.#tcpAddress();
    return {
      name: entry.name,
      image: entry.image,
      username: entry.username,
      state: entry.state,
      sizeBytes: entry.sizeBytes,
      readOnly: entry.readOnly,
      socket: this.#settings.socket,
      uri: this.#uri(entry.name),
      tcpUri: tcp === null ? null : `nbd://${tcp}/${entry.name}`,
      clients: served?.clients ?? 0,
      inFlight: io?.inFlight ?? 0,
      reads: io?.reads ?? 0,
      writes: io?.writes ?? 0,
      bytesRead,
      bytesWritten,
      errors: io?.errors ?? 0,
      failovers,
      reconnects,
      createdAt: entry.createdAt.toISOString(),
      throughput: entry.rate.update(bytesRead, bytesWritten),
    };
  }
}

/**
 * The same backend with a hook after close(). Optional capabilities are passed
 * on only when present, so the NBD side advertises exactly what the session has.
 */
function trackClose(backend: MountBackend, onClose: () => void): Backend {
  return backendWithClose(backend, async () => {
    try {
      await backend.close();
    } finally {
      onClose();
    }
  });
}
