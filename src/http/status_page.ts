/**
 * The status page at `GET /`: mounted devices (device, image, size, state,
 * proxy, throughput), NBD exports (name, image, URI, clients, throughput) and
 * free devices. Rendered on the server so it works without JavaScript (a meta
 * refresh then), and refreshed in place by a small inline script polling
 * /api/mounts (which carries the exports too) and /api/devices. Every value is
 * escaped (server side) or set with textContent (client side).
 * @module
 */
import type { DeviceInfo, MountInfo } from "../daemon/mount_table.ts";
import type { ExportInfo } from "../daemon/export_table.ts";
import { formatBytes } from "../daemon/units.ts";

export interface StatusPageData {
  mounts: readonly MountInfo[];
  devices: readonly DeviceInfo[];
  exports: readonly ExportInfo[];
  version: string;
  generatedAt: Date;
}

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

/** One row of cells; the same function (serialized) runs in the browser. */
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

/** One export row; serialized to the browser like mountCells. */
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
`;

/** Browser side: refetch and redraw with textContent only (no HTML from data). */
const SCRIPT = `
(() => {
  const fmt = ${formatBytes.toString()};
  const cells = ${mountCells.toString()};
  const exportCells = ${exportCells.toString()};
  const td = (text, cls) => { const el = document.createElement("td"); el.textContent = text; if (cls) el.className = cls; return el; };
  async function refresh() {
    try {
      const [m, d] = await Promise.all([fetch("/api/mounts"), fetch("/api/devices")]);
      if (!m.ok || !d.ok) throw new Error("HTTP " + m.status + "/" + d.status);
      const { mounts, exports } = await m.json();
      const { devices } = await d.json();
      const body = document.getElementById("mounts");
      body.replaceChildren();
      if (mounts.length === 0) {
        const row = document.createElement("tr");
        const cell = td("No image mounted.", "empty");
        cell.colSpan = ${MOUNT_COLUMNS.length};
        row.append(cell);
        body.append(row);
      }
      for (const mount of mounts) {
        const row = document.createElement("tr");
        cells(mount, fmt).forEach((text, i) => {
          if (i !== 3) { row.append(td(text)); return; }
          const cell = td("");
          const badge = document.createElement("span");
          badge.className = "state " + mount.state;
          badge.textContent = text;
          cell.append(badge);
          row.append(cell);
        });
        body.append(row);
      }
      const exportBody = document.getElementById("exports");
      exportBody.replaceChildren();
      if (exports.length === 0) {
        const row = document.createElement("tr");
        const cell = td("No NBD export.", "empty");
        cell.colSpan = ${EXPORT_COLUMNS.length};
        row.append(cell);
        exportBody.append(row);
      }
      for (const exp of exports) {
        const row = document.createElement("tr");
        exportCells(exp, fmt).forEach((text, i) => {
          if (i === 4) {
            const cell = td("");
            const code = document.createElement("code");
            code.textContent = text;
            cell.append(code);
            row.append(cell);
            return;
          }
          if (i !== 3) { row.append(td(text)); return; }
          const cell = td("");
          const badge = document.createElement("span");
          badge.className = "state " + exp.state;
          badge.textContent = text;
          cell.append(badge);
          row.append(cell);
        });
        exportBody.append(row);
      }
      const free = devices.filter((x) => x.state === "free");
      const list = document.getElementById("free");
      list.replaceChildren();
      const p = document.createElement(free.length ? "ul" : "p");
      p.className = free.length ? "chips" : "empty";
      if (devices.length === 0) p.textContent = "No NBD devices: the nbd kernel module is not loaded.";
      else if (free.length === 0) p.textContent = "Every device is in use.";
      for (const dev of free) { const li = document.createElement("li"); li.textContent = dev.device; p.append(li); }
      list.append(p);
      document.getElementById("updated").textContent = new Date().toLocaleTimeString();
      document.getElementById("error").textContent = "";
    } catch (e) {
      document.getElementById("error").textContent = "Daemon unreachable (" + e.message + "); retrying.";
    }
  }
  setInterval(refresh, ${REFRESH_MS});
})();
`;

export function renderStatusPage(data: StatusPageData): string {
  const header = MOUNT_COLUMNS.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
  const exportHeader = EXPORT_COLUMNS.map((c) => `<th>${escapeHtml(c)}</th>`).join("");
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
<span id="updated">${escapeHtml(data.generatedAt.toLocaleTimeString("en-GB"))}</span>
<span id="error"></span></p>
<h2>Mounted devices</h2>
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
<h2>Free devices</h2>
<div id="free">${freeList(data.devices)}</div>
${foreignNote(data.devices)}
<p class="note">API: <a href="/api/mounts">/api/mounts</a> · <a href="/api/exports">/api/exports</a> · <a href="/api/devices">/api/devices</a> ·
<a href="/metrics">/metrics</a> · <a href="/status/json">/status/json</a></p>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
