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
import { Exposition, formatValue, type Labels, type MetricType } from "./exposition.ts";
import type { MountSnapshot } from "./mount_table.ts";
import { type ProcessReadings, renderProcessMetrics } from "./process_metrics.ts";
import type { ProxyInfo } from "./proxy_registry.ts";
import { renderProxyMetrics } from "./proxy_metrics.ts";
import type { NbdHealth } from "../nbd/host_health.ts";
import type { ReconcileFields } from "./view_contract.ts";

export { METRICS_CONTENT_TYPE } from "./exposition.ts";

/** Writes one item's samples of a family under the item's labels. */
type Samples<T> = (out: Exposition, name: string, labels: Labels, item: T) => void;

/**
 * A family written for each of a list of items (mounts, exports): its name,
 * type, HELP text and how an item's samples are written.
 */
type ItemFamily<T> = readonly [name: string, type: MetricType, help: string, samples: Samples<T>];

/** Every family of `table` in order, each with every item's samples under that item's labels. */
function itemFamilies<T>(
  out: Exposition,
  table: readonly ItemFamily<T>[],
  items: readonly T[],
  labels: readonly Labels[],
): void {
  for (const [name, type, help, samples] of table) {
    out.family(name, type, help);
    items.forEach((item, i) => samples(out, name, labels[i], item));
  }
}

/** One sample an item: its value (none while it has none). */
function one<T>(value: (item: T) => number | undefined): Samples<T> {
  return (out, name, labels, item) => {
    const v = value(item);
    if (v !== undefined) out.sample(name, labels, v);
  };
}

/** An info sample: 1, with the item's value as the label `key` (none while it has none). */
function labelled<T>(key: string, value: (item: T) => string | undefined): Samples<T> {
  return (out, name, labels, item) => {
    const v = value(item);
    if (v !== undefined) out.sample(name, { ...labels, [key]: v }, 1);
  };
}

/**
 * A latency histogram from per-bucket (not cumulative) counts, as Prometheus
 * wants it; none while there are no stats yet.
 */
function latency<T>(statsOf: (item: T) => DeviceIoStats | null | undefined): Samples<T> {
  return (out, name, labels, item) => {
    const io = statsOf(item);
    if (!io) return;
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
  };
}

/** Bytes read and written, as the two directions of one family. */
function bytes<T>(infoOf: (item: T) => { bytesRead: number; bytesWritten: number }): Samples<T> {
  return (out, name, labels, item) => {
    const info = infoOf(item);
    out.sample(name, { ...labels, direction: "read" }, info.bytesRead);
    out.sample(name, { ...labels, direction: "write" }, info.bytesWritten);
  };
}

/** Requests by NBD op; zeros while there are no stats yet (before attach or the first client). */
function operations<T>(statsOf: (item: T) => DeviceIoStats | null | undefined): Samples<T> {
  return (out, name, labels, item) => {
    const io = statsOf(item);
    out.sample(name, { ...labels, op: "read" }, io?.reads ?? 0);
    out.sample(name, { ...labels, op: "write" }, io?.writes ?? 0);
    out.sample(name, { ...labels, op: "flush" }, io?.flushes ?? 0);
    out.sample(name, { ...labels, op: "trim" }, io?.trims ?? 0);
  };
}

/** Failovers by cause, every cause from the start so a rate() over it never starts from nothing. */
const failoverCauses: Samples<MountSnapshot> = (out, name, labels, m) => {
  const causes = m.backend?.stats?.failoverCauses ?? {};
  for (const cause of new Set<string>([...FAILOVER_CAUSES, ...Object.keys(causes)])) {
    out.sample(name, { ...labels, cause }, causes[cause] ?? 0);
  }
};

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

/** Per mount, labelled by device and image. */
const MOUNT_FAMILIES: readonly ItemFamily<MountSnapshot>[] = [
  [
    "ivbsnetd_device_size_bytes",
    "gauge",
    "Size of the mounted image.",
    one((m) => m.info.sizeBytes),
  ],
  ["ivbsnetd_io_bytes_total", "counter", "Bytes transferred for the kernel.", bytes((m) => m.info)],
  [
    "ivbsnetd_io_operations_total",
    "counter",
    "Kernel requests served, by op.",
    operations((m) => m.attachment?.stats),
  ],
  [
    "ivbsnetd_io_errors_total",
    "counter",
    "Kernel requests answered with an error.",
    one((m) => m.info.errors),
  ],
  ["ivbsnetd_io_in_flight", "gauge", "Kernel requests being served.", one((m) => m.info.inFlight)],
  [
    "ivbsnetd_io_latency_seconds",
    "histogram",
    "Time from a kernel request to its reply.",
    latency((m) => m.attachment?.stats),
  ],
  [
    "ivbsnetd_ivbs_in_flight",
    "gauge",
    "IVBS requests awaiting a proxy's reply.",
    one((m) => m.backend?.stats?.inFlight ?? 0),
  ],
  [
    "ivbsnetd_ivbs_failovers_total",
    "counter",
    "Switches to another IVBS proxy.",
    one((m) => m.info.failovers),
  ],
  [
    "ivbsnetd_ivbs_reconnects_total",
    "counter",
    "IVBS reconnections (any proxy).",
    one((m) => m.info.reconnects),
  ],
  [
    "ivbsnetd_ivbs_retries_total",
    "counter",
    "IVBS requests retried after a status.",
    one((m) => m.info.retries),
  ],
  [
    "ivbsnetd_ivbs_keepalives_sent_total",
    "counter",
    "IVBS keepalives sent.",
    one((m) => m.backend?.stats?.keepalivesSent ?? 0),
  ],
  // Hung-proxy detection: liveness probes and failovers by cause.
  [
    "ivbsnetd_ivbs_probes_sent_total",
    "counter",
    "IVBS keepalives sent to probe a proxy that looked hung.",
    one((m) => m.backend?.stats?.probesSent ?? 0),
  ],
  [
    "ivbsnetd_ivbs_probes_answered_total",
    "counter",
    "IVBS liveness probes the proxy answered (slow, not dead).",
    one((m) => m.backend?.stats?.probesAnswered ?? 0),
  ],
  [
    "ivbsnetd_ivbs_failovers_by_cause_total",
    "counter",
    "Switches to another IVBS proxy, by why the last one was left.",
    failoverCauses,
  ],
  [
    "ivbsnetd_ivbs_connected",
    "gauge",
    "1 while a proxy is in use, 0 while reconnecting.",
    one((m) => m.info.proxy === null ? 0 : 1),
  ],
];

/** Per export, labelled by export name and image; clients share their export's counters. */
const EXPORT_FAMILIES: readonly ItemFamily<ExportSnapshot>[] = [
  [
    "ivbsnetd_export_clients",
    "gauge",
    "NBD clients connected to the export.",
    one((e) => e.info.clients),
  ],
  [
    "ivbsnetd_export_size_bytes",
    "gauge",
    "Size of the exported image.",
    one((e) => e.info.sizeBytes),
  ],
  [
    "ivbsnetd_export_io_bytes_total",
    "counter",
    "Bytes transferred for NBD clients.",
    bytes((e) => e.info),
  ],
  [
    "ivbsnetd_export_io_operations_total",
    "counter",
    "NBD client requests, by op.",
    operations((e) => e.stats),
  ],
  [
    "ivbsnetd_export_io_errors_total",
    "counter",
    "NBD client requests answered with an error.",
    one((e) => e.info.errors),
  ],
  [
    "ivbsnetd_export_io_in_flight",
    "gauge",
    "NBD client requests being served.",
    one((e) => e.info.inFlight),
  ],
  [
    "ivbsnetd_export_io_latency_seconds",
    "histogram",
    "Time from an NBD client's request to its reply.",
    latency((e) => e.stats),
  ],
  [
    "ivbsnetd_export_ivbs_failovers_total",
    "counter",
    "Proxy switches of the export's client sessions.",
    one((e) => e.info.failovers),
  ],
  [
    "ivbsnetd_export_ivbs_reconnects_total",
    "counter",
    "IVBS reconnections of the export's client sessions.",
    one((e) => e.info.reconnects),
  ],
];

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
  itemFamilies(out, MOUNT_FAMILIES, mounts, ids);
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
  const families: readonly ItemFamily<ReconcileFields>[] = [
    [
      `ivbsnetd_${kind}_state`,
      "gauge",
      `Each ${kind}'s state (the label), always 1.`,
      labelled("state", (view) => view.state),
    ],
    [
      `ivbsnetd_${kind}_failing_info`,
      "gauge",
      `Why a ${kind} is failing (the label).`,
      labelled("reason", (view) => view.reason),
    ],
    [
      `ivbsnetd_${kind}_next_retry_timestamp_seconds`,
      "gauge",
      `When a failing ${kind} is tried again (Unix time).`,
      one((view) => {
        const at = view.nextRetryAt === undefined ? NaN : Date.parse(view.nextRetryAt);
        return Number.isFinite(at) ? at / 1000 : undefined;
      }),
    ],
    [
      `ivbsnetd_${kind}_attempts`,
      "gauge",
      `Attempts since the ${kind} was last ready.`,
      one((view) => view.attempts),
    ],
  ];
  itemFamilies(out, families, items.map((item) => item.view), items.map((item) => item.labels));
}

/** The nbd module and its free devices: what makes a mount possible at all. */
function renderNbdHealth(out: Exposition, nbd: NbdHealth): void {
  out.family("ivbsnetd_nbd_module_loaded", "gauge", "1 when the nbd kernel module is loaded.");
  out.sample("ivbsnetd_nbd_module_loaded", {}, nbd.module ? 1 : 0);
  out.family("ivbsnetd_nbd_free_devices", "gauge", "NBD devices free for a mount.");
  if (nbd.freeDevices !== null) out.sample("ivbsnetd_nbd_free_devices", {}, nbd.freeDevices);
}

/** Export families: labelled by export name and image; clients share their export's counters. */
function renderExports(out: Exposition, exports: readonly ExportSnapshot[]): void {
  const ids = exports.map(({ info }) => ({ export: info.name, image: info.image }));
  out.family("ivbsnetd_exports", "gauge", "NBD exports served (or being added) by state.");
  stateSamples(out, "ivbsnetd_exports", ["adding", "ready", "removing"], exports);

  itemFamilies(out, EXPORT_FAMILIES, exports, ids);
}
