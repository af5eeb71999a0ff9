/**
 * Liveness by probing on suspicion. A proxy answers KEEPALIVE itself, without
 * touching storage, so a keepalive's round trip tells a slow proxy from a dead
 * one. While requests wait, the connection suspects the proxy when nothing at
 * all has arrived for `silenceMs`, or when the oldest request has waited longer
 * than `slowFactor` × the recent p99 reply latency (at least `slowFloorMs`); it
 * then sends one KEEPALIVE (the probe). A proxy that stays silent for
 * `probeTimeoutMs` after that is dead; one that answers keeps its requests and
 * both clocks restart. The dead-peer timeout stays the outer bound.
 *
 * Time is always passed in (`now`, milliseconds on one monotonic clock), so the
 * decisions are tested with explicit times; the connection feeds its clock's
 * `now()` (src/clock.ts) and runs the checks on that clock's timers.
 * @module
 */

export interface LivenessOptions {
  /** Requests waiting and nothing received from the proxy for this long → probe (ms). */
  silenceMs: number;
  /** A request waiting longer than this × the recent p99 reply latency → probe… */
  slowFactor: number;
  /** …but never before it waited this long (ms). */
  slowFloorMs: number;
  /** Silence after a probe (or any unanswered keepalive) while requests wait → dead (ms); 0 = never probe. */
  probeTimeoutMs: number;
}

/**
 * Chosen from measurements on loopback under pipelined load (README, "Hung
 * proxies"): keepalive round trips stay in the low milliseconds even when
 * replies take 500 ms, and a stall is detected in at most about
 * silenceMs + probeTimeoutMs + two checks ≈ 1.45 s.
 */
export const DEFAULT_LIVENESS: Readonly<LivenessOptions> = {
  silenceMs: 500,
  slowFactor: 4,
  slowFloorMs: 500,
  probeTimeoutMs: 750,
};

/** What the connection should do now. */
export type LivenessVerdict = "ok" | "probe" | "dead";

const P99 = 0.99;

/**
 * The last `size` reply latencies in a fixed ring: recording one is a store
 * and an increment (no allocation); the p99 is computed on demand from a
 * sorted copy, at most once per new batch of samples.
 */
export class LatencyWindow {
  readonly #samples: Float64Array;
  readonly #scratch: Float64Array;
  #next = 0;
  #count = 0;
  #recorded = 0;
  #computedAt = 0;
  #p99 = 0;

  constructor(size = 256) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`window size ${size} < 1`);
    this.#samples = new Float64Array(size);
    this.#scratch = new Float64Array(size);
  }

  record(ms: number): void {
    this.#samples[this.#next] = ms;
    this.#next = this.#next + 1 === this.#samples.length ? 0 : this.#next + 1;
    if (this.#count < this.#samples.length) this.#count++;
    this.#recorded++;
  }

  /** Samples recorded so far (all time). */
  get recorded(): number {
    return this.#recorded;
  }

  /** The 99th percentile of the window (ms); 0 while it is empty. */
  p99(): number {
    if (this.#recorded === this.#computedAt) return this.#p99;
    const n = this.#count;
    const sorted = this.#scratch.subarray(0, n);
    sorted.set(this.#samples.subarray(0, n));
    sorted.sort();
    this.#p99 = sorted[Math.min(n - 1, Math.ceil(n * P99) - 1)];
    this.#computedAt = this.#recorded;
    return this.#p99;
  }
}

/** One connection's liveness state; every method takes the current time. */
export class LivenessMonitor {
  readonly options: Readonly<LivenessOptions>;
  readonly #latencies: LatencyWindow;
  #lastArrivalAt: number;
  /** When the keepalive still unanswered was sent; -1 when none is. */
  #keepaliveSentAt = -1;
  #lastAnsweredAt = -Infinity;

  constructor(options: Readonly<LivenessOptions>, latencies: LatencyWindow, now: number) {
    this.options = options;
    this.#latencies = latencies;
    this.#lastArrivalAt = now;
  }

  get keepaliveOutstanding(): boolean {
    return this.#keepaliveSentAt >= 0;
  }

  /** How often the owner should call check() (ms). */
  get checkEveryMs(): number {
    const { silenceMs, slowFloorMs, probeTimeoutMs } = this.options;
    return Math.max(5, Math.min(silenceMs, slowFloorMs, probeTimeoutMs) / 5);
  }

  /** Any packet (reply or push) arrived from the proxy. */
  arrived(now: number): void {
    this.#lastArrivalAt = now;
  }

  /** A request other than KEEPALIVE was answered after `latencyMs`. */
  replied(latencyMs: number): void {
    this.#latencies.record(latencyMs);
  }

  keepaliveSent(now: number): void {
    this.#keepaliveSentAt = now;
  }

  keepaliveAnswered(now: number): void {
    this.#keepaliveSentAt = -1;
    this.#lastAnsweredAt = now;
  }

  /** How long the oldest request may wait before the proxy is probed (ms). */
  slowAfterMs(): number {
    const { slowFactor, slowFloorMs } = this.options;
    return Math.max(slowFloorMs, slowFactor * this.#latencies.p99());
  }

  /**
   * `oldestSentAt`: when the oldest request still waiting (KEEPALIVE aside) was
   * sent; undefined when none is. "probe": send a KEEPALIVE; "dead": the
   * proxy ignored one while requests waited.
   */
  check(now: number, oldestSentAt: number | undefined): LivenessVerdict {
    const { silenceMs, probeTimeoutMs } = this.options;
    if (oldestSentAt === undefined || probeTimeoutMs <= 0) return "ok";
    // Silence counts from the later of the last packet and the start of the wait.
    const heardOrAsked = Math.max(this.#lastArrivalAt, oldestSentAt);
    if (this.keepaliveOutstanding) {
      const since = Math.max(heardOrAsked, this.#keepaliveSentAt);
      return now - since >= probeTimeoutMs ? "dead" : "ok";
    }
    if (now - heardOrAsked >= silenceMs) return "probe";
    // A proxy that just answered a probe is alive: the wait counts from then.
    const waited = now - Math.max(oldestSentAt, this.#lastAnsweredAt);
    return waited >= this.slowAfterMs() ? "probe" : "ok";
  }

  /**
   * Our own process did not run for a while (its timer fired late): what the
   * proxy sent meanwhile may still sit unread in the socket, so that time is
   * not the proxy's silence. Silence, and a probe's wait, count from `now`.
   */
  stalled(now: number): void {
    this.#lastArrivalAt = Math.max(this.#lastArrivalAt, now);
    if (this.keepaliveOutstanding) this.#keepaliveSentAt = Math.max(this.#keepaliveSentAt, now);
  }

  /** Milliseconds since anything arrived, for log lines. */
  silentFor(now: number): number {
    return now - this.#lastArrivalAt;
  }
}
