/**
 * Aligned plain-text tables and the rows netdclient and `ivbsnetd list` print.
 * @module
 */
import type { DaemonEvent, DeviceInfo, ExportInfo, MountInfo, ProxyInfo } from "./api_client.ts";
import { formatBytes } from "../units.ts";

export type Align = "left" | "right";

/** Columns padded to their widest cell, two spaces apart, no trailing blanks. */
export function formatTable(headers: string[], rows: string[][], align: Align[] = []): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells.map((cell, i) => align[i] === "right" ? cell.padStart(widths[i]) : cell.padEnd(widths[i]))
      .join("  ").trimEnd();
  return [line(headers), ...rows.map(line)].join("\n");
}

/** A column: its header, a row's cell and the alignment. */
interface Column<T> {
  readonly header: string;
  readonly cell: (row: T) => string;
  readonly align: Align;
}

function column<T>(header: string, cell: (row: T) => string, align: Align = "left"): Column<T> {
  return { header, cell, align };
}

/** `rows` under `columns`, aligned (formatTable). */
function columnTable<T>(columns: readonly Column<T>[], rows: readonly T[]): string {
  return formatTable(
    columns.map((c) => c.header),
    rows.map((row) => columns.map((c) => c.cell(row))),
    columns.map((c) => c.align),
  );
}

/** What a mount and an export both show: the image, and what moved through it. */
interface ImageRow {
  image: string;
  sizeBytes: number;
  readOnly: boolean;
  state: string;
  bytesRead: number;
  bytesWritten: number;
}

const IMAGE_COLUMNS: readonly Column<ImageRow>[] = [
  column("IMAGE", (r) => r.image),
  column("SIZE", (r) => formatBytes(r.sizeBytes), "right"),
  column("MODE", (r) => r.readOnly ? "ro" : "rw"),
  column("STATE", (r) => r.state),
];

const BYTES_COLUMNS: readonly Column<ImageRow>[] = [
  column("READ", (r) => formatBytes(r.bytesRead), "right"),
  column("WRITTEN", (r) => formatBytes(r.bytesWritten), "right"),
];

export function mountsTable(mounts: MountInfo[]): string {
  if (mounts.length === 0) return "No image mounted.";
  return columnTable<MountInfo>([
    column("DEVICE", (m) => m.device),
    ...IMAGE_COLUMNS,
    column("PROXY", (m) => m.proxy ?? "-"),
    ...BYTES_COLUMNS,
    column("IN-FLIGHT", (m) => String(m.inFlight), "right"),
    column("FAILOVERS", (m) => String(m.failovers), "right"),
  ], mounts);
}

export function exportsTable(exports: ExportInfo[]): string {
  if (exports.length === 0) return "No NBD export.";
  return columnTable<ExportInfo>([
    column("NAME", (e) => e.name),
    ...IMAGE_COLUMNS,
    column("CLIENTS", (e) => String(e.clients), "right"),
    ...BYTES_COLUMNS,
    column("URI", (e) => e.uri),
  ], exports);
}

export function devicesTable(devices: DeviceInfo[]): string {
  if (devices.length === 0) return "No NBD devices (the nbd kernel module is not loaded).";
  return columnTable<DeviceInfo>([
    column("DEVICE", (d) => d.device),
    column("STATE", (d) => d.state),
    column("IMAGE", (d) => d.image ?? "-"),
    column("SIZE", (d) => d.sizeBytes > 0 ? formatBytes(d.sizeBytes) : "-", "right"),
  ], devices);
}

/** "11:42:03" (UTC) from an ISO time. */
function timeOfDay(iso: string | null): string {
  return iso === null ? "-" : iso.slice(11, 19);
}

export function proxiesTable(proxies: ProxyInfo[]): string {
  if (proxies.length === 0) return "No IVBS proxy known.";
  return formatTable(
    ["PROXY", "NAME", "ORIGIN", "STATE", "USED BY", "FAILURES", "FAILOVERS OUT/IN", "LAST ERROR"],
    proxies.map((p) => [
      p.address,
      p.name ?? "-",
      p.origins.join(","),
      p.state === "backoff" ? `backoff until ${timeOfDay(p.backoffUntil)}` : p.state,
      p.usedBy.join(", ") || "-",
      String(p.failures),
      `${p.failoversFrom}/${p.failoversTo}`,
      p.lastError === null ? "-" : `${timeOfDay(p.lastErrorAt)} ${p.lastError}`,
    ]),
    ["left", "left", "left", "left", "left", "right", "right", "left"],
  );
}

/** One event as a log-like line: time, level, where, message, fields. */
export function eventLine(e: DaemonEvent): string {
  const where = e.device ?? (e.export !== undefined ? `export ${e.export}` : e.component);
  const fields = Object.entries(e.fields)
    .map(([k, v]) =>
      ` ${k}=${typeof v === "string" && /^[\w./:@-]*$/.test(v) ? v : JSON.stringify(v)}`
    )
    .join("");
  return `${e.time} ${e.level.toUpperCase().padEnd(5)} [${where}] ${e.message}${fields}`;
}
