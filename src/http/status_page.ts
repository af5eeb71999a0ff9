/**
 * The status page at `GET /`: mounted devices (device, image, size, state,
 * proxy, throughput), NBD exports (name, image, URI, clients, throughput),
 * graphs of the last minutes of throughput and latency per mount and export
 * (inline SVG), the IVBS proxies and their health, the newest events, and the
 * free devices. Everything is rendered on the server, so the page works
 * without JavaScript (a meta refresh then) and offline; with JavaScript a small
 * inline script fetches the live part alone (`GET /status/live`, the same
 * renderer) and swaps it in. Every value is escaped once, here.
 * @module
 */
import type { DeviceInfo, MountInfo } from "../daemon/mount_table.ts";
import type { ExportInfo } from "../daemon/export_table.ts";
import type { DaemonEvent } from "../daemon/events.ts";
import { exportKey, type HistoryPoint, mountKey } from "../daemon/history.ts";
import type { ProxyInfo } from "../daemon/proxy_registry.ts";
import { formatBytes } from "../daemon/units.ts";
import { sparkline } from "./sparkline.ts";

export interface StatusPageData {
  mounts: readonly MountInfo[];
  devices: readonly DeviceInfo[];
  exports: readonly ExportInfo[];
  version: string;
  generatedAt: Date;
  /** Every IVBS proxy known (absent: the section is left out). */
  proxies?: readonly ProxyInfo[];
  /** The newest events, newest first. */
  events?: readonly DaemonEvent[];
  /** The graph points of a mount or export, by history key (absent: no graphs). */
  history?: (key: string) => readonly HistoryPoint[];
  /** The span the graphs cover. */
  historyWindowMs?: number;
}

/** Events the page shows. */
export const PAGE_EVENTS = 25;

/** How often the page refreshes itself. */
export const REFRESH_MS = 2000;

const HTML_ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#39;",
};

export function escapeHtml(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (ch) => HTML_ESCAPES[ch]);
}

const MOUNT_COLUMNS = [
  "Device",
  "Image",
  "Size",
  "State",
  "Proxy",
  "Read/s",
  "Write/s",
  "Read",
  "Written",
  "In flight",
  "Failovers",
] as const;

/** One mount row's cells (escaped by the caller). */
function mountCells(m: MountInfo, fmt: (n: number) => string): string[] {
  return [
    m.device,
    m.image + (m.readOnly ? " (ro)" : ""),
    fmt(m.sizeBytes),
    m.state,
    m.proxy ?? "—",
    fmt(m.throughput.readBytesPerSec) + "/s",
    fmt(m.throughput.writeBytesPerSec) + "/s",
    fmt(m.bytesRead),
    fmt(m.bytesWritten),
    String(m.inFlight),
    String(m.failovers),
  ];
}

const EXPORT_COLUMNS = [
  "Export",
  "Image",
  "Size",
  "State",
  "URI",
  "Clients",
  "Read/s",
  "Write/s",
  "Read",
  "Written",
] as const;

/** One export row's cells (escaped by the caller). */
function exportCells(e: ExportInfo, fmt: (n: number) => string): string[] {
  return [
    e.name,
    e.image + (e.readOnly ? " (ro)" : ""),
    fmt(e.sizeBytes),
    e.state,
    e.uri,
    String(e.clients),
    fmt(e.throughput.readBytesPerSec) + "/s",
    fmt(e.throughput.writeBytesPerSec) + "/s",
    fmt(e.bytesRead),
    fmt(e.bytesWritten),
  ];
}

function exportRows(exports: readonly ExportInfo[]): string {
  if (exports.length === 0) {
    return `<tr><td colspan="${EXPORT_COLUMNS.length}" class="empty">No NBD export.</td></tr>`;
  }
  return exports.map((e) => {
    const cells = exportCells(e, formatBytes).map((cell, i) =>
      i === 3
        ? `<td><span class="state ${escapeHtml(e.state)}">${escapeHtml(cell)}</span></td>`
        : i === 4
        ? `<td><code>${escapeHtml(cell)}</code></td>`
        : `<td>${escapeHtml(cell)}</td>`
    );
    return `<tr>${cells.join("")}</tr>`;
  }).join("\n");
}

function mountRows(mounts: readonly MountInfo[]): string {
  if (mounts.length === 0) {
    return `<tr><td colspan="${MOUNT_COLUMNS.length}" class="empty">No image mounted.</td></tr>`;
  }
  return mounts.map((m) => {
    const cells = mountCells(m, formatBytes).map((cell, i) =>
      i === 3
        ? `<td><span class="state ${escapeHtml(m.state)}">${escapeHtml(cell)}</span></td>`
        : `<td>${escapeHtml(cell)}</td>`
    );
    return `<tr>${cells.join("")}</tr>`;
  }).join("\n");
}

function freeList(devices: readonly DeviceInfo[]): string {
  const free = devices.filter((d) => d.state === "free");
  if (devices.length === 0) {
    return `<p class="empty">No NBD devices: the nbd kernel module is not loaded.</p>`;
  }
  if (free.length === 0) return `<p class="empty">Every device is in use.</p>`;
  return `<ul class="chips">${free.map((d) => `<li>${escapeHtml(d.device)}</li>`).join("")}</ul>`;
}

function foreignNote(devices: readonly DeviceInfo[]): string {
  const foreign = devices.filter((d) => d.state === "foreign").map((d) => d.device);
  if (foreign.length === 0) return "";
  return `<p class="note">In use by other programs: ${escapeHtml(foreign.join(", "))}</p>`;
}

const STYLE = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px 32px; color: #1d2330; background: #f6f7f9; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.sub { color: #5b6475; margin: 0 0 16px; }
table { border-collapse: collapse; width: 100%; background: #fff; box-shadow: 0 1px 2px #0002; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid #e4e7ec; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; }
td.empty, p.empty { color: #5b6475; font-style: italic; }
.state { padding: 1px 8px; border-radius: 10px; background: #e4e7ec; }
.state.mounted, .state.ready { background: #d3f2dc; color: #135c2b; }
.state.reconnecting, .state.mounting, .state.adding { background: #fdf0c4; color: #6b4e00; }
.state.unmounting, .state.removing { background: #f8d7d7; color: #7a1c1c; }
code { font-size: 12px; }
ul.chips { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 6px; }
ul.chips li { background: #fff; border: 1px solid #cfd5de; border-radius: 12px; padding: 2px 10px; }
.note { color: #5b6475; } #error { color: #9b1c1c; font-weight: 600; }
.state.connected { background: #d3f2dc; color: #135c2b; }
.state.backoff { background: #f8d7d7; color: #7a1c1c; }
.state.idle { background: #e4e7ec; color: #3b4353; }
.level { padding: 0 6px; border-radius: 8px; font-size: 12px; }
.level.warn { background: #fdf0c4; color: #6b4e00; } .level.error { background: #f8d7d7; color: #7a1c1c; }
.level.info { background: #e4e7ec; color: #3b4353; }
td.details { white-space: normal; color: #3b4353; font-size: 12px; max-width: 640px; }
.graphs { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 10px; }
.graph { background: #fff; box-shadow: 0 1px 2px #0002; padding: 8px 10px; }
.graph .gname { font-weight: 600; } .graph .gname span { font-weight: 400; color: #5b6475; }
.legend { font-size: 12px; color: #3b4353; margin-top: 4px; }
.legend i { display: inline-block; width: 14px; height: 0; margin: 0 4px 3px 8px; }
.legend i:first-child { margin-left: 0; }
svg.spark { display: block; } svg.spark .axis { stroke: #cfd5de; }
svg.spark text { font: 10px system-ui, sans-serif; fill: #5b6475; }
`;

const COLORS = { read: "#2563eb", write: "#d97706", p50: "#16a34a", p99: "#dc2626" } as const;

/** 0.42 ms, 3.1 ms, 48 ms, 2.5 s. */
export function formatMs(ms: number): string {
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10_000 ? 0 : 1)} s`;
  return `${ms.toFixed(ms < 1 ? 2 : ms < 10 ? 1 : 0)} ms`;
}

function clock(iso: string | Date): string {
  return (typeof iso === "string" ? new Date(iso) : iso).toLocaleTimeString("en-GB");
}

/** Solid then dashed, as the chart draws its two series. */
function legend(items: [color: string, text: string][]): string {
  return `<div class="legend">${
    items.map(([color, text], i) =>
      `<i style="border-top:3px ${i === 0 ? "solid" : "dashed"} ${color}"></i>${escapeHtml(text)}`
    ).join("")
  }</div>`;
}

/** Two charts for one mount or export: throughput, then latency. */
function graphCard(
  title: string,
  image: string,
  points: readonly HistoryPoint[],
  windowMs: number,
): string {
  const last = points.at(-1);
  const rate = (n: number | undefined) => `${formatBytes(n ?? 0)}/s`;
  const ms = (n: number | null | undefined) => n === null || n === undefined ? "–" : formatMs(n);
  const throughput = sparkline({
    label: `${title}: read and write throughput`,
    windowMs,
    format: (n) => `${formatBytes(n)}/s`,
    series: [
      { name: "read", color: COLORS.read, values: points.map((p) => [p.at, p.readBytesPerSec]) },
      {
        name: "write",
        color: COLORS.write,
        dashed: true,
        values: points.map((p) => [p.at, p.writeBytesPerSec]),
      },
    ],
  });
  const latency = sparkline({
    label: `${title}: request latency p50 and p99`,
    windowMs,
    format: formatMs,
    emptyText: "no requests",
    series: [
      { name: "p50", color: COLORS.p50, values: points.map((p) => [p.at, p.p50Ms]) },
      { name: "p99", color: COLORS.p99, dashed: true, values: points.map((p) => [p.at, p.p99Ms]) },
    ],
  });
  return `<div class="graph"><div class="gname">${escapeHtml(title)} <span>${
    escapeHtml(image)
  }</span></div>
${
    legend([[COLORS.read, `read ${rate(last?.readBytesPerSec)}`], [
      COLORS.write,
      `write ${rate(last?.writeBytesPerSec)}`,
    ]])
  }${throughput}
${
    legend([[COLORS.p50, `p50 ${ms(last?.p50Ms)}`], [COLORS.p99, `p99 ${ms(last?.p99Ms)}`]])
  }${latency}
</div>`;
}

function graphsSection(data: StatusPageData): string {
  const history = data.history;
  if (!history) return "";
  const windowMs = data.historyWindowMs ?? 6 * 60_000;
  const cards = [
    ...data.mounts.map((m) => graphCard(m.device, m.image, history(mountKey(m.device)), windowMs)),
    ...data.exports.map((e) =>
      graphCard(`export ${e.name}`, e.image, history(exportKey(e.name)), windowMs)
    ),
  ];
  const span = windowMs >= 60_000
    ? `${Math.round(windowMs / 60_000)} min`
    : `${Math.round(windowMs / 1000)} s`;
  const body = cards.length === 0
    ? `<p class="empty">Nothing mounted or exported.</p>`
    : `<div class="graphs">${cards.join("\n")}</div>`;
  return `<h2>Throughput and latency, last ${span}</h2>\n${body}`;
}

const PROXY_COLUMNS = [
  "Proxy",
  "Name",
  "Origin",
  "State",
  "Used by",
  "Last error",
  "Failures",
  "Failovers out/in",
] as const;

function proxyState(p: ProxyInfo): string {
  const text = p.state === "backoff" && p.backoffUntil !== null
    ? `backoff until ${clock(p.backoffUntil)}`
    : p.state;
  return `<span class="state ${escapeHtml(p.state)}">${escapeHtml(text)}</span>`;
}

function proxiesSection(proxies: readonly ProxyInfo[] | undefined): string {
  if (!proxies) return "";
  const header = PROXY_COLUMNS.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
  const rows = proxies.length === 0
    ? `<tr><td colspan="${PROXY_COLUMNS.length}" class="empty">No IVBS proxy known.</td></tr>`
    : proxies.map((p) => {
      const error = p.lastError === null
        ? "—"
        : `${clock(p.lastErrorAt ?? "")} ${p.lastError.slice(0, 90)}`;
      const cells = [
        `<td><code>${escapeHtml(p.address)}</code></td>`,
        `<td>${escapeHtml(p.name ?? "—")}</td>`,
        `<td>${escapeHtml(p.origins.join(", "))}</td>`,
        `<td>${proxyState(p)}</td>`,
        `<td>${escapeHtml(p.usedBy.join(", ") || "—")}</td>`,
        `<td title="${escapeHtml(p.lastError ?? "")}">${escapeHtml(error)}</td>`,
        `<td>${p.failures}</td>`,
        `<td>${p.failoversFrom} / ${p.failoversTo}</td>`,
      ];
      return `<tr data-proxy="${escapeHtml(p.address)}">${cells.join("")}</tr>`;
    }).join("\n");
  return `<h2>IVBS proxies</h2>
<table id="proxies"><thead><tr>${header}</tr></thead>
<tbody>
${rows}
</tbody></table>`;
}

/** "from=… to=… cause=…", short enough for one table cell. */
function details(fields: Record<string, unknown>): string {
  const text = Object.entries(fields)
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(" ");
  return text.length > 300 ? `${text.slice(0, 299)}…` : text;
}

function eventsSection(events: readonly DaemonEvent[] | undefined): string {
  if (!events) return "";
  const rows = events.length === 0
    ? `<tr><td colspan="5" class="empty">Nothing happened yet.</td></tr>`
    : events.map((e) => {
      const where = e.device ?? (e.export !== undefined ? `export ${e.export}` : e.component);
      return `<tr><td>${escapeHtml(clock(e.time))}</td><td><span class="level ${e.level}">${
        escapeHtml(e.level)
      }</span></td><td>${escapeHtml(where)}</td><td>${escapeHtml(e.message)}</td>` +
        `<td class="details">${escapeHtml(details(e.fields))}</td></tr>`;
    }).join("\n");
  return `<h2>Recent events</h2>
<table id="events"><thead><tr><th>Time</th><th>Level</th><th>Where</th><th>Event</th><th>Details</th></tr></thead>
<tbody>
${rows}
</tbody></table>
<p class="note">Newest first; all of them (and a cursor to follow) at <a href="/api/events">/api/events</a>.</p>`;
}

/**
 * The part of the page that changes: every table, graph and list. `GET /`
 * wraps it; `GET /status/live` serves it alone for the page's refresh.
 */
export function renderLive(data: StatusPageData): string {
  const header = MOUNT_COLUMNS.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
  const exportHeader = EXPORT_COLUMNS.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
  return `<h2>Mounted devices</h2>
<table>
<thead><tr>${header}</tr></thead>
<tbody id="mounts">
${mountRows(data.mounts)}
</tbody>
</table>
<h2>NBD exports</h2>
<table>
<thead><tr>${exportHeader}</tr></thead>
<tbody id="exports">
${exportRows(data.exports)}
</tbody>
</table>
${graphsSection(data)}
${proxiesSection(data.proxies)}
${eventsSection(data.events)}
<h2>Free devices</h2>
<div id="free">${freeList(data.devices)}</div>
${foreignNote(data.devices)}
<span id="generated" hidden>${escapeHtml(clock(data.generatedAt))}</span>`;
}

/**
 * Browser side: fetch the live part and swap it in. The HTML comes from the
 * same server-side renderer as the page itself, every value already escaped.
 */
const SCRIPT = `
(() => {
  const live = document.getElementById("live");
  let refreshes = 0;
  async function refresh() {
    try {
      const response = await fetch("/status/live", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      live.innerHTML = await response.text();
      live.dataset.refreshes = String(++refreshes);
      const stamp = document.getElementById("generated");
      document.getElementById("updated").textContent = stamp ? stamp.textContent : "";
      document.getElementById("error").textContent = "";
    } catch (e) {
      document.getElementById("error").textContent = "Daemon unreachable (" + e.message + "); retrying.";
    }
  }
  setInterval(refresh, ${REFRESH_MS});
})();
`;

export function renderStatusPage(data: StatusPageData): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ivbsnetd status</title>
<noscript><meta http-equiv="refresh" content="${Math.round(REFRESH_MS / 1000)}"></noscript>
<style>${STYLE}</style>
</head>
<body>
<h1>ivbsnetd</h1>
<p class="sub">IVBS images on NBD devices and NBD exports · version ${
    escapeHtml(data.version)
  } · updated
<span id="updated">${escapeHtml(clock(data.generatedAt))}</span>
<span id="error"></span></p>
<div id="live">
${renderLive(data)}
</div>
<p class="note">API: <a href="/api/mounts">/api/mounts</a> · <a href="/api/exports">/api/exports</a> · <a href="/api/devices">/api/devices</a> ·
<a href="/api/proxies">/api/proxies</a> · <a href="/api/events">/api/events</a> ·
<a href="/metrics">/metrics</a> · <a href="/status/json">/status/json</a></p>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
