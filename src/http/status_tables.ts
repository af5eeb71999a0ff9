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

/** A column of the mounts or exports table: its header and an item's cell. */
type Column<T> = readonly [header: string, cell: (item: T) => string | Markup];

/** What a mount and an export both show: the image, and what moved through it. */
type ImageView = (MountView | ExportView) & Reconciled;

const IMAGE_COLUMNS: readonly Column<ImageView>[] = [
  ["Image", (v) => v.image + (v.readOnly ? " (ro)" : "")],
  ["Size", (v) => formatBytes(v.sizeBytes)],
  ["State", stateCell],
];

const TRAFFIC_COLUMNS: readonly Column<ImageView>[] = [
  ["Read/s", (v) => formatBytes(v.throughput.readBytesPerSec) + "/s"],
  ["Write/s", (v) => formatBytes(v.throughput.writeBytesPerSec) + "/s"],
  ["Read", (v) => formatBytes(v.bytesRead)],
  ["Written", (v) => formatBytes(v.bytesWritten)],
];

const MOUNT_COLUMNS: readonly Column<MountView>[] = [
  ["Device", (m) => m.device],
  ...IMAGE_COLUMNS,
  ["Proxy", (m) => m.proxy ?? "—"],
  ...TRAFFIC_COLUMNS,
  ["In flight", (m) => String(m.inFlight)],
  ["Failovers", (m) => String(m.failovers)],
];

const EXPORT_COLUMNS: readonly Column<ExportView>[] = [
  ["Export", (e) => e.name],
  ...IMAGE_COLUMNS,
  ["URI", (e) => markup`<code>${e.uri}</code>`],
  ["Clients", (e) => String(e.clients)],
  ...TRAFFIC_COLUMNS,
];

/** A titled table of mounts or exports, failing ones first; `empty` when there are none. */
function itemsTable<T extends { state: string }>(
  title: string,
  id: string,
  columns: readonly Column<T>[],
  items: readonly T[],
  empty: string,
): Markup {
  const rows = items.length === 0
    ? markup`<tr><td colspan="${columns.length}" class="empty">${empty}</td></tr>`
    : failingFirst(items).map((item) =>
      markup`<tr>${cells(columns.map(([, cell]) => cell(item)))}</tr>\n`
    );
  return markup`<h2>${title}</h2>
<table>
${header(columns.map(([name]) => name))}
<tbody id="${id}">
${rows}
</tbody>
</table>`;
}

export function mountsTable(mounts: readonly MountView[]): Markup {
  return itemsTable("Mounted devices", "mounts", MOUNT_COLUMNS, mounts, "No image mounted.");
}

export function exportsTable(exports: readonly ExportView[]): Markup {
  return itemsTable("NBD exports", "exports", EXPORT_COLUMNS, exports, "No NBD export.");
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
