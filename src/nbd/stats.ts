/**
 * I/O counters and a latency histogram for one served device or export. The
 * serve loop updates them; the daemon's metrics read them. Plain numbers and a
 * fixed array: observing a request allocates nothing.
 * @module
 */
import type { DeviceIoStats } from "../block/device.ts";

/** What a request did, for counting. */
export type IoKind = "read" | "write" | "flush" | "trim" | "zeroes" | "other";

/**
 * Upper bounds (ms) of the latency buckets. `latencyCounts` has one more entry
 * than this: the last counts everything slower than the last bound.
 */
const LATENCY_BUCKETS_MS: readonly number[] = [
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  25,
  50,
  100,
  250,
  500,
  1000,
  2500,
  5000,
  10000,
  30000,
] as const;

/** A plain copy of the counters (JSON-ready). */
export interface IoStatsSnapshot {
  reads: number;
  writes: number;
  flushes: number;
  trims: number;
  zeroes: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
  inFlight: number;
  latencyBucketsMs: number[];
  latencyCounts: number[];
  latencySumMs: number;
}

export class IoStats implements DeviceIoStats {
  /** Completed requests by kind (successful or not). */
  reads = 0;
  writes = 0;
  flushes = 0;
  trims = 0;
  zeroes = 0;
  /** Bytes moved by successful reads / writes. */
  bytesRead = 0;
  bytesWritten = 0;
  /** Requests answered with an error (including ones rejected at the edge). */
  errors = 0;
  /** Requests received and not yet answered; the serve loop keeps it current. */
  inFlight = 0;
  /** Bucket upper bounds in ms, ascending. */
  readonly latencyBucketsMs: readonly number[] = LATENCY_BUCKETS_MS;
  /**
   * Requests per latency bucket, NOT cumulative: `latencyCounts[i]` counts
   * latencies in (bound[i-1], bound[i]]; the extra last entry counts the rest.
   */
  latencyCounts: number[] = new Array(LATENCY_BUCKETS_MS.length + 1).fill(0);
  /** Sum of all observed latencies, for the mean. */
  latencySumMs = 0;

  /** Records one answered request: from its header being read to its reply being queued. */
  observe(kind: IoKind, bytes: number, latencyMs: number, ok = true): void {
    switch (kind) {
      case "read":
        this.reads++;
        if (ok) this.bytesRead += bytes;
        break;
      case "write":
        this.writes++;
        if (ok) this.bytesWritten += bytes;
        break;
      case "flush":
        this.flushes++;
        break;
      case "trim":
        this.trims++;
        break;
      case "zeroes":
        this.zeroes++;
        break;
      case "other":
        break;
    }
    if (!ok) this.errors++;
    this.latencySumMs += latencyMs;
    this.latencyCounts[bucketOf(latencyMs)]++;
  }

  /** Number of observed requests (the histogram's total). */
  get latencyCount(): number {
    let total = 0;
    for (const count of this.latencyCounts) total += count;
    return total;
  }

  snapshot(): IoStatsSnapshot {
    return {
      reads: this.reads,
      writes: this.writes,
      flushes: this.flushes,
      trims: this.trims,
      zeroes: this.zeroes,
      bytesRead: this.bytesRead,
      bytesWritten: this.bytesWritten,
      errors: this.errors,
      inFlight: this.inFlight,
      latencyBucketsMs: [...this.latencyBucketsMs],
      latencyCounts: [...this.latencyCounts],
      latencySumMs: this.latencySumMs,
    };
  }
}

/** Index of the first bucket whose bound is >= `ms` (binary search over 17 bounds). */
function bucketOf(ms: number): number {
  let low = 0;
  let high: number = LATENCY_BUCKETS_MS.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (LATENCY_BUCKETS_MS[mid] < ms) low = mid + 1;
    else high = mid;
  }
  return low;
}

/**
 * A live sum of several counters (a device's connections): every read adds
 * the parts up, so the sum is never stale and costs nothing per request.
 */
export function sumIoStats(parts: readonly DeviceIoStats[]): DeviceIoStats {
  if (parts.length === 1) return parts[0];
  const sum = (pick: (part: DeviceIoStats) => number) => {
    let total = 0;
    for (const part of parts) total += pick(part);
    return total;
  };
  return {
    get reads() {
      return sum((p) => p.reads);
    },
    get writes() {
      return sum((p) => p.writes);
    },
    get flushes() {
      return sum((p) => p.flushes);
    },
    get trims() {
      return sum((p) => p.trims);
    },
    get bytesRead() {
      return sum((p) => p.bytesRead);
    },
    get bytesWritten() {
      return sum((p) => p.bytesWritten);
    },
    get errors() {
      return sum((p) => p.errors);
    },
    get inFlight() {
      return sum((p) => p.inFlight);
    },
    latencyBucketsMs: LATENCY_BUCKETS_MS,
    get latencyCounts() {
      const buckets = LATENCY_BUCKETS_MS.length + 1;
      return Array.from({ length: buckets }, (_, i) => sum((p) => p.latencyCounts[i]));
    },
    get latencySumMs() {
      return sum((p) => p.latencySumMs);
    },
  };
}
