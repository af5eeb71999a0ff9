/**
 * Time for code with timers: the current time (ms on one monotonic clock) and
 * one-shot timers. Production code gets `SYSTEM_CLOCK` (performance.now and
 * setTimeout); tests pass a manual clock and move time explicitly, so a
 * timeout is tested without waiting for it. Code that only reads the time
 * takes a `now: () => number` (ProxyList, the mount table): pass `() => clock.now()`.
 * @module
 */

/** A pending timer; only the clock that made it can cancel it. */
export type TimerHandle = ReturnType<typeof setTimeout> | number;

export interface Clock {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /** Calls `callback` once, `ms` from now. */
  setTimeout(callback: () => void, ms: number): TimerHandle;
  /** Cancels a timer of this clock; undefined or an expired timer is ignored. */
  clearTimeout(handle: TimerHandle | undefined): void;
}

/** The real clock. */
export const SYSTEM_CLOCK: Clock = {
  now: () => performance.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout> | undefined),
};
