/**
 * The mount and export tables as the API drives them. What the tables do is
 * unchanged; around it:
 * - a refused or failed action (mount, unmount, export add or remove) is a
 *   warn line, and so an /api/events entry, naming the item, the code and
 *   the reason (never the password);
 * - an accepted mount or export becomes desired state (`hooks.accepted`), an
 *   unmount or remove on request leaves it (`hooks.removed`);
 * - `list()` shows desired items that are not up beside the table's own.
 * The reconciler's attempts use `mount(…, {quiet})` / `add(…, {quiet})` and
 * `detachDesired` / `removeDesired`, which skip all of this (it logs its own
 * changes of state).
 * @module
 */
import { errorCode } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import type { MountDriver } from "./driver.ts";
import { ExportTable, type ExportTableOptions } from "./export_table.ts";
import type { ExportInfo, ExportRequest, ExportSnapshot } from "./export_types.ts";
import {
  type MountInfo,
  type MountRequest,
  type MountSnapshot,
  MountTable,
  type MountTableOptions,
} from "./mount_table.ts";
import { shortReason } from "./reconciler.ts";

/** How a table tells the daemon's desired state what the API did. */
export interface DesiredHooks<Request, Info> {
  /** The API's action succeeded: the item is desired from now on. */
  accepted(request: Request, info: Info): void;
  /** Taken down on request (device or export name): no longer desired. */
  removed(id: string): void;
  /**
   * Asked to take down an item the table does not hold: true when it was a
   * desired one not up (pending or failing), which then stops being desired.
   */
  dropDesired(id: string): Promise<boolean>;
  /**
   * The table's rows with the desired items' status (decorated in place), and
   * rows for those not up.
   */
  view(rows: Info[]): Info[];
}

/** Snapshots for metrics with the same rows as the views: desired items not up have no I/O. */
function viewSnapshots<Info, Snapshot extends { info: Info }>(
  base: Snapshot[],
  view: ((rows: Info[]) => Info[]) | undefined,
  empty: (info: Info) => Snapshot,
): Snapshot[] {
  if (!view) return base;
  return view(base.map((s) => s.info)).map((info) =>
    base.find((s) => s.info === info) ?? empty(info)
  );
}

function refusal(error: unknown): { code: string; reason: string } {
  return { code: errorCode(error) ?? "FAILED", reason: shortReason(error) };
}

/**
 * An API action: its failure is a warn line naming the item (`names`), its
 * success is told to the desired state.
 */
async function asked<Request, Info>(
  log: Logger,
  refused: string,
  names: object,
  action: () => Promise<Info>,
  request: Request,
  hooks: DesiredHooks<Request, Info> | null,
): Promise<Info> {
  let info: Info;
  try {
    info = await action();
  } catch (error) {
    log.warn(refused, { ...names, ...refusal(error) });
    throw error;
  }
  hooks?.accepted(request, info);
  return info;
}

export class ApiMountTable extends MountTable {
  readonly #log: Logger;
  #hooks: DesiredHooks<MountRequest, MountInfo> | null = null;
  /** Devices being unmounted on request: their detach is not a loss. */
  readonly #requested = new Set<string>();

  constructor(driver: MountDriver, options: MountTableOptions) {
    super(driver, options);
    this.#log = options.log ?? logger("mounts");
  }

  connect(hooks: DesiredHooks<MountRequest, MountInfo>): void {
    this.#hooks = hooks;
  }

  override async mount(request: MountRequest, options: { quiet?: boolean } = {}) {
    if (options.quiet) return await super.mount(request, options);
    const names = {
      device: request.device ?? "auto",
      image: request.image,
      user: request.username,
    };
    const mount = () => super.mount(request);
    return await asked(this.#log, "mount refused", names, mount, request, this.#hooks);
  }

  override async unmount(deviceText: string): Promise<void> {
    try {
      await this.detachDesired(deviceText);
    } catch (error) {
      const code = errorCode(error);
      if (code === "NOT_MOUNTED" || code === "UNKNOWN_DEVICE") {
        if (await this.#hooks?.dropDesired(this.resolveDevice(deviceText))) return;
      }
      this.#log.warn("unmount refused", { device: deviceText.slice(0, 140), ...refusal(error) });
      throw error;
    }
    this.#hooks?.removed(this.resolveDevice(deviceText));
  }

  /** Detaches a device on request (its detach is not reported as lost). */
  async detachDesired(deviceText: string): Promise<void> {
    let device: string | null = null;
    try {
      device = this.resolveDevice(deviceText);
      this.#requested.add(device);
      await super.unmount(device);
    } finally {
      if (device !== null) this.#requested.delete(device);
    }
  }

  /**
   * Settles, with why, when `device` is detached without an unmount request
   * (nbd-client -d, the kernel dropped it, its serve loop ended); never for
   * one asked for.
   */
  lostOf(device: string): Promise<string> {
    const attachment = super.snapshots().find((s) => s.info.device === device)?.attachment;
    if (!attachment) return Promise.resolve(`${device} is not attached`);
    return attachment.done.then(
      () => "the device was detached without an unmount request",
      (error) => `the device was detached: ${shortReason(error)}`,
    ).then((why) => this.#requested.has(device) ? new Promise<string>(() => {}) : why);
  }

  override list(): MountInfo[] {
    const rows = super.list();
    return this.#hooks?.view(rows) ?? rows;
  }

  override snapshots(): MountSnapshot[] {
    return viewSnapshots(
      super.snapshots(),
      this.#hooks?.view,
      (info) => ({ info, attachment: null, backend: null }),
    );
  }
}

export class ApiExportTable extends ExportTable {
  readonly #log: Logger;
  #hooks: DesiredHooks<ExportRequest, ExportInfo> | null = null;

  constructor(driver: MountDriver, options: ExportTableOptions) {
    super(driver, options);
    this.#log = options.log ?? logger("exports");
  }

  connect(hooks: DesiredHooks<ExportRequest, ExportInfo>): void {
    this.#hooks = hooks;
  }

  override async add(request: ExportRequest, options: { quiet?: boolean } = {}) {
    if (options.quiet) return await super.add(request, options);
    const names = {
      export: request.name.slice(0, 140),
      image: request.image,
      user: request.username,
    };
    const add = () => super.add(request);
    return await asked(this.#log, "export refused", names, add, request, this.#hooks);
  }

  override async remove(name: string): Promise<void> {
    try {
      await super.remove(name);
    } catch (error) {
      const code = errorCode(error);
      if ((code === "UNKNOWN_EXPORT" || code === "BUSY") && await this.#hooks?.dropDesired(name)) {
        return;
      }
      this.#log.warn("export removal refused", { export: name.slice(0, 140), ...refusal(error) });
      throw error;
    }
    this.#hooks?.removed(name);
  }

  /** Stops serving `name` because it left the desired state. */
  async removeDesired(name: string): Promise<void> {
    await super.remove(name);
  }

  override list(): ExportInfo[] {
    const rows = super.list();
    return this.#hooks?.view(rows) ?? rows;
  }

  override snapshots(): ExportSnapshot[] {
    return viewSnapshots(super.snapshots(), this.#hooks?.view, (info) => ({ info, stats: null }));
  }
}
