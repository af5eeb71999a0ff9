/**
 * The IVBS test server: several proxies (TCP listeners on 127.0.0.1) over one
 * shared image store, with fault switches for tests. It is also the embedded
 * default a user runs the daemon against (`ivbsnetd ivbs-server`).
 *
 * @example Two proxies and one memory image
 * ```ts
 * import { startIvbsServer } from "./mod.ts";
 * const server = await startIvbsServer({
 *   users: [{ username: "alice", password: "secret" }],
 *   images: [{ name: "disk", size: 1 << 20 }],
 *   listProxiesIntervalMs: 0,
 * });
 * if (server.addresses().length !== 2) throw new Error("expected two proxies");
 * await server.close();
 * ```
 * @module
 */
import { type Logger, logger } from "../../log.ts";
import { type Clock, SYSTEM_CLOCK } from "../../clock.ts";
import { opName, type ProxyAddress } from "../wire.ts";
import { type ConnectionLimits, DEFAULT_CONNECTION_LIMITS, type ServerStats } from "./context.ts";
import { InjectedStatuses } from "./faults.ts";
import { ProxyListener, type ProxyView } from "./proxy.ts";
import {
  FileStore,
  type ImageInfo,
  type ImageStore,
  MemoryStore,
  type ServerImage,
} from "./store.ts";
import { ServerConfigError, type ServerUser, UserTable } from "./users.ts";

export type { ConnectionLimits, ImageInfo, ProxyView, ServerImage, ServerStats, ServerUser };
export { ImageConfigError } from "./store.ts";
export { ProxyListenError } from "./proxy.ts";
export { ServerConfigError };

export interface IvbsServerOptions {
  /** Listen address of every proxy; default "127.0.0.1". */
  host?: string;
  /** One proxy per entry; 0 = ephemeral. Default [0, 0] (two proxies). */
  ports?: number[];
  /** File-backed images (NAME.img in the dir); absent = memory (sparse). */
  dataDir?: string;
  users: ServerUser[];
  /** Created at start if missing. */
  images?: ServerImage[];
  /** Default 30_000; sent in GREETING as whole seconds, rounded up; enforced in ms. */
  idleTimeoutMs?: number;
  /** Default 5_000; 0 = no periodic push. */
  listProxiesIntervalMs?: number;
  /** Random per-reply delay so replies come back out of order. */
  replyDelayMs?: { min: number; max: number };
  /** Per-connection bounds (extension; defaults 256 requests, 64 MiB). */
  connectionLimits?: Partial<ConnectionLimits>;
  /** Logger (extension; default component "ivbs-server"). */
  log?: Logger;
  /** Time for the idle timeout and reply delays (extension; default the real clock). */
  clock?: Clock;
}

export interface IvbsTestServer {
  /** Live view of every proxy. */
  readonly proxies: readonly ProxyView[];
  /** Addresses of the running proxies. */
  addresses(): { host: string; port: number }[];
  /** Closes the listener and all its connections (clients see EOF or a reset). */
  stopProxy(index: number): Promise<void>;
  /** Listens again on the same port. */
  startProxy(index: number): Promise<void>;
  /** Keeps connections open but reads and answers nothing (not even keepalive). */
  stallProxy(index: number, stalled: boolean): void;
  /** Holds READ/WRITE replies back (extension); KEEPALIVE is still answered. */
  holdReplies(index: number, held: boolean): void;
  /** Closes current connections abruptly (one proxy or all); listeners keep accepting. */
  dropConnections(index?: number): void;
  /**
   * The next `count` matching requests are answered with `status` (and no data)
   * instead of being served. Without `filter.ops` only READ and WRITE match.
   */
  injectStatus(status: number, count: number, filter?: { proxy?: number; ops?: number[] }): void;
  createImage(image: ServerImage): Promise<void>;
  /** Every image the store serves (extension). */
  images(): Promise<ImageInfo[]>;
  readonly stats: ServerStats;
  close(): Promise<void>;
}

const DEFAULT_IDLE_TIMEOUT_MS = 30_000;
const DEFAULT_LIST_INTERVAL_MS = 5_000;

function checkOptions(options: IvbsServerOptions): void {
  if (!options || !Array.isArray(options.users)) {
    throw new ServerConfigError("options.users must be a list of {username, password}");
  }
  for (const port of options.ports ?? []) {
    if (!Number.isInteger(port) || port < 0 || port > 65535) {
      throw new ServerConfigError(`port ${port} is not in 0..65535`);
    }
  }
  if (options.ports && options.ports.length === 0) {
    throw new ServerConfigError("ports must name at least one proxy");
  }
  const idle = options.idleTimeoutMs;
  if (idle !== undefined && !(Number.isFinite(idle) && idle > 0)) {
    throw new ServerConfigError(`idleTimeoutMs ${idle} must be a positive number`);
  }
  const every = options.listProxiesIntervalMs;
  if (every !== undefined && !(Number.isFinite(every) && every >= 0)) {
    throw new ServerConfigError(`listProxiesIntervalMs ${every} must be 0 or more`);
  }
  const delay = options.replyDelayMs;
  if (delay && !(delay.min >= 0 && delay.max >= delay.min && Number.isFinite(delay.max))) {
    throw new ServerConfigError(
      `replyDelayMs ${delay.min}-${delay.max} must satisfy 0 <= min <= max`,
    );
  }
  const limits = options.connectionLimits ?? {};
  for (const [key, value] of Object.entries(limits)) {
    if (value !== undefined && !(Number.isSafeInteger(value) && value > 0)) {
      throw new ServerConfigError(`connectionLimits.${key} ${value} must be a positive integer`);
    }
  }
}

/** Own enumerable getters, so the view reads live and also spreads and serializes. */
function liveView(proxy: ProxyListener): ProxyView {
  return {
    index: proxy.index,
    name: proxy.name,
    host: proxy.host,
    get port() {
      return proxy.port;
    },
    get running() {
      return proxy.running;
    },
    get stalled() {
      return proxy.stalled;
    },
    get holding() {
      return proxy.holding;
    },
    get connections() {
      return proxy.connections;
    },
  };
}

class IvbsServer implements IvbsTestServer {
  readonly stats: ServerStats = {
    connectionsAccepted: 0,
    requests: {},
    injected: 0,
    readerWaits: 0,
    delayedReplies: 0,
  };
  readonly #proxies: ProxyListener[] = [];
  readonly #views: ProxyView[] = [];
  readonly #store: ImageStore;
  readonly #injected = new InjectedStatuses();
  readonly #log: Logger;
  #pushTimer: ReturnType<typeof setInterval> | undefined;
  #closed = false;

  constructor(options: IvbsServerOptions, store: ImageStore, users: UserTable) {
    this.#store = store;
    this.#log = options.log ?? logger("ivbs-server");
    const host = options.host ?? "127.0.0.1";
    const shared = {
      idleTimeoutMs: options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
      store,
      users,
      injected: this.#injected,
      stats: this.stats,
      replyDelayMs: options.replyDelayMs,
      limits: { ...DEFAULT_CONNECTION_LIMITS, ...options.connectionLimits },
      log: this.#log,
      clock: options.clock ?? SYSTEM_CLOCK,
    };
    const hooks = {
      listProxies: () => this.#advertised(),
      onAccept: () => void this.stats.connectionsAccepted++,
    };
    (options.ports ?? [0, 0]).forEach((port, index) => {
      const proxy = new ProxyListener(index, host, port, shared, hooks);
      this.#proxies.push(proxy);
      this.#views.push(liveView(proxy));
    });
  }

  get proxies(): readonly ProxyView[] {
    return this.#views;
  }

  addresses(): { host: string; port: number }[] {
    return this.#proxies.filter((p) => p.running).map((p) => ({ host: p.host, port: p.port }));
  }

  async start(options: IvbsServerOptions): Promise<void> {
    for (const image of options.images ?? []) await this.createImage(image);
    for (const proxy of this.#proxies) await proxy.start();
    const every = options.listProxiesIntervalMs ?? DEFAULT_LIST_INTERVAL_MS;
    if (every > 0) this.#pushTimer = setInterval(() => this.#pushProxyLists(), every);
  }

  stopProxy(index: number): Promise<void> {
    this.#log.info("stopping proxy", { proxy: this.#proxy(index).name });
    return this.#proxy(index).stop();
  }

  startProxy(index: number): Promise<void> {
    if (this.#closed) return Promise.reject(new ServerConfigError("the server is closed"));
    return this.#proxy(index).start();
  }

  stallProxy(index: number, stalled: boolean): void {
    this.#proxy(index).stall(stalled);
  }

  holdReplies(index: number, held: boolean): void {
    this.#proxy(index).hold(held);
  }

  dropConnections(index?: number): void {
    const proxies = index === undefined ? this.#proxies : [this.#proxy(index)];
    // stop() and close() wait for these connections to finish.
    for (const proxy of proxies) void proxy.dropConnections();
  }

  injectStatus(status: number, count: number, filter?: { proxy?: number; ops?: number[] }): void {
    if (filter?.proxy !== undefined) this.#proxy(filter.proxy);
    this.#injected.add(status, count, filter);
    this.#log.info("injecting status", {
      status,
      count,
      proxy: filter?.proxy,
      ops: filter?.ops?.map(opName),
    });
  }

  async createImage(image: ServerImage): Promise<void> {
    const stored = await this.#store.create(image);
    if (stored.size !== image.size) {
      this.#log.warn("image exists with another size; keeping its size", {
        image: image.name,
        size: stored.size,
        requested: image.size,
      });
    }
  }

  images(): Promise<ImageInfo[]> {
    return this.#store.list();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#pushTimer);
    for (const proxy of this.#proxies) {
      proxy.stall(false); // release stalled readers and writers
      proxy.hold(false);
    }
    await Promise.all(this.#proxies.map((proxy) => proxy.stop()));
    this.#injected.clear();
    await this.#store.close();
  }

  #proxy(index: number): ProxyListener {
    const proxy = this.#proxies[index];
    if (!proxy) {
      throw new RangeError(`no proxy ${index}: the server has ${this.#proxies.length}`);
    }
    return proxy;
  }

  /** Running proxies as clients should dial them. */
  #advertised(): ProxyAddress[] {
    return this.addresses().map(({ host, port }) => ({
      // A wildcard listen address is not dialable: advertise loopback instead.
      host: host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "::1" : host,
      port,
    }));
  }

  #pushProxyLists(): void {
    const list = this.#advertised();
    for (const proxy of this.#proxies) proxy.pushProxyList(list);
  }
}

/**
 * Starts every proxy and creates the configured images. Throws ServerConfigError
 * or ImageConfigError for bad options and ProxyListenError when a port is taken
 * (nothing is left running then).
 */
export async function startIvbsServer(options: IvbsServerOptions): Promise<IvbsTestServer> {
  checkOptions(options);
  const users = new UserTable(options.users);
  const store = options.dataDir ? new FileStore(options.dataDir) : new MemoryStore();
  const server = new IvbsServer(options, store, users);
  try {
    await server.start(options);
  } catch (error) {
    await server.close();
    throw error;
  }
  return server;
}
