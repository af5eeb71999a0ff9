/**
 * The daemon's desired state, wired to its tables: the config's mounts and
 * exports, the ones an operator added through the API (exports also from the
 * state file after a restart), kept up by one Reconciler. It answers the
 * tables' hooks (an accepted API action makes an item desired, an unmount or
 * remove on request drops it), adds the status of desired items to the
 * tables' views, applies a config reload, and sums up for systemd's STATUS=.
 *
 * When a ready item goes back to reconciling: a mount whose device is
 * detached without an unmount request (nbd-client -d, the kernel dropped it,
 * the serve loop ended). A session that gave up (the image changed under it)
 * leaves the device attached and failing I/O: that is not remounted on its
 * own, since a filesystem may sit on it. An export stays ready until removed:
 * each client opens its own session, and a client whose session fails
 * reconnects to the same export.
 * @module
 */
import type { Clock } from "../clock.ts";
import type { Logger } from "../log.ts";
import type { ApiExportTable, ApiMountTable } from "./api_tables.ts";
import type { ConfiguredExport, DaemonConfig } from "./config.ts";
import {
  type ClaimedDevices,
  configItems,
  diffDesired,
  exportItem,
  type Item,
  type MountItem,
  mountItem,
  NEVER,
  type StillAttached,
} from "./desired_items.ts";
import type { ExportInfo } from "./export_types.ts";
import type { ReloadResult } from "./api_types.ts";
import { NO_IO } from "./desired_status.ts";
import type { MountInfo, MountRequest } from "./mount_table.ts";
import { type ReconciledItem, Reconciler, statusLine } from "./reconciler.ts";
import type { ExportRecord, MountRecord } from "./state_file.ts";

/** What a reload did, by item label ("mount /dev/nbd1: disk (alice)"): the API's shape. */
export type { ReloadResult };

export interface ReconciliationOptions {
  config: DaemonConfig;
  table: ApiMountTable;
  exports: ApiExportTable;
  log: Logger;
  clock?: Clock;
  random?: () => number;
  /** The API's exports changed (the state file keeps them). */
  onApiExportsChange(): void;
  /** Whether a device the previous daemon left still waits for us. */
  stillAttached?: StillAttached;
}

/** Sections a reload cannot change in a running daemon. */
const RESTART_SECTIONS = ["http", "ivbs", "nbd", "stateDir", "reconcile"] as const;

export class Reconciliation {
  readonly reconciler: Reconciler<Item>;
  readonly #table: ApiMountTable;
  readonly #exports: ApiExportTable;
  readonly #claimed: ClaimedDevices = new Set();
  readonly #log: Logger;
  readonly #onApiExportsChange: () => void;
  readonly #statusListeners: ((line: string) => void)[] = [];
  readonly #stillAttached: StillAttached | undefined;
  #config: DaemonConfig;

  constructor(options: ReconciliationOptions) {
    this.#config = options.config;
    this.#table = options.table;
    this.#exports = options.exports;
    this.#log = options.log;
    this.#onApiExportsChange = options.onApiExportsChange;
    this.#stillAttached = options.stillAttached;
    this.reconciler = new Reconciler<Item>({
      backoff: options.config.reconcile.backoff,
      clock: options.clock,
      random: options.random,
      log: options.log,
      onChange: () => {
        const line = this.statusLine();
        for (const listener of this.#statusListeners) listener(line);
      },
    });
    this.#connectTables();
    for (
      const item of configItems(
        this.#config,
        this.#table,
        this.#exports,
        this.#claimed,
        this.#stillAttached,
      )
    ) {
      this.reconciler.add(item);
    }
  }

  /** "2 ready, 1 waiting: IVBS unreachable" (systemd's STATUS=). */
  statusLine(): string {
    return statusLine(this.reconciler.summary());
  }

  /** Calls `listener` with the status line after every change. */
  onStatus(listener: (line: string) => void): void {
    this.#statusListeners.push(listener);
  }

  /** Exports the previous daemon served for the API (with passwords), desired again. */
  addApiExports(specs: readonly ConfiguredExport[]): void {
    for (const spec of specs) this.reconciler.add(exportItem(this.#exports, spec, "api"));
  }

  /**
   * A device the previous daemon left that could not be taken over now (IVBS
   * unreachable…): the configured mount it matches (or else a mount of its
   * own, as the API's was) takes it over on its next attempts, while the
   * kernel keeps it waiting; after that it is mounted afresh.
   */
  retryTakeover(record: MountRecord, password: string): void {
    const matching = this.#items("mount").find(({ item }) =>
      item.origin === "config" && item.device === null && item.spec.image === record.image &&
      item.spec.username === record.username &&
      (item.spec.device === "auto" || item.spec.device === record.device)
    );
    if (matching) return matching.item.takeOver(record);
    const { device, image, username, readOnly } = record;
    const spec = { device, image, username, readOnly, password };
    const item = mountItem(this.#table, this.#claimed, spec, "api", "", this.#stillAttached);
    item.takeOver(record);
    this.reconciler.add(item);
  }

  /**
   * Starts reconciling and resolves once every desired item was tried once.
   * Mounts taken over from the previous daemon that no configured mount
   * claimed were the API's: they stay desired.
   */
  async firstPass(): Promise<void> {
    this.reconciler.start();
    await this.reconciler.firstPass();
    for (const mount of this.#table.list()) {
      if (mount.state !== "mounted" || this.#claimed.has(mount.device)) continue;
      const user = this.#config.users.find((u) => u.username === mount.username);
      if (!user) continue;
      const { device, image, username, readOnly } = mount;
      const request = { device, image, username, readOnly, password: user.password };
      this.#acceptMount({ ...request, connections: mount.connections.length || undefined }, mount);
    }
  }

  /** The API's exports, as the state file records them (no passwords). */
  apiExportRecords(): ExportRecord[] {
    return this.#items("export").filter((r) => r.item.origin === "api").map(({ item }) => ({
      name: item.spec.name,
      image: item.spec.image,
      username: item.spec.username,
      readOnly: item.spec.readOnly,
    }));
  }

  /** The API's exports' credentials, for the credential store. */
  apiExportCredentials(): { name: string; username: string; password: string }[] {
    return this.#items("export").filter((r) => r.item.origin === "api").map(({ item }) => ({
      name: item.spec.name,
      username: item.spec.username,
      password: item.spec.password,
    }));
  }

  /**
   * Applies a new config: its new items come up, the ones it dropped are
   * taken down, unchanged ones (same key) are not touched; those failing are
   * retried now with the new config's password.
   */
  async reload(next: DaemonConfig): Promise<ReloadResult> {
    const current = this.reconciler.list().filter((r) => r.item.origin === "config");
    const nextItems = configItems(
      next,
      this.#table,
      this.#exports,
      this.#claimed,
      this.#stillAttached,
    );
    const diff = diffDesired(current.map((r) => r.item.key), nextItems);
    const label = (key: string) => key.replace(/^config /, "");
    const restartNeeded = RESTART_SECTIONS.filter((section) =>
      JSON.stringify(this.#config[section]) !== JSON.stringify(next[section])
    ) as string[];
    if (JSON.stringify(exportListen(this.#config)) !== JSON.stringify(exportListen(next))) {
      restartNeeded.push("exports.listen");
    }
    // What a reload changes: the items and the users (for later takeovers).
    this.#config = {
      ...this.#config,
      mounts: next.mounts,
      exports: { ...this.#config.exports, items: next.exports.items },
      users: next.users,
    };
    for (const key of diff.unchanged) {
      const now = current.find((r) => r.item.key === key)!;
      const wanted = nextItems.find((item) => item.key === key)!;
      now.item.spec.password = wanted.spec.password;
      this.reconciler.retryNow(key);
    }
    this.#log.info("config reloaded", {
      added: diff.added.length,
      removed: diff.removed.length,
      unchanged: diff.unchanged.length,
      restartNeeded: restartNeeded.length > 0 ? restartNeeded.join(",") : undefined,
    });
    await Promise.all(diff.removed.map((key) => this.#remove(key)));
    for (const item of diff.added) this.reconciler.add(item);
    return {
      added: diff.added.map((item) => label(item.key)),
      removed: diff.removed.map(label),
      unchanged: diff.unchanged.map(label),
      restartNeeded,
    };
  }

  async #remove(key: string): Promise<void> {
    try {
      await this.reconciler.remove(key);
    } catch (error) {
      this.#log.error("taking down an item the config no longer lists failed", {
        item: key,
        error,
      });
    }
  }

  #items<K extends Item["kind"]>(kind: K): ReconciledItem<Extract<Item, { kind: K }>>[] {
    return this.reconciler.list().filter((r) => r.item.kind === kind) as ReconciledItem<
      Extract<Item, { kind: K }>
    >[];
  }

  #acceptMount(request: MountRequest, info: MountInfo): void {
    const spec = {
      device: info.device,
      image: request.image,
      username: request.username,
      password: request.password,
      readOnly: request.readOnly ?? false,
      ...(request.connections === undefined ? {} : { connections: request.connections }),
    };
    const item = mountItem(this.#table, this.#claimed, spec, "api");
    this.reconciler.adopt(item, item.upOn(info.device));
  }

  #connectTables(): void {
    const mountOn = (device: string) => this.#items("mount").find((r) => r.item.device === device);
    this.#table.connect({
      accepted: (request, info) => this.#acceptMount(request, info),
      removed: (device) => {
        const found = mountOn(device);
        if (found) this.reconciler.forget(found.item.key);
      },
      dropDesired: async (device) => {
        const found = this.#items("mount").find((r) =>
          r.status.state !== "ready" && r.item.spec.device === device
        );
        return found !== undefined && await this.reconciler.remove(found.item.key);
      },
      view: (rows) => this.#mountRows(rows),
    });
    const exportNamed = (name: string) =>
      this.#items("export").find((r) => r.item.spec.name === name);
    this.#exports.connect({
      accepted: (request, _info) => {
        const spec: ConfiguredExport = { ...request, readOnly: request.readOnly ?? false };
        this.reconciler.adopt(exportItem(this.#exports, spec, "api"), { lost: NEVER });
        this.#onApiExportsChange();
      },
      removed: (name) => {
        const found = exportNamed(name);
        if (found) this.reconciler.forget(found.item.key);
        this.#onApiExportsChange();
      },
      dropDesired: async (name) => {
        const found = exportNamed(name);
        if (!found || found.status.state === "ready") return false;
        await this.reconciler.remove(found.item.key);
        this.#onApiExportsChange();
        return true;
      },
      view: (rows) => this.#exportRows(rows),
    });
  }

  /** The table's mounts, with desired mounts not up (and their attempt hidden behind them). */
  #mountRows(rows: MountInfo[]): MountInfo[] {
    const waiting = this.#items("mount").filter((r) => r.status.state !== "ready");
    const attempting = (row: MountInfo) =>
      row.state === "mounting" &&
      waiting.some((r) => r.item.spec.image === row.image && r.item.spec.username === row.username);
    const shown = rows.filter((row) => !attempting(row));
    for (const row of shown) {
      // Rows are fresh objects on every read: decorated in place, so snapshots keep theirs.
      const item = this.#items("mount").find((r) => r.item.device === row.device);
      if (item) row.attempts = item.status.attempts;
    }
    return [...shown, ...waiting.map((r) => desiredMountRow(r.item, r.status))];
  }

  /** The table's exports, a desired one not served yet shown with its status instead. */
  #exportRows(rows: ExportInfo[]): ExportInfo[] {
    const waiting = this.#items("export").filter((r) => r.status.state !== "ready");
    const names = new Set(waiting.map((r) => r.item.spec.name));
    const desiredRows = waiting.map((r) => this.#exports.desiredRow(r.item.spec, r.status));
    return [...rows.filter((row) => !names.has(row.name)), ...desiredRows]
      .sort((a, b) => a.name < b.name ? -1 : 1);
  }
}

function exportListen(config: DaemonConfig) {
  return { socket: config.exports.socket, tcp: config.exports.tcp };
}

/** A desired mount that is not up: what it asks for and why it is not there, no I/O. */
function desiredMountRow(item: MountItem, status: ReconciledItem["status"]): MountInfo {
  return {
    device: item.spec.device,
    image: item.spec.image,
    username: item.spec.username,
    state: status.state === "ready" ? "mounted" : status.state,
    ...(status.reason === undefined ? {} : { reason: status.reason }),
    ...(status.nextRetryAt === undefined ? {} : { nextRetryAt: status.nextRetryAt }),
    attempts: status.attempts,
    sizeBytes: 0,
    readOnly: item.spec.readOnly,
    proxy: null,
    ...NO_IO,
    throughput: { ...NO_IO.throughput },
    retries: 0,
    mountedAt: null,
    connections: [],
  };
}
