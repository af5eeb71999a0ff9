/**
 * The daemon's lifecycle: mount and export what the config lists (a failing
 * mount or export is logged and does not stop the others), run until asked to
 * stop, then stop the front-ends first (no new requests), detach every device
 * and close the NBD exports. Front-ends such as the HTTP server register
 * themselves with `onStop`.
 * @module
 */
import { type Logger, logger } from "../log.ts";
import type { ConfiguredMount, DaemonConfig } from "./config.ts";
import type { MountDriver } from "./driver.ts";
import { type ExportOutcome, ExportTable } from "./export_table.ts";
import { type MountInfo, MountTable } from "./mount_table.ts";
import { EventLog, type EventLogOptions } from "./events.ts";
import {
  exportKey,
  History,
  type HistoryOptions,
  type HistorySource,
  mountKey,
} from "./history.ts";
import { ProxyRegistry, type SessionOwner, type SessionWatch } from "./proxy_registry.ts";

export interface MountOutcome {
  request: { device: string; image: string };
  mount?: MountInfo;
  error?: Error;
}

export interface DaemonOptions {
  config: DaemonConfig;
  driver: MountDriver;
  log?: Logger;
  /** Loggers of the other components (IVBS sessions, export server…); default `logger`. */
  logFor?: (component: string) => Logger;
  /** The recent events ring (capacity; clock for tests). */
  events?: EventLogOptions;
  /** The graphs' sampling (interval, points kept). */
  history?: HistoryOptions;
}

export class Daemon {
  readonly config: DaemonConfig;
  readonly table: MountTable;
  readonly exports: ExportTable;
  readonly startedAt = Date.now();
  /** Recent events: every info/warn/error line of the tables, sessions and export server. */
  readonly events: EventLog;
  /** Every IVBS proxy known, with its health. */
  readonly proxies: ProxyRegistry;
  /** The last minutes of throughput and latency per mount and export. */
  readonly history: History;
  readonly #stopHistory: () => void;
  /** Resolves once shutdown has finished (every device detached). */
  readonly done: Promise<void>;
  readonly #log: Logger;
  readonly #stopHooks: (() => Promise<void>)[] = [];
  #finish!: () => void;
  #stopping: Promise<void> | null = null;

  constructor(options: DaemonOptions) {
    this.config = options.config;
    this.events = new EventLog(options.events);
    const logFor = options.logFor ?? logger;
    // The log feeds the events ring: one source for both.
    this.#log = this.events.wrap(options.log ?? logger("daemon"), "daemon");
    this.proxies = new ProxyRegistry(options.config.ivbs.proxies, {
      log: this.events.wrap(logFor("proxies"), "proxies"),
    });
    const watchSession = (owner: SessionOwner) => this.#watch(owner, logFor("ivbs"));
    this.table = new MountTable(options.driver, {
      deviceCount: options.config.nbd.devices,
      log: this.#log,
      watchSession,
      deviceLog: (device) => this.events.wrap(logFor("nbd"), "nbd", { device }),
    });
    this.exports = new ExportTable(options.driver, {
      settings: options.config.exports,
      stateDir: options.config.stateDir,
      log: this.#log,
      serverLog: this.events.wrap(logFor("export"), "export"),
      watchSession,
    });
    this.history = new History(options.history);
    this.#stopHistory = this.history.start(() => this.historySources());
    this.done = new Promise<void>((resolve) => this.#finish = resolve);
  }

  /** A session's watch: its log lines name the mount or export, its events reach the registry. */
  #watch(owner: SessionOwner, base: Logger): SessionWatch {
    const context = owner.device !== undefined
      ? { device: owner.device, image: owner.image }
      : { export: owner.export, image: owner.image };
    const log = this.events.wrap(base, "ivbs", context);
    const observer = this.proxies.observe(owner, log);
    return { onEvent: observer.onEvent, log, closed: () => observer.closed() };
  }

  /** What the graphs sample: every mount's and export's counters, by history key. */
  historySources(): Map<string, HistorySource> {
    const sources = new Map<string, HistorySource>();
    for (const m of this.table.snapshots()) {
      sources.set(mountKey(m.info.device), { ...m.info, stats: m.attachment?.stats });
    }
    for (const e of this.exports.snapshots()) {
      sources.set(exportKey(e.info.name), { ...e.info, stats: e.stats });
    }
    return sources;
  }

  /** Records a problem found in the config (it is also a log line). */
  configProblem(message: string): void {
    this.events.wrap(logger("config"), "config").warn(message);
  }

  get stopping(): boolean {
    return this.#stopping !== null;
  }

  /** Registers a front-end to stop (stop accepting requests) before devices are detached. */
  onStop(hook: () => Promise<void>): void {
    this.#stopHooks.push(hook);
  }

  /** Mounts every configured image concurrently; never throws (outcomes say what failed). */
  async mountConfigured(): Promise<MountOutcome[]> {
    return await Promise.all(this.config.mounts.map((mount) => this.#mountOne(mount)));
  }

  /** Starts serving every configured export; never throws (outcomes say what failed). */
  async exportConfigured(): Promise<ExportOutcome[]> {
    return await this.exports.addConfigured(this.config.exports.items);
  }

  async #mountOne(mount: ConfiguredMount): Promise<MountOutcome> {
    const request = { device: mount.device, image: mount.image };
    try {
      const info = await this.table.mount(mount);
      return { request, mount: info };
    } catch (error) {
      const err = error instanceof Error ? error : new Error(String(error));
      this.#log.error("configured mount failed", {
        device: mount.device,
        image: mount.image,
        user: mount.username,
        code: (err as { code?: string }).code,
        error: err.message,
      });
      return { request, error: err };
    }
  }

  /**
   * Stops front-ends, detaches every device, resolves `done`. Idempotent: later
   * calls return the same promise. Never rejects.
   */
  shutdown(reason: string): Promise<void> {
    if (this.#stopping) return this.#stopping;
    this.#log.info("shutting down", {
      reason,
      mounts: this.table.size,
      exports: this.exports.size,
    });
    this.#stopping = (async () => {
      this.#stopHistory();
      for (const hook of this.#stopHooks) {
        try {
          await hook();
        } catch (error) {
          this.#log.warn("stopping a front-end failed", { error });
        }
      }
      await Promise.all([this.table.closeAll(), this.exports.closeAll()]);
      this.#log.info("stopped; every device detached, every export closed");
      this.#finish();
    })();
    return this.#stopping;
  }
}
