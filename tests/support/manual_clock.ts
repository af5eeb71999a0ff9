/**
 * A clock that moves only when a test says so (src/clock.ts): timers fire in
 * time order during `advance`, including timers they set that fall due within
 * the same advance.
 * @module
 */
import type { Clock, TimerHandle } from "../../src/clock.ts";

interface Timer {
  at: number;
  callback: () => void;
}

export class ManualClock implements Clock {
  #now: number;
  readonly #timers = new Map<TimerHandle, Timer>();
  #nextHandle = 1;
  #armed = 0;

  constructor(start = 1_000) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(callback: () => void, ms: number): TimerHandle {
    const handle = this.#nextHandle++;
    this.#armed++;
    this.#timers.set(handle, { at: this.#now + Math.max(0, ms), callback });
    return handle;
  }

  clearTimeout(handle: TimerHandle | undefined): void {
    if (handle !== undefined) this.#timers.delete(handle);
  }

  /** Timers set so far, fired or not (a test can wait for code to arm one). */
  get armed(): number {
    return this.#armed;
  }

  /** Timers not yet fired. */
  get pending(): number {
    return this.#timers.size;
  }

  /** When the next timer falls due, or undefined when none is pending. */
  get nextAt(): number | undefined {
    let at: number | undefined;
    for (const timer of this.#timers.values()) if (at === undefined || timer.at < at) at = timer.at;
    return at;
  }

  /**
   * Moves time forward by `ms`, firing every timer due on the way in time
   * order (ties in the order set), with `now()` at each timer's due time.
   */
  advance(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      let next: [TimerHandle, Timer] | undefined;
      for (const entry of this.#timers) {
        if (entry[1].at <= end && (next === undefined || entry[1].at < next[1].at)) next = entry;
      }
      if (next === undefined) break;
      this.#timers.delete(next[0]);
      this.#now = Math.max(this.#now, next[1].at);
      next[1].callback();
    }
    this.#now = end;
  }
}
