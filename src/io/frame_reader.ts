/**
 * Reads exact-size frames (a header, then its payload) from a byte stream with
 * one buffer for small reads and direct reads into the caller's buffer for large
 * payloads, so a 32 MiB payload is copied from the socket once.
 * @module
 */
import { type ByteStream, UnexpectedEofError } from "./stream.ts";

const DEFAULT_BUFFER_SIZE = 256 * 1024;

export class FrameReader {
  readonly #stream: ByteStream;
  readonly #buffer: Uint8Array;
  #start = 0; // first unread byte in #buffer
  #end = 0; // one past the last buffered byte
  #received = 0;

  constructor(stream: ByteStream, bufferSize = DEFAULT_BUFFER_SIZE) {
    this.#stream = stream;
    this.#buffer = new Uint8Array(bufferSize);
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
      } else {
        const n = await this.#stream.read(this.#buffer);
        if (n === null) return this.#eof(filled, target.length, what, atBoundary);
        this.#received += n;
        this.#start = 0;
        this.#end = n;
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
        const n = await this.#stream.read(this.#buffer);
        if (n === null) throw new UnexpectedEofError(what, length - left, length);
        this.#received += n;
        this.#start = 0;
        this.#end = n;
      }
      const take = Math.min(left, this.buffered);
      this.#start += take;
      left -= take;
    }
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
