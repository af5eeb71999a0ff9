/**
 * The status page's graphs: per mount and export, throughput and latency over
 * the last minutes (inline SVG from sparkline.ts, trusted markup).
 * @module
 */
import { exportKey, type HistoryPoint, mountKey } from "../daemon/history.ts";
import { formatBytes } from "../units.ts";
import { type Markup, markup, raw } from "./markup.ts";
import { sparkline } from "./sparkline.ts";

const COLORS = { read: "#2563eb", write: "#d97706", p50: "#16a34a", p99: "#dc2626" } as const;

/** 0.42 ms, 3.1 ms, 48 ms, 2.5 s. */
export function formatMs(ms: number): string {
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10_000 ? 0 : 1)} s`;
  return `${ms.toFixed(ms < 1 ? 2 : ms < 10 ? 1 : 0)} ms`;
}

/** Solid then dashed, as the chart draws its two series. */
function legend(items: [color: string, text: string][]): Markup {
  const keys = items.map(([color, text], i) =>
    markup`<i style="border-top:3px ${i === 0 ? "solid" : "dashed"} ${color}"></i>${text}`
  );
  return markup`<div class="legend">${keys}</div>`;
}

/** Two charts for one mount or export: throughput, then latency. */
function graphCard(
  title: string,
  image: string,
  points: readonly HistoryPoint[],
  windowMs: number,
): Markup {
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
  const rates = legend([
    [COLORS.read, `read ${rate(last?.readBytesPerSec)}`],
    [COLORS.write, `write ${rate(last?.writeBytesPerSec)}`],
  ]);
  const latencies = legend([
    [COLORS.p50, `p50 ${ms(last?.p50Ms)}`],
    [COLORS.p99, `p99 ${ms(last?.p99Ms)}`],
  ]);
  // The charts are sparkline.ts's own markup, escaped there: embedded as they are.
  return markup`<div class="graph"><div class="gname">${title} <span>${image}</span></div>
${rates}${raw(throughput)}
${latencies}${raw(latency)}
</div>`;
}

export interface GraphSources {
  mounts: readonly { device: string; image: string }[];
  exports: readonly { name: string; image: string }[];
  /** The graph points of a mount or export, by history key (absent: no graphs). */
  history?: (key: string) => readonly HistoryPoint[];
  /** The span the graphs cover. */
  historyWindowMs?: number;
}

export function graphsSection(data: GraphSources): Markup | "" {
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
    ? markup`<p class="empty">Nothing mounted or exported.</p>`
    : markup`<div class="graphs">${cards.map((card) => markup`${card}\n`)}</div>`;
  return markup`<h2>Throughput and latency, last ${span}</h2>\n${body}`;
}
