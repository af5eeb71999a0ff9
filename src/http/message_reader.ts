/**
 * Reads HTTP/1.1 requests from one connection with bounded memory. The buffer
 * moves unread bytes to the front before it grows, and grows only up to the
 * head limit; every received byte counts against a limit of its kind (head,
 * body data, chunk framing with its extensions, trailers). Search positions
 * are kept relative to the unread bytes, so a pipelined head that straddles
 * the buffer's end is found whatever the alignment.
 * @module
 */
import {
  checkTrailers,
  CR,
  HttpError,
  LF,
  parseChunkSizeLine,
  parseRequestHead,
  type RequestHead,
} from "./message.ts";

export interface MessageLimits {
  /** Request line and headers, and separately the trailers. */
  maxHeadBytes: number;
  /** Body data. */
  maxBodyBytes: number;
  /** Chunked framing of one body: size lines, extensions, CRLFs. */
  maxChunkFramingBytes: number;
  /** One chunk-size line with its extensions. */
  maxChunkLineBytes: number;
}

/** The client closed the connection (or we cut it) in the middle of a request. */
export class ConnectionGone extends Error {
  constructor() {
    super("connection closed");
    this.name = "ConnectionGone";
  }
}

const INITIAL_BUFFER = 4096;

export class MessageReader {
  readonly #source: { read(target: Uint8Array): Promise<number | null> };
  readonly #limits: MessageLimits;
  /** Largest the buffer may grow: the longest token it must hold whole, plus a read's room. */
  readonly #maxBuffer: number;
  #buffer = new Uint8Array(INITIAL_BUFFER);
  #start = 0;
  #end = 0;
  #eof = false;
  /** A wait for data in flight (a stream's watcher and the next request share it). */
  #waiting: Promise<boolean> | null = null;

  constructor(
    source: { read(target: Uint8Array): Promise<number | null> },
    limits: MessageLimits,
  ) {
    this.#source = source;
    this.#limits = limits;
    this.#maxBuffer = Math.max(limits.maxHeadBytes, limits.maxChunkLineBytes) + INITIAL_BUFFER;
  }

  /** Bytes received and not yet consumed (a pipelined request, for one). */
  get buffered(): number {
    return this.#end - this.#start;
  }

  /** Allocated buffer size (for tests of the memory bound). */
  get capacity(): number {
    return this.#buffer.length;
  }

  /** Reads more bytes; false at EOF. Compacts before growing, never past the bound. */
  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#end === this.#buffer.length) {
      if (this.#start > 0) {
        this.#buffer.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      } else if (this.#buffer.length < this.#maxBuffer) {
        const grown = new Uint8Array(Math.min(this.#buffer.length * 2, this.#maxBuffer));
        grown.set(this.#buffer.subarray(0, this.#end));
        this.#buffer = grown;
      } else {
        // The callers' limits stop before this; a full buffer is a line too long.
        throw new HttpError(431, "request head too large");
      }
    }
    const n = await this.#source.read(this.#buffer.subarray(this.#end));
    if (n === null) {
      this.#eof = true;
      return false;
    }
    this.#end += n;
    return true;
  }

  /** Waits for a request's first byte; false on EOF before one. */
  waitForData(): Promise<boolean> {
    if (this.buffered > 0) return Promise.resolve(true);
    this.#waiting ??= this.#fill().finally(() => this.#waiting = null);
    return this.#waiting;
  }

  /**
   * Reads one request head. CRLFs before the request line are skipped (RFC
   * 9112 §2.2) but counted; a bare LF is refused as soon as it is seen.
   */
  async readHead(): Promise<RequestHead> {
    const max = this.#limits.maxHeadBytes;
    let skipped = 0;
    let scanned = 0; // relative to #start: bytes known to hold no head end
    for (;;) {
      while (this.buffered >= 2 && scanned === 0 && this.#byte(0) === CR && this.#byte(1) === LF) {
        this.#start += 2;
        skipped += 2;
        if (skipped > max) throw new HttpError(431, "request head too large");
      }
      for (; scanned < this.buffered; scanned++) {
        if (this.#byte(scanned) !== LF) continue;
        if (scanned === 0 || this.#byte(scanned - 1) !== CR) throw new HttpError(400, "bare LF");
        if (scanned >= 3 && this.#byte(scanned - 2) === LF && this.#byte(scanned - 3) === CR) {
          const headLength = scanned - 3;
          if (headLength + skipped > max) throw new HttpError(431, "request head too large");
          const head = this.#buffer.subarray(this.#start, this.#start + headLength);
          const parsed = parseRequestHead(head);
          this.#start += scanned + 1;
          return parsed;
        }
      }
      if (this.buffered + skipped > max) throw new HttpError(431, "request head too large");
      if (!await this.#fill()) throw new ConnectionGone();
    }
  }

  #byte(offset: number): number {
    return this.#buffer[this.#start + offset];
  }

  /** Reads exactly `length` body bytes. */
  async readExactly(length: number): Promise<Uint8Array<ArrayBuffer>> {
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      if (this.buffered === 0 && !await this.#fill()) throw new ConnectionGone();
      const n = Math.min(length - filled, this.buffered);
      out.set(this.#buffer.subarray(this.#start, this.#start + n), filled);
      this.#start += n;
      filled += n;
    }
    return out;
  }

  /** Reads a line ending in CRLF (returned without it); more than `max` bytes is an error. */
  async #readLine(max: number, tooLong: HttpError): Promise<Uint8Array> {
    let scanned = 0;
    for (;;) {
      for (; scanned < this.buffered; scanned++) {
        if (this.#byte(scanned) !== LF) continue;
        if (scanned === 0 || this.#byte(scanned - 1) !== CR) throw new HttpError(400, "bare LF");
        if (scanned - 1 > max) throw tooLong;
        const line = this.#buffer.slice(this.#start, this.#start + scanned - 1);
        this.#start += scanned + 1;
        return line;
      }
      if (this.buffered > max + 1) throw tooLong;
      if (!await this.#fill()) throw new ConnectionGone();
    }
  }

  /**
   * Reads a chunked body whole (API bodies are small), checking every line:
   * data counts against maxBodyBytes, size lines, extensions and CRLFs against
   * maxChunkFramingBytes, and the trailer section against maxHeadBytes.
   */
  async readChunked(): Promise<Uint8Array<ArrayBuffer>> {
    const { maxBodyBytes, maxChunkFramingBytes, maxChunkLineBytes, maxHeadBytes } = this.#limits;
    const framingError = new HttpError(413, `chunk framing exceeds ${maxChunkFramingBytes} bytes`);
    const parts: Uint8Array[] = [];
    let total = 0;
    let framing = 0;
    const count = (bytes: number) => {
      framing += bytes;
      if (framing > maxChunkFramingBytes) throw framingError;
    };
    for (;;) {
      const line = await this.#readLine(
        Math.min(maxChunkLineBytes, maxChunkFramingBytes - framing),
        framing + maxChunkLineBytes > maxChunkFramingBytes
          ? framingError
          : new HttpError(400, "chunk line too long"),
      );
      count(line.length + 2);
      const size = parseChunkSizeLine(line);
      if (size === 0) break;
      total += size;
      if (total > maxBodyBytes) {
        throw new HttpError(413, `request body exceeds ${maxBodyBytes} bytes`);
      }
      parts.push(await this.readExactly(size));
      const end = await this.#readLine(0, new HttpError(400, "chunk data longer than its size"));
      count(end.length + 2);
    }
    await this.#readTrailers(maxHeadBytes);
    const body = new Uint8Array(total);
    let at = 0;
    for (const part of parts) {
      body.set(part, at);
      at += part.length;
    }
    return body;
  }

  /** Reads the trailer section up to its empty line; checked, counted, dropped. */
  async #readTrailers(max: number): Promise<void> {
    const tooLarge = new HttpError(431, "trailer section too large");
    let used = 0;
    const lines: Uint8Array[] = [];
    for (;;) {
      const line = await this.#readLine(max - used, tooLarge);
      used += line.length + 2;
      if (used > max) throw tooLarge;
      if (line.length === 0) break;
      lines.push(line);
    }
    const joined = new Uint8Array(lines.reduce((n, l) => n + l.length + 2, 0));
    let at = 0;
    for (const line of lines) {
      joined.set(line, at);
      joined.set([CR, LF], at + line.length);
      at += line.length + 2;
    }
    checkTrailers(joined.subarray(0, Math.max(0, at - 2)));
  }
}
