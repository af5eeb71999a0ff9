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

export function mountsTable(mounts: MountInfo[]): string {
  if (mounts.length === 0) return "No image mounted.";
  return formatTable(
    [
      "DEVICE",
      "IMAGE",
      "SIZE",
      "MODE",
      "STATE",
      "PROXY",
      "READ",
      "WRITTEN",
      "IN-FLIGHT",
      "FAILOVERS",
    ],
    mounts.map((m) => [
      m.device,
      m.image,
      formatBytes(m.sizeBytes),
      m.readOnly ? "ro" : "rw",
      m.state,
      m.proxy ?? "-",
      formatBytes(m.bytesRead),
      formatBytes(m.bytesWritten),
      String(m.inFlight),
      String(m.failovers),
    ]),
    ["left", "left", "right", "left", "left", "left", "right", "right", "right", "right"],
  );
}

export function exportsTable(exports: ExportInfo[]): string {
  if (exports.length === 0) return "No NBD export.";
  return formatTable(
    ["NAME", "IMAGE", "SIZE", "MODE", "STATE", "CLIENTS", "READ", "WRITTEN", "URI"],
    exports.map((e) => [
      e.name,
      e.image,
      formatBytes(e.sizeBytes),
      e.readOnly ? "ro" : "rw",
      e.state,
      String(e.clients),
      formatBytes(e.bytesRead),
      formatBytes(e.bytesWritten),
      e.uri,
    ]),
    ["left", "left", "right", "left", "left", "right", "right", "right", "left"],
  );
}

export function devicesTable(devices: DeviceInfo[]): string {
  if (devices.length === 0) return "No NBD devices (the nbd kernel module is not loaded).";
  return formatTable(
    ["DEVICE", "STATE", "IMAGE", "SIZE"],
    devices.map((d) => [
      d.device,
      d.state,
      d.image ?? "-",
      d.sizeBytes > 0 ? formatBytes(d.sizeBytes) : "-",
    ]),
    ["left", "left", "left", "right"],
  );
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
