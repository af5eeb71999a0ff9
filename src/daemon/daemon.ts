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

export interface MountOutcome {
  request: { device: string; image: string };
  mount?: MountInfo;
  error?: Error;
}

export interface DaemonOptions {
  config: DaemonConfig;
  driver: MountDriver;
  log?: Logger;
}

export class Daemon {
  readonly config: DaemonConfig;
  readonly table: MountTable;
  readonly exports: ExportTable;
  readonly startedAt = Date.now();
  /** Resolves once shutdown has finished (every device detached). */
  readonly done: Promise<void>;
  readonly #log: Logger;
  readonly #stopHooks: (() => Promise<void>)[] = [];
  #finish!: () => void;
  #stopping: Promise<void> | null = null;

  constructor(options: DaemonOptions) {
    this.config = options.config;
    this.#log = options.log ?? logger("daemon");
    this.table = new MountTable(options.driver, {
      deviceCount: options.config.nbd.devices,
      log: this.#log,
    });
    this.exports = new ExportTable(options.driver, {
      settings: options.config.exports,
      stateDir: options.config.stateDir,
      log: this.#log,
    });
    this.done = new Promise<void>((resolve) => this.#finish = resolve);
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
