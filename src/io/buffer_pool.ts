/**
 * Reuses large payload buffers. A fresh ArrayBuffer of 1 MiB costs far more
 * than the copy into it: allocating and filling one measured 0.97 ms against
 * 0.023 ms for filling an existing one on the host, and 4.0 ms against 0.36 ms
 * in the NBD VM (fresh pages fault in one by one). Small ones are pooled too:
 * a fresh 4 KiB ArrayBuffer (malloc, zero-fill, a GC-tracked backing store)
 * showed up at 1.3 µs per qd1 request in the export's CPU profile, plus the
 * garbage collections it brings (bench/results/profile_qd1.md). Bounded: at most
 * `maxPooledBytes` wait in the pool; the rest is left to the GC. Used by the
 * NBD serve loop and the IVBS test server alike, so it lives with the byte I/O.
 * @module
 */

/** Buffers smaller than a page are not pooled (headers and odd sizes: on-heap, cheap). */
const MIN_POOLED = 4 * 1024;

export class BufferPool {
  readonly #free = new Map<number, ArrayBuffer[]>();
  #pooledBytes = 0;

  constructor(readonly maxPooledBytes: number) {}

  /** Bytes currently waiting in the pool. */
  get pooledBytes(): number {
    return this.#pooledBytes;
  }

  /** A buffer of exactly `length` bytes with unspecified content. */
  take(length: number): Uint8Array {
    if (length < MIN_POOLED) return new Uint8Array(length);
    const size = sizeClass(length);
    const buffer = this.#free.get(size)?.pop();
    if (buffer === undefined) return new Uint8Array(new ArrayBuffer(size), 0, length);
    this.#pooledBytes -= size;
    return new Uint8Array(buffer, 0, length);
  }

  /** Returns a buffer from take() once nothing uses it any more. */
  give(bytes: Uint8Array): void {
    const buffer = bytes.buffer;
    if (!(buffer instanceof ArrayBuffer)) return;
    const size = buffer.byteLength;
    if (size < MIN_POOLED || size !== sizeClass(size)) return;
    if (this.#pooledBytes + size > this.maxPooledBytes) return;
    let list = this.#free.get(size);
    if (list === undefined) this.#free.set(size, list = []);
    list.push(buffer);
    this.#pooledBytes += size;
  }
}

/** The power of two at or above `length`. */
function sizeClass(length: number): number {
  return 2 ** Math.ceil(Math.log2(length));
}
