/**
 * The whole /metrics page: per-device and per-export I/O bytes and operations,
 * latency histograms, in-flight requests, export clients, the IVBS sessions'
 * failovers and reconnects, each item's reconcile state, the proxies, the nbd
 * module's health, build info and process metrics. Rendered from live counters
 * at scrape time through the one writer (exposition.ts).
 * @module
 */
import { FAILOVER_CAUSES } from "../ivbs/session.ts";
import type { DeviceIoStats } from "./driver.ts";
import type { ExportSnapshot } from "./export_table.ts";
import { Exposition, formatValue, type Labels } from "./exposition.ts";
import type { MountSnapshot } from "./mount_table.ts";
import { type ProcessReadings, renderProcessMetrics } from "./process_metrics.ts";
import type { ProxyInfo } from "./proxy_registry.ts";
import { renderProxyMetrics } from "./proxy_metrics.ts";
import type { NbdHealth } from "../nbd/host_health.ts";
import type { ReconcileFields } from "./view_contract.ts";

export { METRICS_CONTENT_TYPE } from "./exposition.ts";

/** A latency histogram from per-bucket (not cumulative) counts, as Prometheus wants it. */
function histogram(out: Exposition, name: string, labels: Labels, io: DeviceIoStats): void {
  const bounds = io.latencyBucketsMs;
  let cumulative = 0;
  bounds.forEach((boundMs, b) => {
    cumulative += io.latencyCounts[b] ?? 0;
    out.sample(`${name}_bucket`, { ...labels, le: formatValue(boundMs / 1000) }, cumulative);
  });
  // Entries past the bounds (the overflow bucket) only show in +Inf.
  for (let b = bounds.length; b < io.latencyCounts.length; b++) cumulative += io.latencyCounts[b];
  out.sample(`${name}_bucket`, { ...labels, le: "+Inf" }, cumulative);
  out.sample(`${name}_sum`, labels, io.latencySumMs / 1000);
  out.sample(`${name}_count`, labels, cumulative);
}

/** One sample per state, zeros included, so every state has a series from the start. */
function stateSamples(
  out: Exposition,
  name: string,
  states: readonly string[],
  items: readonly { info: { state: string } }[],
): void {
  const counts = new Map<string, number>();
  for (const { info } of items) counts.set(info.state, (counts.get(info.state) ?? 0) + 1);
  for (const state of states) out.sample(name, { state }, counts.get(state) ?? 0);
}

/** Bytes read and written, as the two directions of one family. */
function byteSamples(
  out: Exposition,
  name: string,
  labels: Labels,
  info: { bytesRead: number; bytesWritten: number },
): void {
  out.sample(name, { ...labels, direction: "read" }, info.bytesRead);
  out.sample(name, { ...labels, direction: "write" }, info.bytesWritten);
}

/** Requests by NBD op; zeros while there are no stats yet (before attach or the first client). */
function operationSamples(
  out: Exposition,
  name: string,
  labels: Labels,
  io: DeviceIoStats | null | undefined,
): void {
  out.sample(name, { ...labels, op: "read" }, io?.reads ?? 0);
  out.sample(name, { ...labels, op: "write" }, io?.writes ?? 0);
  out.sample(name, { ...labels, op: "flush" }, io?.flushes ?? 0);
  out.sample(name, { ...labels, op: "trim" }, io?.trims ?? 0);
}

export interface DaemonGauges {
  uptimeSeconds: number;
  managedDevices: number;
}

export interface MetricsInput {
  mounts: readonly MountSnapshot[];
  exports?: readonly ExportSnapshot[];
  proxies?: readonly ProxyInfo[];
  gauges: DaemonGauges;
  /** The nbd module's health (absent: its families are left out). */
  nbd?: NbdHealth;
  /** Injected by tests; default: this process, read now. */
  process?: ProcessReadings;
}

/** The whole /metrics page. */
export function renderMetrics(input: MetricsInput): string {
  const { mounts, gauges } = input;
  const exports = input.exports ?? [];
  const out = new Exposition();
  renderProcessMetrics(out, input.process);
  out.family("ivbsnetd_uptime_seconds", "gauge", "Seconds since the daemon started.");
  out.sample("ivbsnetd_uptime_seconds", {}, Math.round(gauges.uptimeSeconds));
  out.family("ivbsnetd_nbd_devices_managed", "gauge", "NBD devices the daemon may use.");
  out.sample("ivbsnetd_nbd_devices_managed", {}, gauges.managedDevices);
  out.family("ivbsnetd_mounts", "gauge", "Images mounted (or being mounted) by state.");
  const mountStates = ["mounting", "mounted", "reconnecting", "unmounting"];
  stateSamples(out, "ivbsnetd_mounts", mountStates, mounts);

  const ids = mounts.map(({ info }) => ({ device: info.device, image: info.image }));

  out.family("ivbsnetd_device_size_bytes", "gauge", "Size of the mounted image.");
  mounts.forEach((m, i) => out.sample("ivbsnetd_device_size_bytes", ids[i], m.info.sizeBytes));

  out.family("ivbsnetd_io_bytes_total", "counter", "Bytes transferred for the kernel.");
  mounts.forEach((m, i) => byteSamples(out, "ivbsnetd_io_bytes_total", ids[i], m.info));

  out.family("ivbsnetd_io_operations_total", "counter", "Kernel requests served, by op.");
  mounts.forEach((m, i) =>
    operationSamples(out, "ivbsnetd_io_operations_total", ids[i], m.attachment?.stats)
  );

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

  renderLiveness(out, mounts, ids);

  out.family(
    "ivbsnetd_ivbs_connected",
    "gauge",
    "1 while a proxy is in use, 0 while reconnecting.",
  );
  mounts.forEach((m, i) =>
    out.sample("ivbsnetd_ivbs_connected", ids[i], m.info.proxy === null ? 0 : 1)
  );
  renderExports(out, exports);
  renderReconcileStates(
    out,
    "mount",
    mounts.map(({ info }) => ({ labels: { device: info.device, image: info.image }, view: info })),
  );
  renderReconcileStates(
    out,
    "export",
    exports.map(({ info }) => ({ labels: { export: info.name, image: info.image }, view: info })),
  );
  renderProxyMetrics(out, input.proxies ?? []);
  if (input.nbd) renderNbdHealth(out, input.nbd);
  return out.text();
}

/**
 * Desired against actual state of each mount or export: the state as a label
 * (`ivbsnetd_mount_state{device,image,state} 1`), and while failing its reason,
 * attempts and the next retry's time.
 */
function renderReconcileStates(
  out: Exposition,
  kind: "mount" | "export",
  items: readonly { labels: Labels; view: ReconcileFields }[],
): void {
  const ids = items.map((item) => item.labels);
  out.family(`ivbsnetd_${kind}_state`, "gauge", `Each ${kind}'s state (the label), always 1.`);
  items.forEach((item, i) =>
    out.sample(`ivbsnetd_${kind}_state`, { ...ids[i], state: item.view.state }, 1)
  );
  out.family(`ivbsnetd_${kind}_failing_info`, "gauge", `Why a ${kind} is failing (the label).`);
  items.forEach((item, i) => {
    if (item.view.reason !== undefined) {
      out.sample(`ivbsnetd_${kind}_failing_info`, { ...ids[i], reason: item.view.reason }, 1);
    }
  });
  const retry = `ivbsnetd_${kind}_next_retry_timestamp_seconds`;
  out.family(retry, "gauge", `When a failing ${kind} is tried again (Unix time).`);
  items.forEach((item, i) => {
    const at = item.view.nextRetryAt === undefined ? NaN : Date.parse(item.view.nextRetryAt);
    if (Number.isFinite(at)) out.sample(retry, ids[i], at / 1000);
  });
  out.family(`ivbsnetd_${kind}_attempts`, "gauge", `Attempts since the ${kind} was last ready.`);
  items.forEach((item, i) => {
    if (item.view.attempts !== undefined) {
      out.sample(`ivbsnetd_${kind}_attempts`, ids[i], item.view.attempts);
    }
  });
}

/** The nbd module and its free devices: what makes a mount possible at all. */
function renderNbdHealth(out: Exposition, nbd: NbdHealth): void {
  out.family("ivbsnetd_nbd_module_loaded", "gauge", "1 when the nbd kernel module is loaded.");
  out.sample("ivbsnetd_nbd_module_loaded", {}, nbd.module ? 1 : 0);
  out.family("ivbsnetd_nbd_free_devices", "gauge", "NBD devices free for a mount.");
  if (nbd.freeDevices !== null) out.sample("ivbsnetd_nbd_free_devices", {}, nbd.freeDevices);
}

/** Hung-proxy detection: liveness probes and failovers by cause. */
function renderLiveness(out: Exposition, mounts: readonly MountSnapshot[], ids: Labels[]): void {
  out.family(
    "ivbsnetd_ivbs_probes_sent_total",
    "counter",
    "IVBS keepalives sent to probe a proxy that looked hung.",
  );
  mounts.forEach((m, i) =>
    out.sample("ivbsnetd_ivbs_probes_sent_total", ids[i], m.backend?.stats?.probesSent ?? 0)
  );
  out.family(
    "ivbsnetd_ivbs_probes_answered_total",
    "counter",
    "IVBS liveness probes the proxy answered (slow, not dead).",
  );
  mounts.forEach((m, i) =>
    out.sample("ivbsnetd_ivbs_probes_answered_total", ids[i], m.backend?.stats?.probesAnswered ?? 0)
  );
  out.family(
    "ivbsnetd_ivbs_failovers_by_cause_total",
    "counter",
    "Switches to another IVBS proxy, by why the last one was left.",
  );
  mounts.forEach((m, i) => {
    const causes = m.backend?.stats?.failoverCauses ?? {};
    // Every cause from the start, so a rate() over it never starts from nothing.
    const names = new Set<string>([...FAILOVER_CAUSES, ...Object.keys(causes)]);
    for (const cause of names) {
      out.sample(
        "ivbsnetd_ivbs_failovers_by_cause_total",
        { ...ids[i], cause },
        causes[cause] ?? 0,
      );
    }
  });
}

/** Export families: labelled by export name and image; clients share their export's counters. */
function renderExports(out: Exposition, exports: readonly ExportSnapshot[]): void {
  const ids = exports.map(({ info }) => ({ export: info.name, image: info.image }));
  out.family("ivbsnetd_exports", "gauge", "NBD exports served (or being added) by state.");
  stateSamples(out, "ivbsnetd_exports", ["adding", "ready", "removing"], exports);

  out.family("ivbsnetd_export_clients", "gauge", "NBD clients connected to the export.");
  exports.forEach((e, i) => out.sample("ivbsnetd_export_clients", ids[i], e.info.clients));

  out.family("ivbsnetd_export_size_bytes", "gauge", "Size of the exported image.");
  exports.forEach((e, i) => out.sample("ivbsnetd_export_size_bytes", ids[i], e.info.sizeBytes));

  out.family("ivbsnetd_export_io_bytes_total", "counter", "Bytes transferred for NBD clients.");
  exports.forEach((e, i) => byteSamples(out, "ivbsnetd_export_io_bytes_total", ids[i], e.info));

  out.family("ivbsnetd_export_io_operations_total", "counter", "NBD client requests, by op.");
  exports.forEach((e, i) =>
    operationSamples(out, "ivbsnetd_export_io_operations_total", ids[i], e.stats)
  );

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
