/**
 * The status page at `GET /`: at the top what needs attention (failing mounts
 * and exports with their reason and next retry, a missing nbd module, no free
 * device, unreachable proxies), then mounted devices, NBD exports, graphs of
 * the last minutes of throughput and latency per mount and export (inline
 * SVG), the IVBS proxies and their health, the newest events, and the free
 * devices. Everything is rendered on the server with hono/html (escaped by
 * construction), so the page works without JavaScript (a meta refresh then)
 * and offline. With JavaScript, the page follows the daemon's event stream
 * (`GET /api/events` as Server-Sent Events) and fetches the live part
 * (`GET /status/live`, the same renderer) whenever something happens, and
 * every few seconds for the changing rates.
 * @module
 */
import type { DeviceInfo } from "../daemon/mount_table.ts";
import type { DaemonEvent } from "../daemon/events.ts";
import type { HistoryPoint } from "../daemon/history.ts";
import type { ProxyInfo } from "../daemon/proxy_registry.ts";
import type { NbdHealth } from "../nbd/host_health.ts";
import { markup, raw } from "./markup.ts";
import { graphsSection } from "./status_graphs.ts";
import {
  attentionSection,
  clock,
  eventsSection,
  exportsTable,
  type ExportView,
  freeDevices,
  mountsTable,
  type MountView,
  proxiesSection,
} from "./status_tables.ts";

export { formatMs } from "./status_graphs.ts";

export interface StatusPageData {
  mounts: readonly MountView[];
  devices: readonly DeviceInfo[];
  exports: readonly ExportView[];
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
  /** The nbd module's health (absent: not shown in the attention list). */
  nbd?: NbdHealth;
}

/** Events the page shows. */
export const PAGE_EVENTS = 25;

/** How often the page refreshes itself for the rates, events or not. */
export const REFRESH_MS = 2000;

/** The page's style sheet: trusted text, embedded as it is. */
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
.state.unmounting, .state.removing, .state.failing { background: #f8d7d7; color: #7a1c1c; }
.state.pending, .state.attaching { background: #fdf0c4; color: #6b4e00; }
.why { color: #7a1c1c; font-size: 12px; }
#attention { background: #fff4f4; border: 1px solid #f0b4b4; padding: 4px 16px 8px; margin: 0 0 8px; }
#attention h2 { color: #7a1c1c; margin-top: 8px; } #attention ul { margin: 0; padding-left: 18px; }
code { font-size: 12px; }
ul.chips { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 6px; }
ul.chips li { background: #fff; border: 1px solid #cfd5de; border-radius: 12px; padding: 2px 10px; }
.note { color: #5b6475; } #error { color: #9b1c1c; font-weight: 600; }
.state.connected { background: #d3f2dc; color: #135c2b; }
.state.backoff, .state.unreachable { background: #f8d7d7; color: #7a1c1c; }
.state.reachable { background: #e4efe7; color: #135c2b; }
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

/**
 * The part of the page that changes: every table, graph and list. `GET /`
 * wraps it; `GET /status/live` serves it alone for the page's refresh.
 */
export function renderLive(data: StatusPageData): string {
  return markup`${attentionSection(data)}
${mountsTable(data.mounts)}
${exportsTable(data.exports)}
${graphsSection(data)}
${proxiesSection(data.proxies)}
${eventsSection(data.events)}
${freeDevices(data.devices)}
<span id="generated" hidden>${clock(data.generatedAt)}</span>`.toString();
}

/**
 * Browser side: follow the event stream and fetch the live part when an event
 * arrives (coalesced: one fetch at a time, one more if events came meanwhile),
 * and every REFRESH_MS for the rates. The HTML comes from the same server-side
 * renderer as the page itself, every value already escaped. Without
 * EventSource, or while the stream is down, the timer alone keeps it current.
 */
const SCRIPT = `
(() => {
  const live = document.getElementById("live");
  let refreshes = 0, busy = false, again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
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
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }
  if (window.EventSource) {
    const stream = new EventSource("/api/events");
    let events = 0;
    const onEvent = () => {
      live.dataset.events = String(++events);
      refresh();
    };
    for (const level of ["info", "warn", "error"]) stream.addEventListener(level, onEvent);
    stream.onopen = () => { live.dataset.stream = "open"; };
    stream.onerror = () => { live.dataset.stream = "down"; };
  }
  setInterval(refresh, ${REFRESH_MS});
})();
`;

export function renderStatusPage(data: StatusPageData): string {
  return markup`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ivbsnetd status</title>
<noscript><meta http-equiv="refresh" content="${Math.round(REFRESH_MS / 1000)}"></noscript>
<style>${raw(STYLE)}</style>
</head>
<body>
<h1>ivbsnetd</h1>
<p class="sub">IVBS images on NBD devices and NBD exports · version ${data.version} · updated
<span id="updated">${clock(data.generatedAt)}</span>
<span id="error"></span></p>
<div id="live">
${raw(renderLive(data))}
</div>
<p class="note">API: <a href="/api/mounts">/api/mounts</a> · <a href="/api/exports">/api/exports</a> · <a href="/api/devices">/api/devices</a> ·
<a href="/api/proxies">/api/proxies</a> · <a href="/api/events">/api/events</a> ·
<a href="/metrics">/metrics</a> · <a href="/status/json">/status/json</a></p>
<script>${raw(SCRIPT)}</script>
</body>
</html>
`.toString();
}
