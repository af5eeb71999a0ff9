/**
 * Reads exact-size frames (a header, then its payload) from a byte stream with
 * one buffer for small reads and direct reads into the caller's buffer for large
 * payloads, so a 32 MiB payload is copied from the socket once.
 *
 * Read-ahead adapts: after a large payload the next buffered read asks for
 * only SMALL_READ_AHEAD bytes (a header and a little more), because what
 * follows is likely another large payload, and every byte of it that lands in
 * our buffer is copied a second time. Profiled at 1 MiB writes qd8 (bench/
 * results.md), a full 256 KiB read-ahead copied ~200 KiB per request here, in
 * the export and in the IVBS test server. A buffered read that comes back full
 * means small frames are queued: read-ahead grows back to the whole buffer.
 * @module
 */
import { type ByteStream, UnexpectedEofError } from "./stream.ts";

const DEFAULT_BUFFER_SIZE = 256 * 1024;
/** Read-ahead after a large payload: a header (NBD 28, IVBS 48 bytes) and some room. */
export const SMALL_READ_AHEAD = 4096;

export class FrameReader {
  readonly #stream: ByteStream;
  readonly #buffer: Uint8Array;
  #start = 0; // first unread byte in #buffer
  #end = 0; // one past the last buffered byte
  #received = 0;
  /** Bytes a buffered read asks for: the whole buffer, or SMALL_READ_AHEAD after a large payload. */
  #readAhead: number;

  constructor(stream: ByteStream, bufferSize = DEFAULT_BUFFER_SIZE) {
    this.#stream = stream;
    this.#buffer = new Uint8Array(bufferSize);
    this.#readAhead = bufferSize;
  }

  /** Bytes read from the stream so far (progress inside a long payload shows here). */
  get received(): number {
    return this.#received;
  }

  /** Bytes already received and not yet consumed. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /**
   * Fills `target` completely. Returns false on a clean EOF before the first
   * byte (a frame boundary when `atBoundary`); throws UnexpectedEofError on EOF
   * inside it.
   */
  async readFull(target: Uint8Array, what: string, atBoundary = false): Promise<boolean> {
    let filled = this.#takeBuffered(target, 0);
    while (filled < target.length) {
      const missing = target.length - filled;
      if (missing >= this.#buffer.length / 2) {
        // Large remainder: read straight into the caller's buffer.
        const n = await this.#stream.read(target.subarray(filled));
        if (n === null) return this.#eof(filled, target.length, what, atBoundary);
        this.#received += n;
        filled += n;
        this.#readAhead = Math.min(SMALL_READ_AHEAD, this.#buffer.length);
      } else {
        const n = await this.#fillBuffer();
        if (n === null) return this.#eof(filled, target.length, what, atBoundary);
        filled = this.#takeBuffered(target, filled);
      }
    }
    return true;
  }

  /** Reads and throws away `length` bytes (a rejected payload), keeping the stream in sync. */
  async skip(length: number, what: string): Promise<void> {
    let left = length;
    while (left > 0) {
      if (this.buffered === 0) {
        const n = await this.#fillBuffer();
        if (n === null) throw new UnexpectedEofError(what, length - left, length);
      }
      const take = Math.min(left, this.buffered);
      this.#start += take;
      left -= take;
    }
  }

  /** One read into the (empty) buffer, of the current read-ahead; null at EOF. */
  async #fillBuffer(): Promise<number | null> {
    const n = await this.#stream.read(this.#buffer.subarray(0, this.#readAhead));
    if (n === null) return null;
    this.#received += n;
    this.#start = 0;
    this.#end = n;
    // A full read: more is queued, and it was not a large payload. Read ahead fully again.
    if (n === this.#readAhead) this.#readAhead = this.#buffer.length;
    return n;
  }

  #takeBuffered(target: Uint8Array, filled: number): number {
    const take = Math.min(this.buffered, target.length - filled);
    if (take > 0) {
      target.set(this.#buffer.subarray(this.#start, this.#start + take), filled);
      this.#start += take;
    }
    return filled + take;
  }

  #eof(filled: number, wanted: number, what: string, atBoundary: boolean): false {
    if (filled === 0 && atBoundary) return false;
    throw new UnexpectedEofError(what, filled, wanted);
  }
}
