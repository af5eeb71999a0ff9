/**
 * The daemon's desired state as reconciler items: a mount or an export with
 * its credentials, a stable key over its fields (never the password), how to
 * bring it up and down through the tables, and the diff a config reload
 * applies (added, removed, unchanged by key).
 * @module
 */
import type { ApiExportTable, ApiMountTable } from "./api_tables.ts";
import type { ConfiguredExport, ConfiguredMount, DaemonConfig } from "./config.ts";
import type { DesiredItem, UpItem } from "./reconciler.ts";
import type { MountRecord } from "./state_file.ts";

export interface MountItem extends DesiredItem {
  readonly kind: "mount";
  readonly spec: ConfiguredMount;
  /** The device it is up on, once up. */
  readonly device: string | null;
  /** Its watch once up on `device` without the reconciler (an accepted API mount). */
  upOn(device: string): UpItem;
  /** A device the previous daemon left for it, to take over (retried) while still attached. */
  takeOver(record: MountRecord): void;
}

/** Whether a device the previous daemon left still carries its backend id. */
export type StillAttached = (record: MountRecord) => Promise<boolean>;

export interface ExportItem extends DesiredItem {
  readonly kind: "export";
  readonly spec: ConfiguredExport;
}

export type Item = MountItem | ExportItem;

/** "mount /dev/nbd1: disk (alice)", "export vm1: disk (alice, read-only)": key and label. */
export function itemLabel(kind: "mount" | "export", spec: ConfiguredMount | ConfiguredExport) {
  const where = kind === "mount"
    ? (spec as ConfiguredMount).device
    : (spec as ConfiguredExport).name;
  const mode = spec.readOnly ? ", read-only" : "";
  return `${kind} ${where}: ${spec.image} (${spec.username}${mode})`;
}

/** Devices held by a desired mount: another mount item cannot claim them. */
export type ClaimedDevices = Set<string>;

/**
 * A desired mount. Coming up it first claims a matching mount the table
 * already holds (one taken over from the previous daemon: same image, user
 * and device unless "auto"), else mounts; it is lost when its device is
 * detached without an unmount request.
 */
export function mountItem(
  table: ApiMountTable,
  claimed: ClaimedDevices,
  spec: ConfiguredMount,
  origin: "config" | "api",
  keySuffix = "",
  stillAttached: StillAttached = () => Promise.resolve(false),
): MountItem {
  let device: string | null = null;
  let leftOver: MountRecord | null = null;
  const label = itemLabel("mount", spec);
  const watch = (on: string): UpItem => {
    device = on;
    claimed.add(on);
    const lost = table.lostOf(on).then((why) => {
      claimed.delete(on);
      device = null;
      return why;
    });
    return { lost, fields: { device: on } };
  };
  return {
    kind: "mount",
    key: `${origin} ${label}${keySuffix}`,
    origin,
    spec,
    upOn: watch,
    takeOver(record) {
      leftOver = record;
    },
    get device() {
      return device;
    },
    fields: { device: spec.device, image: spec.image, user: spec.username },
    async up() {
      const held = table.list().find((m) =>
        m.state === "mounted" && !claimed.has(m.device) && m.image === spec.image &&
        m.username === spec.username && (spec.device === "auto" || spec.device === m.device)
      );
      if (held) return watch(held.device);
      if (leftOver) {
        // Until the kernel drops it (nbd.deadConnTimeoutS), the device waits for us.
        if (await stillAttached(leftOver)) {
          const adoption = await table.prepareAdopt(leftOver, spec.password);
          return watch((await adoption.takeOver()).device);
        }
        leftOver = null;
      }
      const info = await table.mount(spec, { quiet: true });
      return watch(info.device);
    },
    async down() {
      if (device === null) return;
      const on = device;
      await table.detachDesired(on);
      claimed.delete(on);
      device = null;
    },
  };
}

/** A desired export: served until removed (a client's failing session is that client's). */
export function exportItem(
  exports: ApiExportTable,
  spec: ConfiguredExport,
  origin: "config" | "api",
  keySuffix = "",
): ExportItem {
  return {
    kind: "export",
    key: `${origin} ${itemLabel("export", spec)}${keySuffix}`,
    origin,
    spec,
    fields: { export: spec.name, image: spec.image, user: spec.username },
    async up() {
      await exports.add(spec, { quiet: true });
      return { lost: NEVER };
    },
    async down() {
      await exports.removeDesired(spec.name);
    },
  };
}

/** An export is lost only by being removed. */
export const NEVER: Promise<string> = new Promise<string>(() => {});

/** The config's mounts and exports as items; a repeated mount gets a "#2" in its key. */
export function configItems(
  config: DaemonConfig,
  table: ApiMountTable,
  exports: ApiExportTable,
  claimed: ClaimedDevices,
  stillAttached?: StillAttached,
): Item[] {
  const seen = new Map<string, number>();
  const suffix = (label: string): string => {
    const count = (seen.get(label) ?? 0) + 1;
    seen.set(label, count);
    return count === 1 ? "" : ` #${count}`;
  };
  return [
    ...config.mounts.map((m) =>
      mountItem(table, claimed, m, "config", suffix(itemLabel("mount", m)), stillAttached)
    ),
    ...config.exports.items.map((e) =>
      exportItem(exports, e, "config", suffix(itemLabel("export", e)))
    ),
  ];
}

export interface ReloadDiff<T extends { key: string }> {
  added: T[];
  removed: string[];
  unchanged: string[];
}

/** What a reload changes: new items by key, keys gone, keys kept (not touched). */
export function diffDesired<T extends { key: string }>(
  current: readonly string[],
  next: readonly T[],
): ReloadDiff<T> {
  const nextKeys = new Set(next.map((item) => item.key));
  const currentKeys = new Set(current);
  return {
    added: next.filter((item) => !currentKeys.has(item.key)),
    removed: current.filter((key) => !nextKeys.has(key)),
    unchanged: current.filter((key) => nextKeys.has(key)),
  };
}
