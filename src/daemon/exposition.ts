/**
 * The one Prometheus text exposition writer (format 0.0.4): every family gets
 * its HELP and TYPE lines, label values and HELP text are escaped here and
 * nowhere else, and numbers are written as Prometheus reads them (NaN, ±Inf).
 * The mount, export, proxy, health and process families all write through it.
 *
 * @example A family with one labelled sample
 * ```ts
 * import { Exposition } from "./exposition.ts";
 * const out = new Exposition();
 * out.family("demo_up", "gauge", "1 while up.");
 * out.sample("demo_up", { name: 'a"b' }, 1);
 * if (!out.text().includes('demo_up{name="a\\"b"} 1')) throw new Error(out.text());
 * ```
 * @module
 */

export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

export type Labels = Record<string, string>;
export type MetricType = "counter" | "gauge" | "histogram";

/** Escapes a label value: backslash, double quote and newline. */
export function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

/** HELP text escapes backslash and newline only (quotes are literal there). */
function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function labelText(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

export function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

export class Exposition {
  readonly #lines: string[] = [];
  readonly #families = new Set<string>();

  /** Starts a family; a name given twice is a programming error (Prometheus rejects it). */
  family(name: string, type: MetricType, help: string): void {
    if (this.#families.has(name)) throw new Error(`metric family ${name} written twice`);
    this.#families.add(name);
    this.#lines.push(`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`);
  }

  sample(name: string, labels: Labels, value: number): void {
    this.#lines.push(`${name}${labelText(labels)} ${formatValue(value)}`);
  }

  text(): string {
    return this.#lines.join("\n") + "\n";
  }
}
