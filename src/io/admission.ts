/**
 * The bound on work in flight of one connection: requests and payload bytes
 * taken before the work starts and given back once it is answered. Beyond the
 * bound callers wait, first come first served, so backpressure reaches the
 * peer (a reader that waits stops reading) instead of filling a queue.
 *
 * Used by the NBD serve loop, the IVBS session (bytes only) and the IVBS test
 * server alike.
 * - A request larger than `maxBytes` is admitted alone: it waits until no
 *   bytes are in flight and is charged `maxBytes`, so it neither deadlocks nor
 *   shares the bound. `release` applies the same clamp, so callers give back
 *   exactly the figures they asked for.
 * - Nobody overtakes a waiter: while someone waits, `tryAcquire` fails even if
 *   the smaller request would fit (a stream of small requests cannot starve a
 *   large one).
 * - The fast path allocates nothing: `tryAcquire` first, `acquire` (a promise
 *   and a waiter record) only when the bound is reached.
 * @module
 */

interface Waiter {
  requests: number;
  bytes: number;
  resolve: () => void;
  reject: (error: Error) => void;
}

export class Admission {
  readonly maxRequests: number;
  readonly maxBytes: number;
  #requests = 0;
  #bytes = 0;
  #waiters: Waiter[] = [];
  #head = 0;

  /** `maxRequests` may be Infinity (a bound on bytes only). */
  constructor(maxRequests: number, maxBytes: number) {
    if (!(maxRequests >= 1) || (maxRequests !== Infinity && !Number.isSafeInteger(maxRequests))) {
      throw new RangeError(`maxRequests must be a positive integer, got ${maxRequests}`);
    }
    if (!(maxBytes > 0)) throw new RangeError(`maxBytes must be positive, got ${maxBytes}`);
    this.maxRequests = maxRequests;
    this.maxBytes = maxBytes;
  }

  /** Requests admitted and not yet released. */
  get requests(): number {
    return this.#requests;
  }

  /** Bytes charged and not yet released (an oversize request counts as `maxBytes`). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Callers waiting for room. */
  get waiting(): number {
    return this.#waiters.length - this.#head;
  }

  /** Takes `requests` and `bytes` now if they fit and nobody waits ahead; else takes nothing. */
  tryAcquire(requests: number, bytes: number): boolean {
    if (this.#head < this.#waiters.length || !this.#fits(requests, bytes)) return false;
    this.#take(requests, bytes);
    return true;
  }

  /**
   * Takes `requests` and `bytes`, waiting in line for room. Rejects (having
   * taken nothing) if `rejectAll` is called first.
   */
  acquire(requests: number, bytes: number): Promise<void> {
    if (this.tryAcquire(requests, bytes)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#waiters.push({ requests, bytes, resolve, reject });
    });
  }

  /** Gives back what an acquire took (the same figures), and admits waiters that now fit. */
  release(requests: number, bytes: number): void {
    this.#requests -= requests;
    this.#bytes -= this.#charge(bytes);
    while (this.#head < this.#waiters.length) {
      const next = this.#waiters[this.#head];
      if (!this.#fits(next.requests, next.bytes)) break;
      this.#waiters[this.#head++] = undefined as unknown as Waiter; // let it be collected
      this.#take(next.requests, next.bytes);
      next.resolve();
    }
    if (this.#head === this.#waiters.length && this.#head > 0) {
      this.#waiters = [];
      this.#head = 0;
    }
  }

  /** Fails every waiter (the owner is closing); what is held stays held until released. */
  rejectAll(error: Error): void {
    const waiters = this.#waiters.slice(this.#head);
    this.#waiters = [];
    this.#head = 0;
    for (const waiter of waiters) waiter.reject(error);
  }

  #charge(bytes: number): number {
    return bytes < this.maxBytes ? bytes : this.maxBytes;
  }

  #fits(requests: number, bytes: number): boolean {
    if (this.#requests + requests > this.maxRequests) return false;
    const charge = this.#charge(bytes);
    return charge === 0 || this.#bytes + charge <= this.maxBytes;
  }

  #take(requests: number, bytes: number): void {
    this.#requests += requests;
    this.#bytes += this.#charge(bytes);
  }
}
