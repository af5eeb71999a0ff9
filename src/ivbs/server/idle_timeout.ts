/**
 * A test-server connection's idle timeout: a client that sends nothing for
 * `timeoutMs` is closed. One timer re-arms itself for the time left. While the
 * reader is paused (admission full, proxy stalled) it cannot see the client's
 * packets, so that time is not idleness.
 * @module
 */
import type { Clock, TimerHandle } from "../../clock.ts";

export class IdleTimeout {
  readonly #timeoutMs: number;
  readonly #clock: Clock;
  readonly #stalled: () => boolean;
  readonly #onIdle: (idleMs: number) => void;
  // Time of the last packet from the client; the check re-arms itself.
  #lastActivity: number;
  #readerPaused = false;
  #idleTimer: TimerHandle | undefined;
  #stopped = false;

  constructor(
    timeoutMs: number,
    clock: Clock,
    /** True while the proxy is stalled (reads nothing). */
    stalled: () => boolean,
    /** The client was idle for `idleMs` ≥ timeoutMs; the timer is stopped. */
    onIdle: (idleMs: number) => void,
  ) {
    this.#timeoutMs = timeoutMs;
    this.#clock = clock;
    this.#lastActivity = clock.now();
    this.#stalled = stalled;
    this.#onIdle = onIdle;
  }

  start(): void {
    this.#armIdle(this.#timeoutMs);
  }

  /** A packet (or part of one) arrived from the client. */
  activity(): void {
    this.#lastActivity = this.#clock.now();
  }

  /** The reader waits (for room, or for the proxy to be unstalled). */
  readerPaused(): void {
    this.#readerPaused = true;
  }

  /** The reader reads again: idleness counts from now. */
  readerResumed(): void {
    this.#readerPaused = false;
    this.#lastActivity = this.#clock.now();
  }

  stop(): void {
    this.#stopped = true;
    this.#clock.clearTimeout(this.#idleTimer);
  }

  #armIdle(delayMs: number): void {
    this.#idleTimer = this.#clock.setTimeout(() => this.#checkIdle(), Math.max(1, delayMs));
  }

  #checkIdle(): void {
    if (this.#stopped) return;
    const now = this.#clock.now();
    const timeout = this.#timeoutMs;
    // A paused reader cannot see the client's packets: that time is not idleness.
    if (this.#readerPaused || this.#stalled()) {
      this.#lastActivity = now;
      return this.#armIdle(timeout);
    }
    const idle = now - this.#lastActivity;
    if (idle >= timeout) {
      this.#stopped = true;
      this.#onIdle(idle);
      return;
    }
    this.#armIdle(timeout - idle);
  }
}
