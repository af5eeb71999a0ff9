/**
 * Read/write throughput of a mount or export, sampled lazily: no timer, the
 * rate is refreshed when someone looks, over a window of at least a second.
 * @module
 */

export interface Throughput {
  readBytesPerSec: number;
  writeBytesPerSec: number;
}

/** Shortest window a rate is averaged over. */
export const RATE_WINDOW_MS = 1000;

export class RateSampler {
  readonly #now: () => number;
  #sample: { at: number; bytesRead: number; bytesWritten: number };
  #rate: Throughput = { readBytesPerSec: 0, writeBytesPerSec: 0 };

  constructor(now: () => number) {
    this.#now = now;
    this.#sample = { at: now(), bytesRead: 0, bytesWritten: 0 };
  }

  /** The rate over the last full window, given the byte counters as of now. */
  update(bytesRead: number, bytesWritten: number): Throughput {
    const now = this.#now();
    const elapsed = now - this.#sample.at;
    if (elapsed >= RATE_WINDOW_MS) {
      const perSec = (delta: number) => Math.max(0, Math.round((delta * 1000) / elapsed));
      this.#rate = {
        readBytesPerSec: perSec(bytesRead - this.#sample.bytesRead),
        writeBytesPerSec: perSec(bytesWritten - this.#sample.bytesWritten),
      };
      this.#sample = { at: now, bytesRead, bytesWritten };
    }
    return { ...this.#rate };
  }
}
