/**
 * Waiting in tests for something to happen rather than for time to pass:
 * `EventRecorder` resolves when the code under test reports an event,
 * `eventually` when a counter or state it exposes reaches a value (polled, with a
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
 * Resolves with the first truthy value of `condition()`, checking every few
 * milliseconds; throws after `timeoutMs` naming `what` (a hang becomes a clear
 * failure).
 */
export async function eventually<T>(
  what: string,
  condition: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (performance.now() > deadline) {
      throw new Error(`not reached within ${timeoutMs} ms: ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
