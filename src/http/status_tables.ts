/**
 * The status page's tables and lists, all through `markup` (hono/html), so
 * every value is escaped by construction: the attention list (failing mounts
 * and exports, host health problems), mounts, exports, proxies, events and the
 * free devices.
 * @module
 */
import type { DeviceInfo, MountInfo } from "../daemon/mount_table.ts";
import type { ExportInfo } from "../daemon/export_table.ts";
import type { DaemonEvent } from "../daemon/events.ts";
import type { ProxyInfo } from "../daemon/proxy_registry.ts";
import { formatBytes } from "../units.ts";
import { FAILING, type ReconcileFields } from "../daemon/view_contract.ts";
import type { NbdHealth } from "../nbd/host_health.ts";
import { type Markup, markup } from "./markup.ts";

/** What the reconciler adds to a mount or export view (absent from older parts). */
export type Reconciled = Partial<Omit<ReconcileFields, "state">>;
export type MountView = MountInfo & Reconciled;
export type ExportView = ExportInfo & Reconciled;

/** Proxy states that mean "this proxy cannot be used now". */
const PROXY_PROBLEMS: readonly string[] = ["unreachable", "backoff"];

export function clock(iso: string | Date): string {
  return (typeof iso === "string" ? new Date(iso) : iso).toLocaleTimeString("en-GB");
}

/** Failing items first; otherwise the table's order. */
export function failingFirst<T extends { state: string }>(items: readonly T[]): T[] {
  return [...items].sort((a, b) => Number(b.state === FAILING) - Number(a.state === FAILING));
}

function state(value: string, text = value): Markup {
  return markup`<span class="state ${value}">${text}</span>`;
}

/** "failing: IVBS unreachable; next try 16:40:02 (attempt 3)". */
function retryText(item: Reconciled): string {
  const parts = [item.reason ?? "no reason given"];
  if (item.nextRetryAt !== undefined) parts.push(`next try ${clock(item.nextRetryAt)}`);
  const attempt = item.attempts === undefined ? "" : ` (attempt ${item.attempts})`;
  return parts.join("; ") + attempt;
}

export interface AttentionSources {
  mounts: readonly MountView[];
  exports: readonly ExportView[];
  proxies?: readonly ProxyInfo[];
  nbd?: NbdHealth;
}

/** What needs the operator, at the top of the page; nothing when all is well. */
export function attentionSection(data: AttentionSources): Markup | "" {
  const items: Markup[] = [];
  for (const m of data.mounts) {
    if (m.state === FAILING) {
      items.push(markup`<li><b>${m.device}</b> ${m.image}: ${retryText(m)}</li>`);
    }
  }
  for (const e of data.exports) {
    if (e.state === FAILING) {
      items.push(markup`<li><b>export ${e.name}</b> ${e.image}: ${retryText(e)}</li>`);
    }
  }
  // Whatever keeps mounts from working here: no module, no free device, not root.
  if (data.nbd?.reason !== undefined) {
    items.push(markup`<li><b>Mounts cannot work</b>: ${data.nbd.reason}</li>`);
  }
  for (const p of data.proxies ?? []) {
    if (!PROXY_PROBLEMS.includes(p.state)) continue;
    const error = p.lastError === null ? "" : `: ${p.lastError.slice(0, 120)}`;
    items.push(markup`<li><b>proxy ${p.address}</b> ${p.state}${error}</li>`);
  }
  if (items.length === 0) return "";
  return markup`<section id="attention"><h2>Needs attention</h2><ul>${items}</ul></section>`;
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

function header(columns: readonly string[]): Markup {
  return markup`<thead><tr>${columns.map((c) => markup`<th>${c}</th>`)}</tr></thead>`;
}

function cells(values: readonly (string | Markup)[]): Markup[] {
  return values.map((value) => markup`<td>${value}</td>`);
}

function stateCell(item: { state: string } & Reconciled): Markup {
  if (item.state !== FAILING) return state(item.state);
  return markup`${state(item.state)} <span class="why">${retryText(item)}</span>`;
}

export function mountsTable(mounts: readonly MountView[]): Markup {
  const rows = mounts.length === 0
    ? markup`<tr><td colspan="${MOUNT_COLUMNS.length}" class="empty">No image mounted.</td></tr>`
    : failingFirst(mounts).map((m) =>
      markup`<tr>${
        cells([
          m.device,
          m.image + (m.readOnly ? " (ro)" : ""),
          formatBytes(m.sizeBytes),
          stateCell(m),
          m.proxy ?? "—",
          formatBytes(m.throughput.readBytesPerSec) + "/s",
          formatBytes(m.throughput.writeBytesPerSec) + "/s",
          formatBytes(m.bytesRead),
          formatBytes(m.bytesWritten),
          String(m.inFlight),
          String(m.failovers),
        ])
      }</tr>\n`
    );
  return markup`<h2>Mounted devices</h2>
<table>
${header(MOUNT_COLUMNS)}
<tbody id="mounts">
${rows}
</tbody>
</table>`;
}

export function exportsTable(exports: readonly ExportView[]): Markup {
  const rows = exports.length === 0
    ? markup`<tr><td colspan="${EXPORT_COLUMNS.length}" class="empty">No NBD export.</td></tr>`
    : failingFirst(exports).map((e) =>
      markup`<tr>${
        cells([
          e.name,
          e.image + (e.readOnly ? " (ro)" : ""),
          formatBytes(e.sizeBytes),
          stateCell(e),
          markup`<code>${e.uri}</code>`,
          String(e.clients),
          formatBytes(e.throughput.readBytesPerSec) + "/s",
          formatBytes(e.throughput.writeBytesPerSec) + "/s",
          formatBytes(e.bytesRead),
          formatBytes(e.bytesWritten),
        ])
      }</tr>\n`
    );
  return markup`<h2>NBD exports</h2>
<table>
${header(EXPORT_COLUMNS)}
<tbody id="exports">
${rows}
</tbody>
</table>`;
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

function proxyState(p: ProxyInfo): Markup {
  const text = p.state === "backoff" && p.backoffUntil !== null
    ? `backoff until ${clock(p.backoffUntil)}`
    : p.state;
  return state(p.state, text);
}

export function proxiesSection(proxies: readonly ProxyInfo[] | undefined): Markup | "" {
  if (!proxies) return "";
  const rows = proxies.length === 0
    ? markup`<tr><td colspan="${PROXY_COLUMNS.length}" class="empty">No IVBS proxy known.</td></tr>`
    : proxies.map((p) => {
      const error = p.lastError === null
        ? "—"
        : `${clock(p.lastErrorAt ?? "")} ${p.lastError.slice(0, 90)}`;
      return markup`<tr data-proxy="${p.address}"><td><code>${p.address}</code></td>${
        cells([p.name ?? "—", p.origins.join(", "), proxyState(p), p.usedBy.join(", ") || "—"])
      }<td title="${p.lastError ?? ""}">${error}</td>${
        cells([String(p.failures), `${p.failoversFrom} / ${p.failoversTo}`])
      }</tr>\n`;
    });
  return markup`<h2>IVBS proxies</h2>
<table id="proxies">${header(PROXY_COLUMNS)}
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

export function eventsSection(events: readonly DaemonEvent[] | undefined): Markup | "" {
  if (!events) return "";
  const rows = events.length === 0
    ? markup`<tr><td colspan="5" class="empty">Nothing happened yet.</td></tr>`
    : events.map((e) => {
      const where = e.device ?? (e.export !== undefined ? `export ${e.export}` : e.component);
      return markup`<tr>${
        cells([clock(e.time), markup`<span class="level ${e.level}">${e.level}</span>`, where])
      }<td>${e.message}</td><td class="details">${details(e.fields)}</td></tr>\n`;
    });
  return markup`<h2>Recent events</h2>
<table id="events">${header(["Time", "Level", "Where", "Event", "Details"])}
<tbody>
${rows}
</tbody></table>
<p class="note">Newest first; all of them (and a cursor to follow) at <a href="/api/events">/api/events</a>.</p>`;
}

export function freeDevices(devices: readonly DeviceInfo[]): Markup {
  const free = devices.filter((d) => d.state === "free");
  const list = devices.length === 0
    ? markup`<p class="empty">No NBD devices: the nbd kernel module is not loaded.</p>`
    : free.length === 0
    ? markup`<p class="empty">Every device is in use.</p>`
    : markup`<ul class="chips">${free.map((d) => markup`<li>${d.device}</li>`)}</ul>`;
  const foreign = devices.filter((d) => d.state === "foreign").map((d) => d.device);
  const note = foreign.length > 0 &&
    markup`<p class="note">In use by other programs: ${foreign.join(", ")}</p>`;
  return markup`<h2>Free devices</h2>
<div id="free">${list}</div>
${note}`;
}
