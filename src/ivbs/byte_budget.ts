/**
 * A bound on bytes outstanding: callers take bytes before sending and give
 * them back when answered; beyond the bound they wait in FIFO order. This is
 * the backpressure between the NBD side and IVBS instead of an unbounded queue.
 * @module
 */

interface Waiter {
  bytes: number;
  resolve: () => void;
  reject: (error: Error) => void;
}

export class ByteBudget {
  readonly limit: number;
  #used = 0;
  #waiters: Waiter[] = [];
  #head = 0;

  constructor(limit: number) {
    if (!(limit > 0)) throw new RangeError(`byte budget must be positive, got ${limit}`);
    this.limit = limit;
  }

  get used(): number {
    return this.#used;
  }

  /** Callers waiting for room. */
  get waiting(): number {
    return this.#waiters.length - this.#head;
  }

  /** Takes `bytes` (at most `limit`) now if there is room and nobody waits ahead. */
  tryTake(bytes: number): boolean {
    if (this.waiting > 0 || this.#used + bytes > this.limit) return false;
    this.#used += bytes;
    return true;
  }

  /** Takes `bytes` (at most `limit`), waiting for room; rejects if `rejectAll` is called. */
  take(bytes: number): Promise<void> {
    if (this.tryTake(bytes)) return Promise.resolve();
    return new Promise((resolve, reject) => this.#waiters.push({ bytes, resolve, reject }));
  }

  release(bytes: number): void {
    this.#used -= bytes;
    while (this.#head < this.#waiters.length) {
      const next = this.#waiters[this.#head];
      if (this.#used + next.bytes > this.limit) break;
      this.#head++;
      this.#used += next.bytes;
      next.resolve();
    }
    if (this.#head === this.#waiters.length) {
      this.#waiters = [];
      this.#head = 0;
    }
  }

  /** Fails every waiter (the owner is closing). */
  rejectAll(error: Error): void {
    const waiters = this.#waiters.slice(this.#head);
    this.#waiters = [];
    this.#head = 0;
    for (const waiter of waiters) waiter.reject(error);
  }
}
