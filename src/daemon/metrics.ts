/**
 * Prometheus text exposition (format 0.0.4) of the mount and export tables:
 * per-device and per-export I/O bytes and operations, latency histograms,
 * in-flight requests, export clients and the IVBS sessions' failovers and
 * reconnects. Rendered from live counters at scrape time.
 * @module
 */
import type { DeviceIoStats } from "./driver.ts";
import type { ExportSnapshot } from "./export_table.ts";
import type { MountSnapshot } from "./mount_table.ts";

export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Escapes a label value: backslash, double quote and newline. */
export function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

type Labels = Record<string, string>;

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

function num(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

class Exposition {
  readonly #lines: string[] = [];

  family(name: string, type: "counter" | "gauge" | "histogram", help: string): void {
    this.#lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  }

  sample(name: string, labels: Labels, value: number): void {
    this.#lines.push(`${name}${labelText(labels)} ${num(value)}`);
  }

  text(): string {
    return this.#lines.join("\n") + "\n";
  }
}

/** A latency histogram from per-bucket (not cumulative) counts, as Prometheus wants it. */
function histogram(out: Exposition, name: string, labels: Labels, io: DeviceIoStats): void {
  const bounds = io.latencyBucketsMs;
  let cumulative = 0;
  bounds.forEach((boundMs, b) => {
    cumulative += io.latencyCounts[b] ?? 0;
    out.sample(`${name}_bucket`, { ...labels, le: num(boundMs / 1000) }, cumulative);
  });
  // Entries past the bounds (the overflow bucket) only show in +Inf.
  for (let b = bounds.length; b < io.latencyCounts.length; b++) cumulative += io.latencyCounts[b];
  out.sample(`${name}_bucket`, { ...labels, le: "+Inf" }, cumulative);
  out.sample(`${name}_sum`, labels, io.latencySumMs / 1000);
  out.sample(`${name}_count`, labels, cumulative);
}

export interface DaemonGauges {
  uptimeSeconds: number;
  managedDevices: number;
}

/** The whole /metrics page. */
export function renderMetrics(
  mounts: readonly MountSnapshot[],
  gauges: DaemonGauges,
  exports: readonly ExportSnapshot[] = [],
): string {
  const out = new Exposition();
  out.family("ivbsnetd_uptime_seconds", "gauge", "Seconds since the daemon started.");
  out.sample("ivbsnetd_uptime_seconds", {}, Math.round(gauges.uptimeSeconds));
  out.family("ivbsnetd_nbd_devices_managed", "gauge", "NBD devices the daemon may use.");
  out.sample("ivbsnetd_nbd_devices_managed", {}, gauges.managedDevices);
  out.family("ivbsnetd_mounts", "gauge", "Images mounted (or being mounted) by state.");
  const states = new Map<string, number>();
  for (const { info } of mounts) states.set(info.state, (states.get(info.state) ?? 0) + 1);
  for (const state of ["mounting", "mounted", "reconnecting", "unmounting"]) {
    out.sample("ivbsnetd_mounts", { state }, states.get(state) ?? 0);
  }

  const ids = mounts.map(({ info }) => ({ device: info.device, image: info.image }));

  out.family("ivbsnetd_device_size_bytes", "gauge", "Size of the mounted image.");
  mounts.forEach((m, i) => out.sample("ivbsnetd_device_size_bytes", ids[i], m.info.sizeBytes));

  out.family("ivbsnetd_io_bytes_total", "counter", "Bytes transferred for the kernel.");
  mounts.forEach((m, i) => {
    out.sample("ivbsnetd_io_bytes_total", { ...ids[i], direction: "read" }, m.info.bytesRead);
    out.sample("ivbsnetd_io_bytes_total", { ...ids[i], direction: "write" }, m.info.bytesWritten);
  });

  out.family("ivbsnetd_io_operations_total", "counter", "Kernel requests served, by op.");
  mounts.forEach((m, i) => {
    const io = m.attachment?.stats;
    const ops: [string, number][] = [
      ["read", io?.reads ?? 0],
      ["write", io?.writes ?? 0],
      ["flush", io?.flushes ?? 0],
      ["trim", io?.trims ?? 0],
    ];
    for (const [op, count] of ops) {
      out.sample("ivbsnetd_io_operations_total", { ...ids[i], op }, count);
    }
  });

  out.family("ivbsnetd_io_errors_total", "counter", "Kernel requests answered with an error.");
  mounts.forEach((m, i) => out.sample("ivbsnetd_io_errors_total", ids[i], m.info.errors));

  out.family("ivbsnetd_io_in_flight", "gauge", "Kernel requests being served.");
  mounts.forEach((m, i) => out.sample("ivbsnetd_io_in_flight", ids[i], m.info.inFlight));

  out.family(
    "ivbsnetd_io_latency_seconds",
    "histogram",
    "Time from a kernel request to its reply.",
  );
  mounts.forEach((m, i) => {
    const io = m.attachment?.stats;
    if (io) histogram(out, "ivbsnetd_io_latency_seconds", ids[i], io);
  });

  out.family("ivbsnetd_ivbs_in_flight", "gauge", "IVBS requests awaiting a proxy's reply.");
  mounts.forEach((m, i) =>
    out.sample("ivbsnetd_ivbs_in_flight", ids[i], m.backend?.stats?.inFlight ?? 0)
  );

  out.family("ivbsnetd_ivbs_failovers_total", "counter", "Switches to another IVBS proxy.");
  mounts.forEach((m, i) => out.sample("ivbsnetd_ivbs_failovers_total", ids[i], m.info.failovers));

  out.family("ivbsnetd_ivbs_reconnects_total", "counter", "IVBS reconnections (any proxy).");
  mounts.forEach((m, i) => out.sample("ivbsnetd_ivbs_reconnects_total", ids[i], m.info.reconnects));

  out.family("ivbsnetd_ivbs_retries_total", "counter", "IVBS requests retried after a status.");
  mounts.forEach((m, i) => out.sample("ivbsnetd_ivbs_retries_total", ids[i], m.info.retries));

  out.family("ivbsnetd_ivbs_keepalives_sent_total", "counter", "IVBS keepalives sent.");
  mounts.forEach((m, i) =>
    out.sample("ivbsnetd_ivbs_keepalives_sent_total", ids[i], m.backend?.stats?.keepalivesSent ?? 0)
  );

  out.family(
    "ivbsnetd_ivbs_connected",
    "gauge",
    "1 while a proxy is in use, 0 while reconnecting.",
  );
  mounts.forEach((m, i) =>
    out.sample("ivbsnetd_ivbs_connected", ids[i], m.info.proxy === null ? 0 : 1)
  );
  renderExports(out, exports);
  return out.text();
}

/** Export families: labelled by export name and image; clients share their export's counters. */
function renderExports(out: Exposition, exports: readonly ExportSnapshot[]): void {
  const ids = exports.map(({ info }) => ({ export: info.name, image: info.image }));
  out.family("ivbsnetd_exports", "gauge", "NBD exports served (or being added) by state.");
  const states = new Map<string, number>();
  for (const { info } of exports) states.set(info.state, (states.get(info.state) ?? 0) + 1);
  for (const state of ["adding", "ready", "removing"]) {
    out.sample("ivbsnetd_exports", { state }, states.get(state) ?? 0);
  }

  out.family("ivbsnetd_export_clients", "gauge", "NBD clients connected to the export.");
  exports.forEach((e, i) => out.sample("ivbsnetd_export_clients", ids[i], e.info.clients));

  out.family("ivbsnetd_export_size_bytes", "gauge", "Size of the exported image.");
  exports.forEach((e, i) => out.sample("ivbsnetd_export_size_bytes", ids[i], e.info.sizeBytes));

  out.family("ivbsnetd_export_io_bytes_total", "counter", "Bytes transferred for NBD clients.");
  exports.forEach((e, i) => {
    const read = { ...ids[i], direction: "read" };
    out.sample("ivbsnetd_export_io_bytes_total", read, e.info.bytesRead);
    const write = { ...ids[i], direction: "write" };
    out.sample("ivbsnetd_export_io_bytes_total", write, e.info.bytesWritten);
  });

  out.family("ivbsnetd_export_io_operations_total", "counter", "NBD client requests, by op.");
  exports.forEach((e, i) => {
    const ops: [string, number][] = [
      ["read", e.stats?.reads ?? 0],
      ["write", e.stats?.writes ?? 0],
      ["flush", e.stats?.flushes ?? 0],
      ["trim", e.stats?.trims ?? 0],
    ];
    for (const [op, count] of ops) {
      out.sample("ivbsnetd_export_io_operations_total", { ...ids[i], op }, count);
    }
  });

  out.family(
    "ivbsnetd_export_io_errors_total",
    "counter",
    "NBD client requests answered with an error.",
  );
  exports.forEach((e, i) => out.sample("ivbsnetd_export_io_errors_total", ids[i], e.info.errors));

  out.family("ivbsnetd_export_io_in_flight", "gauge", "NBD client requests being served.");
  exports.forEach((e, i) => out.sample("ivbsnetd_export_io_in_flight", ids[i], e.info.inFlight));

  out.family(
    "ivbsnetd_export_io_latency_seconds",
    "histogram",
    "Time from an NBD client's request to its reply.",
  );
  exports.forEach((e, i) => {
    if (e.stats) histogram(out, "ivbsnetd_export_io_latency_seconds", ids[i], e.stats);
  });

  out.family(
    "ivbsnetd_export_ivbs_failovers_total",
    "counter",
    "Proxy switches of the export's client sessions.",
  );
  exports.forEach((e, i) =>
    out.sample("ivbsnetd_export_ivbs_failovers_total", ids[i], e.info.failovers)
  );

  out.family(
    "ivbsnetd_export_ivbs_reconnects_total",
    "counter",
    "IVBS reconnections of the export's client sessions.",
  );
  exports.forEach((e, i) =>
    out.sample("ivbsnetd_export_ivbs_reconnects_total", ids[i], e.info.reconnects)
  );
}
