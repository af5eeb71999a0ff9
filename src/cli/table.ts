/**
 * Aligned plain-text tables and the rows netdclient and `ivbsnetd list` print.
 * @module
 */
import type { DeviceInfo, ExportInfo, MountInfo } from "./api_client.ts";
import { formatBytes } from "../daemon/units.ts";

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
