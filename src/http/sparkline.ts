/**
 * Small inline SVG line charts for the status page: no library, no external
 * asset, no script (the page works offline and without JavaScript). Each chart
 * draws one or more series over a fixed time window ending at the newest point;
 * a gap in a series (no value) breaks its line instead of drawing through it.
 * Built with `markup` (hono/html), so labels and names are escaped by
 * construction; the result is trusted markup the status page embeds as it is.
 *
 * @example Two points of one series
 * ```ts
 * import { sparkline } from "./sparkline.ts";
 * const svg = sparkline({
 *   label: "read",
 *   windowMs: 10_000,
 *   series: [{ name: "read", color: "#2563eb", values: [[0, 1], [5_000, 3]] }],
 *   format: String,
 * });
 * if (!svg.includes('data-points="2"')) throw new Error(svg);
 * ```
 * @module
 */
import { type Markup, markup } from "./markup.ts";

export interface ChartSeries {
  name: string;
  color: string;
  /** Dashed, so a line on top of another still shows both. */
  dashed?: boolean;
  /** [time ms, value]; null = no value at that time (a gap). Oldest first. */
  values: readonly (readonly [number, number | null])[];
}

export interface ChartOptions {
  /** Said by screen readers and shown as the tooltip. */
  label: string;
  series: readonly ChartSeries[];
  /** The time span the chart covers, ending at the newest point. */
  windowMs: number;
  /** Formats the top of the scale. */
  format: (value: number) => string;
  width?: number;
  height?: number;
  /** Shown while fewer than two points are drawn (default "collecting…"). */
  emptyText?: string;
}

/** One decimal is enough on a 40-pixel-high chart. */
const coord = (n: number) => (Math.round(n * 10) / 10).toString();

/** An `<svg>` element; `data-points` counts the points drawn (for tests and curious readers). */
export function sparkline(options: ChartOptions): string {
  return chart(options).toString();
}

function chart(options: ChartOptions): Markup {
  const width = options.width ?? 240;
  const height = options.height ?? 44;
  const top = 12; // room for the scale label
  const plot = height - top - 2;
  let newest = -Infinity;
  let max = 0;
  for (const series of options.series) {
    for (const [at, value] of series.values) {
      if (at > newest) newest = at;
      if (value !== null && value > max) max = value;
    }
  }
  const x = (at: number) => width - ((newest - at) / options.windowMs) * width;
  const y = (value: number) => top + plot - (max > 0 ? (value / max) * plot : 0);
  let drawn = 0;
  const lines: Markup[] = [];
  for (const series of options.series) {
    let path = "";
    let pen = false;
    for (const [at, value] of series.values) {
      if (value === null || x(at) < 0) {
        pen = false;
        continue;
      }
      path += `${pen ? "L" : "M"}${coord(x(at))} ${coord(y(value))}`;
      pen = true;
      drawn++;
    }
    if (path !== "") {
      const dash = series.dashed ? "5 3" : undefined;
      lines.push(
        markup`<path d="${path}" fill="none" stroke="${series.color}" stroke-width="1.5" stroke-linejoin="round"${
          dash && markup` stroke-dasharray="${dash}"`
        }><title>${series.name}</title></path>`,
      );
    }
  }
  const empty = drawn < 2 &&
    markup`<text x="${width / 2}" y="${
      top + plot / 2 + 4
    }" text-anchor="middle" class="wait">${(options.emptyText ?? "collecting…")}</text>`;
  const scale = max > 0 ? `max ${options.format(max)}` : "";
  return markup`<svg class="spark" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${options.label}" data-points="${drawn}"><title>${options.label}</title><line x1="0" y1="${
    top + plot
  }" x2="${width}" y2="${
    top + plot
  }" class="axis"/><text x="2" y="9" class="scale">${scale}</text>${lines}${empty}</svg>`;
}
