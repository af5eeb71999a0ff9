/**
 * The last few minutes of each mount's and export's throughput and latency, for
 * the status page's graphs. One timer for the whole daemon reads the counters
 * the serve loops already keep (bytes, latency histogram) every `intervalMs` and
 * stores the differences: read/write bytes per second and the p50/p99 latency of
 * the requests answered in that interval. Nothing is added to the data path.
 * @module
 */
import type { DeviceIoStats } from "./driver.ts";

export interface HistoryPoint {
  /** Wall clock (ms since epoch) at the end of the interval. */
  at: number;
  readBytesPerSec: number;
  writeBytesPerSec: number;
  /** Requests answered in the interval (0: no latency to show). */
  requests: number;
  /** Latency percentiles of those requests, in ms (null when none were answered). */
  p50Ms: number | null;
  p99Ms: number | null;
}

/** What a sample reads: byte counters and (once served) the latency histogram. */
export interface HistorySource {
  bytesRead: number;
  bytesWritten: number;
  stats: DeviceIoStats | null | undefined;
}

export interface HistoryOptions {
  /** Between samples (default 5 s). */
  intervalMs?: number;
  /** Points kept per series (default 72: six minutes at 5 s). */
  points?: number;
  /** Wall clock, injected for tests; default Date.now. */
  now?: () => number;
}

export const DEFAULT_HISTORY_INTERVAL_MS = 5_000;
export const DEFAULT_HISTORY_POINTS = 72;

/**
 * The latency below which fraction `q` of the requests counted in `counts`
 * fall, interpolated linearly inside the bucket (as Prometheus'
 * histogram_quantile does); the overflow bucket answers the last bound.
 */
export function quantileMs(
  q: number,
  boundsMs: readonly number[],
  counts: readonly number[],
): number | null {
  let total = 0;
  for (const count of counts) total += count;
  if (total === 0) return null;
  const rank = q * total;
  let below = 0;
  for (let b = 0; b < counts.length; b++) {
    const count = counts[b];
    if (count > 0 && below + count >= rank) {
      if (b >= boundsMs.length) return boundsMs[boundsMs.length - 1];
      const low = b === 0 ? 0 : boundsMs[b - 1];
      return low + (boundsMs[b] - low) * ((rank - below) / count);
    }
    below += count;
  }
  return boundsMs[boundsMs.length - 1];
}

interface Series {
  points: HistoryPoint[];
  last: { at: number; bytesRead: number; bytesWritten: number; counts: number[] };
  seen: boolean;
}

/** Per-key series ("mount:/dev/nbd0", "export:vm1"), sampled together. */
export class History {
  readonly intervalMs: number;
  readonly capacity: number;
  readonly #now: () => number;
  readonly #series = new Map<string, Series>();

  constructor(options: HistoryOptions = {}) {
    this.intervalMs = options.intervalMs ?? DEFAULT_HISTORY_INTERVAL_MS;
    this.capacity = Math.max(2, options.points ?? DEFAULT_HISTORY_POINTS);
    this.#now = options.now ?? Date.now;
  }

  /**
   * One sampling round: a point for every source seen before, a baseline for a
   * new one; series whose key is gone (unmounted, removed) are dropped.
   */
  sample(sources: ReadonlyMap<string, HistorySource>): void {
    const at = this.#now();
    for (const series of this.#series.values()) series.seen = false;
    for (const [key, source] of sources) {
      const counts = [...(source.stats?.latencyCounts ?? [])];
      const now = { at, bytesRead: source.bytesRead, bytesWritten: source.bytesWritten, counts };
      const series = this.#series.get(key);
      if (!series) {
        this.#series.set(key, { points: [], last: now, seen: true });
        continue;
      }
      series.seen = true;
      const seconds = (at - series.last.at) / 1000;
      if (seconds <= 0) continue;
      const delta = counts.map((count, b) => Math.max(0, count - (series.last.counts[b] ?? 0)));
      const bounds = source.stats?.latencyBucketsMs ?? [];
      const rate = (bytes: number) => Math.max(0, Math.round(bytes / seconds));
      series.points.push({
        at,
        readBytesPerSec: rate(source.bytesRead - series.last.bytesRead),
        writeBytesPerSec: rate(source.bytesWritten - series.last.bytesWritten),
        requests: delta.reduce((sum, n) => sum + n, 0),
        p50Ms: quantileMs(0.5, bounds, delta),
        p99Ms: quantileMs(0.99, bounds, delta),
      });
      if (series.points.length > this.capacity) series.points.shift();
      series.last = now;
    }
    for (const [key, series] of this.#series) if (!series.seen) this.#series.delete(key);
  }

  /** The points of one series, oldest first ([] when unknown). */
  points(key: string): readonly HistoryPoint[] {
    return this.#series.get(key)?.points ?? [];
  }

  /** Samples `read()` every `intervalMs` until the returned function is called. */
  start(read: () => ReadonlyMap<string, HistorySource>): () => void {
    const timer = setInterval(() => this.sample(read()), this.intervalMs);
    // The graphs must not keep a stopping daemon alive.
    Deno.unrefTimer(timer);
    return () => clearInterval(timer);
  }
}

/** The history key of a mount. */
export const mountKey = (device: string) => `mount:${device}`;
/** The history key of an export. */
export const exportKey = (name: string) => `export:${name}`;
