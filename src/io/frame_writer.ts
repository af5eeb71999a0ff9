/**
 * The one writer of a stream: frames (a header, optionally followed by
 * payload) leave in the order they are sent, one socket write at a time, so
 * nothing can come between a header and its payload. Used by the NBD serve
 * loop, the IVBS client connection and the IVBS test server alike.
 *
 * - Small frames queued together are copied into one buffer: one write for
 *   many replies (a syscall costs more than copying a few KiB).
 * - A large payload is never copied whole: its header and first
 *   `headDataBytes` join the gathered buffer and the rest is written from
 *   where it lies. A header written alone leaves as a segment of its own
 *   (noDelay) and costs the reader a wake-up just for the header.
 * - An urgent frame (a liveness probe) goes ahead of everything still queued,
 *   never into the middle of a batch already being written.
 * - Each frame learns its fate once: `written(true)` after its bytes were
 *   handed to the stream, `written(false)` when it was dropped (the owner no
 *   longer wants it, the writer was closed, or the stream failed). That is the
 *   backpressure hook: callers hold their admission until then, and await it
 *   as a promise where they want one.
 * - After a write fails the stream is dead: `error` says why, `onError` hears
 *   it once, and every queued and later frame is dropped.
 * @module
 */
import { type ByteStream, writeAll } from "./stream.ts";

/** One unit of output. */
export interface Frame {
  /** The header (or the whole of a small packet). */
  readonly head: Uint8Array;
  /** Payload written right after `head`, in order; large parts go out uncopied. */
  readonly body?: Uint8Array | readonly Uint8Array[];
  /**
   * Checked when the frame's turn comes: true drops it unsent. Lets an owner
   * that gave up on a request keep it off the wire.
   */
  readonly abandoned?: boolean;
  /** Called once: true when written, false when dropped. Must not throw. */
  written?(ok: boolean): void;
}

export interface FrameWriterOptions {
  /** Frames up to this size (header + payload) are copied whole into a gathered write; default 64 KiB. */
  copyBytes?: number;
  /** Bytes of a larger frame's payload copied in beside its header; default 64 KiB. */
  headDataBytes?: number;
  /** Bound on the bytes copied into one gathered write; default 256 KiB. */
  gatherBytes?: number;
  /** Called once when a write fails (the writer is dead from then on). */
  onError?: (error: unknown) => void;
  /** Called before every write to the stream and after each batch (keepalive clocks). */
  onActivity?: () => void;
  /** Consulted before each batch: a promise holds the writer until it settles (fault injection). */
  gate?: () => Promise<void> | undefined;
}

const DEFAULT_COPY_BYTES = 64 * 1024;
const DEFAULT_HEAD_DATA_BYTES = 64 * 1024;
const DEFAULT_GATHER_BYTES = 256 * 1024;

export class FrameWriter<F extends Frame = Frame> {
  readonly #stream: ByteStream;
  readonly #copyBytes: number;
  readonly #headDataBytes: number;
  readonly #gatherBytes: number;
  readonly #onError: ((error: unknown) => void) | undefined;
  readonly #onActivity: (() => void) | undefined;
  readonly #gate: (() => Promise<void> | undefined) | undefined;

  #queue: F[] = [];
  #head = 0;
  /** Frames of the batch being written (settled together once it is). */
  #batch: F[] = [];
  /** Reused for every gathered write: the next batch is built only after this one was written. */
  #gather: Uint8Array | null = null;
  #writes: Uint8Array[] = [];
  #running = false;
  #closed = false;
  #error: unknown = null;
  #idle: PromiseWithResolvers<void> | null = null;

  constructor(stream: ByteStream, options: FrameWriterOptions = {}) {
    this.#stream = stream;
    this.#copyBytes = options.copyBytes ?? DEFAULT_COPY_BYTES;
    this.#headDataBytes = options.headDataBytes ?? DEFAULT_HEAD_DATA_BYTES;
    this.#gatherBytes = Math.max(options.gatherBytes ?? DEFAULT_GATHER_BYTES, this.#copyBytes);
    this.#onError = options.onError;
    this.#onActivity = options.onActivity;
    this.#gate = options.gate;
  }

  /** Why the stream died, or null. */
  get error(): unknown {
    return this.#error;
  }

  /**
   * Queues `frame` behind everything sent before it (`urgent`: ahead of every
   * frame still queued). A closed or failed writer drops it at once.
   */
  send(frame: F, urgent = false): void {
    if (this.#closed) {
      frame.written?.(false);
      return;
    }
    if (urgent && this.#head < this.#queue.length) this.#queue.splice(this.#head, 0, frame);
    else this.#queue.push(frame);
    if (!this.#running) {
      // Set before the loop starts so a send from a `written` callback sees it.
      this.#running = true;
      this.#run();
    }
  }

  /** Resolves once nothing is queued or being written (everything written or dropped). */
  flushed(): Promise<void> {
    if (!this.#running) return Promise.resolve();
    this.#idle ??= Promise.withResolvers();
    return this.#idle.promise;
  }

  /**
   * Drops every queued frame and every later one; a write in progress
   * finishes (or fails) on its own. The stream is the caller's to close.
   */
  close(): void {
    this.#closed = true;
    this.#dropQueued();
  }

  async #run(): Promise<void> {
    try {
      while (!this.#closed) {
        const gate = this.#gate?.();
        if (gate !== undefined) {
          await gate;
          continue;
        }
        if (!this.#takeBatch()) break;
        try {
          for (const bytes of this.#writes) {
            this.#onActivity?.();
            // One promise per write in the common case (all of it taken at once).
            const n = await this.#stream.write(bytes);
            if (n < bytes.length) await writeAll(this.#stream, bytes.subarray(n));
          }
        } catch (error) {
          this.#fail(error);
        }
        this.#writes.length = 0;
        this.#onActivity?.();
        this.#settleBatch(this.#error === null);
      }
    } catch (error) {
      // A gate that rejected or a callback that threw: the writer cannot go on.
      this.#fail(error);
      this.#settleBatch(false);
    } finally {
      this.#running = false;
      const idle = this.#idle;
      this.#idle = null;
      idle?.resolve();
    }
  }

  #fail(error: unknown): void {
    if (this.#error !== null) return;
    this.#error = error;
    this.#closed = true;
    this.#onError?.(error);
    this.#dropQueued();
  }

  #dropQueued(): void {
    const dropped = this.#queue.slice(this.#head);
    this.#queue = [];
    this.#head = 0;
    for (const frame of dropped) frame.written?.(false);
  }

  #settleBatch(ok: boolean): void {
    const batch = this.#batch;
    for (let i = 0; i < batch.length; i++) batch[i].written?.(ok);
    batch.length = 0;
  }

  /**
   * Moves the next frames into `#batch` and their bytes into `#writes`: small
   * frames gathered into one buffer, ending with at most one large frame whose
   * header and first payload bytes join that buffer and whose remaining
   * payload follows uncopied. False when nothing is left to write.
   */
  #takeBatch(): boolean {
    const batch = this.#batch;
    let gathered = 0;
    while (this.#head < this.#queue.length) {
      const frame = this.#queue[this.#head];
      if (frame.abandoned) {
        this.#head++;
        frame.written?.(false);
        continue;
      }
      const size = frame.head.length + bodyLength(frame.body);
      const small = size <= this.#copyBytes;
      const copied = small ? size : Math.min(size, frame.head.length + this.#headDataBytes);
      if (batch.length > 0 && gathered + copied > this.#gatherBytes) break;
      this.#head++;
      batch.push(frame);
      gathered += copied;
      if (!small) break;
    }
    if (this.#head === this.#queue.length) {
      this.#queue = [];
      this.#head = 0;
    }
    if (batch.length === 0) return false;
    const only = batch[0];
    if (batch.length === 1 && bodyLength(only.body) === 0) {
      this.#writes.push(only.head); // nothing to join: no copy
      return true;
    }
    if (this.#gather === null || this.#gather.length < gathered) {
      this.#gather = new Uint8Array(Math.max(gathered, this.#gatherBytes + this.#headDataBytes));
    }
    const head = this.#gather.subarray(0, gathered);
    this.#writes.push(head);
    let at = 0;
    for (const frame of batch) {
      head.set(frame.head, at);
      at += frame.head.length;
      const body = frame.body;
      if (body === undefined) continue;
      if (body instanceof Uint8Array) at = this.#place(body, head, at);
      else for (const part of body) at = this.#place(part, head, at);
    }
    return true;
  }

  /** Copies what fits of `part` into the gathered buffer; the rest becomes its own write. */
  #place(part: Uint8Array, head: Uint8Array, at: number): number {
    const take = Math.min(part.length, head.length - at);
    if (take > 0) head.set(take === part.length ? part : part.subarray(0, take), at);
    if (take < part.length) this.#writes.push(take === 0 ? part : part.subarray(take));
    return at + take;
  }
}

function bodyLength(body: Uint8Array | readonly Uint8Array[] | undefined): number {
  if (body === undefined) return 0;
  if (body instanceof Uint8Array) return body.length;
  let total = 0;
  for (const part of body) total += part.length;
  return total;
}
