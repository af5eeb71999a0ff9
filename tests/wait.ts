/**
 * Waiting in tests for something to happen rather than for time to pass:
 * `EventRecorder` resolves when the code under test reports an event,
 * `until` when a counter or state it exposes reaches a value (polled, with a
 * deadline that names what was awaited).
 * @module
 */

/** Records events (pass `recorder.push` as the listener) and lets a test await them. */
export class EventRecorder<E> {
  readonly all: E[] = [];
  #waiters: { match: (event: E) => boolean; count: number; resolve: () => void }[] = [];

  readonly push = (event: E): void => {
    this.all.push(event);
    this.#waiters = this.#waiters.filter((waiter) => {
      if (this.count(waiter.match) < waiter.count) return true;
      waiter.resolve();
      return false;
    });
  };

  /** Events recorded so far that match. */
  count(match: (event: E) => boolean): number {
    return this.all.filter(match).length;
  }

  /** Resolves once `count` matching events have been recorded in all (earlier ones count). */
  waitFor(match: (event: E) => boolean, count = 1): Promise<void> {
    if (this.count(match) >= count) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ match, count, resolve }));
  }
}

/**
 * Resolves once `condition()` holds, checking every few milliseconds; throws
 * after `limitMs` naming `what` (a hang becomes a clear failure).
 */
export async function until(
  what: string,
  condition: () => boolean,
  limitMs = 10_000,
): Promise<void> {
  const deadline = performance.now() + limitMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`not reached within ${limitMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
