/**
 * The daemon's lifecycle: take over what the previous daemon left, reconcile
 * the desired mounts and exports (the config's and the API's; see
 * reconciliation.ts) until asked to stop, then stop the front-ends first (no
 * new requests), stop reconciling, detach every device and close the NBD
 * exports. Front-ends such as the HTTP server register themselves with `onStop`.
 * @module
 */
import { type Logger, logger } from "../log.ts";
import type { Clock } from "../clock.ts";
import type { ConfiguredExport, DaemonConfig } from "./config.ts";
import type { MountDriver } from "./driver.ts";
import { checkImage, type ImageCheckRequest, type ImageInfo } from "./image_check.ts";
import { ApiExportTable, ApiMountTable } from "./api_tables.ts";
import type { MountInfo } from "./mount_table.ts";
import { Reconciliation, type ReloadResult } from "./reconciliation.ts";
import { EventLog, type EventLogOptions } from "./events.ts";
import {
  exportKey,
  History,
  type HistoryOptions,
  type HistorySource,
  mountKey,
} from "./history.ts";
import {
  ownerLabel,
  ProxyRegistry,
  type SessionOwner,
  type SessionWatch,
} from "./proxy_registry.ts";
import {
  type DaemonState,
  type ExportRecord,
  readState,
  StateFileError,
  StateWriter,
} from "./state_file.ts";
import { CredentialStore, StoredCredentials } from "./credential_store.ts";
import { mountPassword, prepareAdoptions, PreparedTakeover, takeoverPassword } from "./takeover.ts";
import { CodedError, errorMessage } from "../error_info.ts";
import { daemonGone } from "./daemon_process.ts";
import { type IdleProbeOptions, IdleProxyProber } from "./proxy_probe.ts";

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
  /** The idle proxies' checks (interval, clock), when the driver can probe. */
  probes?: IdleProbeOptions;
  /** The reconciler's timers (tests pass a manual clock) and jitter. */
  clock?: Clock;
  random?: () => number;
}

export class Daemon {
  readonly config: DaemonConfig;
  readonly table: ApiMountTable;
  readonly exports: ApiExportTable;
  /** Desired mounts and exports, kept up. */
  readonly reconciliation: Reconciliation;
  readonly startedAt = Date.now();
  /** Recent events: every info/warn/error line of the tables, sessions and export server. */
  readonly events: EventLog;
  /** Every IVBS proxy known, with its health. */
  readonly proxies: ProxyRegistry;
  /** The last minutes of throughput and latency per mount and export. */
  readonly history: History;
  readonly #stopHistory: () => void;
  /** Checks of proxies no session uses (null when the driver cannot probe). */
  readonly #prober: IdleProxyProber | null;
  /** Resolves once shutdown has finished (every device detached). */
  readonly done: Promise<void>;
  readonly #log: Logger;
  readonly #driver: MountDriver;
  readonly #state: StateWriter;
  /** What live mounts and API exports need to log in again after a restart. */
  readonly #credentials: CredentialStore;
  /** What the previous daemon stored (read by restore), for its exports. */
  #stored = new StoredCredentials();
  /** False once a second live daemon was seen on the same stateDir: its file is not ours. */
  #ownsState = true;
  /** Stopped for good: the API's exports are not kept for a next daemon. */
  #forgetApiExports = false;
  readonly #stopHooks: (() => Promise<void>)[] = [];
  #finish!: () => void;
  #stopping: Promise<void> | null = null;

  constructor(options: DaemonOptions) {
    this.config = options.config;
    this.events = new EventLog(options.events);
    const logFor = options.logFor ?? logger;
    // The log feeds the events ring: one source for both.
    this.#log = this.events.wrap(options.log ?? logger("daemon"), "daemon");
    const proxiesLog = this.events.wrap(logFor("proxies"), "proxies");
    this.proxies = new ProxyRegistry(options.config.ivbs.proxies, { log: proxiesLog });
    this.#driver = options.driver;
    this.#state = new StateWriter(options.config.stateDir, (error) => {
      this.#log.error("cannot save the state file; a restart may not find the devices", {
        stateDir: options.config.stateDir,
        error,
      });
    });
    this.#credentials = new CredentialStore(options.config.credentialsPath, this.#log);
    const watchSession = (owner: SessionOwner) => this.#watch(owner, logFor("ivbs"));
    this.table = new ApiMountTable(options.driver, {
      deviceCount: options.config.nbd.devices,
      connections: options.config.nbd.connections,
      log: this.#log,
      watchSession,
      deviceLog: (context) => this.events.wrap(logFor("nbd"), "nbd", context),
      onPersistentChange: () => void this.saveState(),
    });
    this.exports = new ApiExportTable(options.driver, {
      settings: options.config.exports,
      stateDir: options.config.stateDir,
      log: this.#log,
      serverLog: this.events.wrap(logFor("export"), "export"),
      watchSession,
    });
    this.reconciliation = new Reconciliation({
      config: options.config,
      table: this.table,
      exports: this.exports,
      log: this.events.wrap(logFor("reconcile"), "reconcile"),
      clock: options.clock,
      random: options.random,
      onApiExportsChange: () => void this.saveState(),
      stillAttached: (record) =>
        this.#driver.isStillAttached?.(record.index, record.backendId) ?? Promise.resolve(false),
    });
    this.history = new History(options.history);
    this.#stopHistory = this.history.start(() => this.historySources());
    const probe = options.driver.probeProxy?.bind(options.driver);
    this.#prober = probe
      ? new IdleProxyProber(this.proxies, probe, { log: proxiesLog, ...options.probes })
      : null;
    this.#prober?.start();
    this.done = new Promise<void>((resolve) => this.#finish = resolve);
  }

  /** A session's watch: its log lines name the mount or export, its events reach the registry. */
  #watch(owner: SessionOwner, base: Logger): SessionWatch {
    // A mount's owner is its log context by reference: when the kernel picks
    // the device, the mount table fills in owner.device and later lines name it.
    const context = owner.device !== undefined
      ? owner
      : { export: owner.export, image: owner.image };
    const log = this.events.wrap(base, "ivbs", context);
    const observer = this.proxies.observe(owner, log);
    return {
      onEvent: observer.onEvent,
      log,
      closed: () => observer.closed(),
      renamed: () => observer.rename(ownerLabel(owner)),
    };
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

  /** Writes the state file from the mount table (the mounts that outlive the daemon). */
  async saveState(): Promise<void> {
    if (!this.#ownsState) return;
    // Credentials first: a state record whose credentials are not on disk yet
    // could not be taken over after a crash in between.
    const exports = this.#forgetApiExports ? [] : this.reconciliation.apiExportRecords();
    const saved = new Set(exports.map((e) => e.name));
    await this.#credentials.write({
      mounts: this.table.persistentCredentials(),
      exports: this.reconciliation.apiExportCredentials().filter((e) => saved.has(e.name)),
    });
    await this.#state.write(this.table.persistentRecords(), exports);
  }

  /**
   * The previous daemon's state, or null: none, unreadable (logged), or in a
   * newer format (logged; this daemon then never writes the file, so a
   * downgrade does not destroy what the newer daemon left).
   */
  async #readPrevious(): Promise<DaemonState | null> {
    try {
      return await readState(this.config.stateDir);
    } catch (error) {
      if (error instanceof StateFileError && error.reason === "newer") {
        this.#ownsState = false;
        this.#log.error(
          "state file from a newer ivbsnetd: leaving it as it is; its devices are not taken over and this daemon's are not saved",
          { error: error.message },
        );
        return null;
      }
      const message = error instanceof StateFileError ? error.message : errorMessage(error);
      this.#log.error("ignoring an unreadable state file", { error: message });
      return null;
    }
  }

  /**
   * `serve --replace`, while the previous daemon still serves: logs in and
   * attaches the image for every device its state file lists (see
   * takeover.ts), and checks every export it will serve (ExportTable.prepare).
   * `restore(prepared)` and `reconcile()` complete it once that daemon
   * has left.
   */
  async prepareTakeover(): Promise<PreparedTakeover> {
    const state = await this.#readPrevious();
    const stored = await this.#credentials.load();
    // Exports: the probe `add` would make (login, image, size), made now.
    const exports = [
      ...this.config.exports.items,
      ...this.#restorableExports(state?.exports ?? [], stored, () => {}),
    ];
    await Promise.all(exports.map((item) =>
      this.exports.prepare(item).catch((error) => {
        this.#log.warn("cannot prepare an export; trying again once the old daemon has left", {
          export: item.name,
          image: item.image,
          error: errorMessage(error),
        });
      })
    ));
    if (state === null || state.mounts.length === 0) return new PreparedTakeover();
    return await prepareAdoptions(state.mounts, {
      table: this.table,
      driver: this.#driver,
      password: (record) => mountPassword(this.config.users, stored, record),
      log: this.#log,
    });
  }

  /**
   * Takes over the devices a previous daemon left attached (its state file):
   * each one still carrying its backend id is mounted again with a new socket
   * (with `prepared`, those already logged in only get the socket); each one
   * gone is one log line and leaves the state. The password is the config
   * user's, else the credential store's. Never throws.
   */
  async restore(prepared = new PreparedTakeover()): Promise<MountOutcome[]> {
    const stateDir = this.config.stateDir;
    const state = await this.#readPrevious();
    if (state === null || (state.mounts.length === 0 && state.exports.length === 0)) {
      await prepared.abandonRest();
      return [];
    }
    if (state.pid !== Deno.pid && !await daemonGone(state.pid, PREVIOUS_DAEMON_EXIT_MS)) {
      this.#ownsState = false;
      this.#log.error("another daemon still runs on this stateDir; not taking over its devices", {
        stateDir,
        pid: state.pid,
      });
      await prepared.abandonRest();
      return [];
    }
    this.#stored = await this.#credentials.load();
    this.reconciliation.addApiExports(
      this.#restorableExports(state.exports, this.#stored, (record) => {
        this.#log.error(
          "cannot serve an export again: its user is not in the config and no credentials were stored for it",
          { export: record.name, image: record.image, user: record.username },
        );
      }),
    );
    if (state.mounts.length === 0) {
      await prepared.abandonRest();
      // The API exports just made desired are written back, in this daemon's format.
      await this.saveState();
      return [];
    }
    this.#log.info("taking over devices from the previous daemon", {
      pid: state.pid,
      mounts: state.mounts.length,
      prepared: prepared.size,
    });
    const outcomes = await Promise.all(state.mounts.map(async (record): Promise<MountOutcome> => {
      const request = { device: record.device, image: record.image };
      const ready = prepared.claim(record);
      const still = await this.#driver.isStillAttached?.(record.index, record.backendId) ?? false;
      if (!still) {
        await ready?.abandon();
        this.#log.warn("device of the previous daemon is gone; forgetting it", {
          device: record.device,
          image: record.image,
          backendId: record.backendId,
        });
        return { request, error: new Error(`${record.device} is gone`) };
      }
      const password = ready ? undefined : mountPassword(this.config.users, this.#stored, record);
      if (!ready && password === undefined) {
        this.#log.error(
          "cannot take over a device: its user is not in the config and no credentials were stored for it; its I/O fails after nbd.deadConnTimeoutS",
          { device: record.device, image: record.image, user: record.username },
        );
        return {
          request,
          error: new Error(`user ${record.username} not in the config, no stored credentials`),
        };
      }
      try {
        const mount = ready
          ? await ready.takeOver()
          : await (await this.table.prepareAdopt(record, password as string)).takeOver();
        return { request, mount };
      } catch (error) {
        const err = error instanceof Error ? error : new Error(String(error));
        this.#log.error("taking over a device failed; retrying while it waits for us", {
          device: record.device,
          image: record.image,
          code: (err as { code?: string }).code,
          error: err.message,
        });
        const retryWith = password ?? mountPassword(this.config.users, this.#stored, record);
        if (retryWith !== undefined) this.reconciliation.retryTakeover(record, retryWith);
        return { request, error: err };
      }
    }));
    await prepared.abandonRest();
    await this.saveState();
    return outcomes;
  }

  /**
   * Starts reconciling the desired mounts and exports; resolves once each was
   * tried once (READY=1 waits for it), failing ones go on being retried.
   * Never throws.
   */
  async reconcile(): Promise<void> {
    await this.reconciliation.firstPass();
  }

  /**
   * Re-reads the config with `load` and applies its mounts and exports (see
   * Reconciliation.reload). A config `load` refuses (its error is rethrown)
   * is an error line and event, and the running state is kept.
   */
  async reload(load: () => Promise<DaemonConfig>): Promise<ReloadResult> {
    if (this.stopping) throw new ReloadError("the daemon is shutting down", "SHUTTING_DOWN");
    let config: DaemonConfig;
    try {
      config = await load();
    } catch (error) {
      this.#log.error("config reload refused; the running state is kept", {
        error: errorMessage(error),
      });
      throw error;
    }
    return await this.reconciliation.reload(config);
  }

  /** `records` the config does not list, with their passwords (config, else `stored`). */
  #restorableExports(
    records: readonly ExportRecord[],
    stored: StoredCredentials,
    noPassword: (record: ExportRecord) => void,
  ): ConfiguredExport[] {
    const configured = new Set(this.config.exports.items.map((item) => item.name));
    const restorable: ConfiguredExport[] = [];
    for (const record of records) {
      if (configured.has(record.name)) continue;
      const password = takeoverPassword(
        this.config.users,
        record.username,
        () => stored.exportPassword(record.name, record.username),
      );
      if (password === undefined) noPassword(record);
      else restorable.push({ ...record, password });
    }
    return restorable;
  }

  /** One read-only IVBS login, closed again: does the image exist for these credentials? */
  checkImage(request: ImageCheckRequest): Promise<ImageInfo> {
    return checkImage(this.#driver, request);
  }

  /**
   * Stops front-ends, detaches every device (or with `keepDevices` leaves the
   * ones that can outlive the daemon attached for the next one), resolves
   * `done`. Idempotent: later calls return the same promise. Never rejects.
   */
  shutdown(reason: string, options: { keepDevices?: boolean } = {}): Promise<void> {
    if (this.#stopping) return this.#stopping;
    const keepDevices = options.keepDevices ?? false;
    this.#log.info("shutting down", {
      reason,
      mounts: this.table.size,
      exports: this.exports.size,
      keepDevices,
    });
    this.#stopping = (async () => {
      this.#stopHistory();
      this.reconciliation.reconciler.stop();
      await this.#prober?.stop();
      for (const hook of this.#stopHooks) {
        try {
          await hook();
        } catch (error) {
          this.#log.warn("stopping a front-end failed", { error });
        }
      }
      await Promise.all([this.table.closeAll({ keepDevices }), this.exports.closeAll()]);
      if (!keepDevices) {
        // Stopped for good: the next daemon starts from the config alone.
        this.#forgetApiExports = true;
        await this.saveState();
      }
      const left = this.table.size;
      this.#log.info(
        left > 0
          ? `stopped; ${left} device(s) left attached for the next daemon, every export closed`
          : "stopped; every device detached, every export closed",
      );
      this.#finish();
    })();
    return this.#stopping;
  }
}

/** A reload that cannot run now. */
export class ReloadError extends CodedError<"SHUTTING_DOWN"> {
  override readonly name = "ReloadError";
}

/** How long restore() waits for the daemon that wrote the state file to exit. */
const PREVIOUS_DAEMON_EXIT_MS = 15_000;
