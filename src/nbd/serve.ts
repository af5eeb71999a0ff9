/**
 * The NBD transmission phase over one byte stream: a reader loop that admits a
 * bounded number of requests, dispatches each to the backend without waiting
 * for earlier ones, and one serialized writer that sends replies as they
 * complete. Used for the kernel's socketpair and for NBD exports after their
 * handshake.
 *
 * Decisions worth knowing (proto.md is the reference):
 * - Validation happens once, at the edge, as nbdkit does it (validate.ts),
 *   against the flags this backend advertises, and becomes an NBD error reply;
 *   the connection keeps serving. A rejected WRITE's payload is read and
 *   dropped so the stream stays in sync.
 * - A WRITE over 32 MiB is answered EINVAL and then the connection is closed:
 *   proto.md allows a hard disconnect for payloads over 2^25 bytes, the kernel
 *   never sends one, and skipping up to 4 GiB for a peer that already broke the
 *   contract only delays the inevitable.
 * - FLUSH: backends without `flush` make a write durable before it is answered
 *   (IVBS acknowledges stored data only), so they advertise neither SEND_FLUSH
 *   nor SEND_FUA: the kernel sees a device without a volatile cache and sends
 *   neither, and a client that does anyway gets EINVAL, as from nbdkit. For
 *   backends with `flush`, FLUSH and FUA call it.
 * - TRIM / WRITE_ZEROES are advertised and served only when the backend has them.
 * - WRITE payload buffers come from a pool and go back to it once the
 *   backend's write() has resolved: a backend must not keep `data` past that
 *   (MemoryBackend copies; IvbsSession is done with it once IVBS answered).
 *   With a backend that has `readInto`, READ replies use pooled buffers too.
 * - The caller owns the stream: this function never closes it. Close it when
 *   the returned promise settles (the kernel's NBD_DO_IT returns only then).
 * @module
 */
import { BackendError } from "../block/backend.ts";
import type { Backend } from "../block/backend.ts";
import { FrameReader } from "../io/frame_reader.ts";
import type { ByteStream } from "../io/stream.ts";
import { Admission } from "../io/admission.ts";
import { type Frame, FrameWriter } from "../io/frame_writer.ts";
import { type Logger, logger } from "../log.ts";
import { type IoKind, IoStats } from "./stats.ts";
import { transmissionFlags } from "./flags.ts";
import { type AdvertisedExport, validateRequest } from "./validate.ts";
import { BufferPool } from "../io/buffer_pool.ts";
import {
  Command,
  CommandFlag,
  commandName,
  decodeRequest,
  encodeReply,
  errorName,
  MAX_PAYLOAD,
  NbdError,
  nbdErrorFor,
  NbdProtocolError,
  type NbdRequest,
  REQUEST_SIZE,
} from "./wire.ts";

/** Requests in flight before the reader stops reading (the kernel's default queue depth). */
export const DEFAULT_MAX_IN_FLIGHT = 128;
/** READ/WRITE payload bytes in flight before the reader stops reading. */
export const DEFAULT_MAX_IN_FLIGHT_BYTES = 128 * 1024 * 1024;
/** Replies up to this size (header + data) are copied whole into a gathered write. */
const COPY_REPLY_BYTES = 256 * 1024;
/** Data bytes of a larger READ reply sent in the same write as its header. */
const HEAD_DATA_BYTES = 4 * 1024;
/** WRITE payload buffers kept for reuse between requests. */
const POOLED_BYTES = 32 * 1024 * 1024;

export interface ServeOptions {
  /** Bound on requests in flight; default 128. */
  maxInFlight?: number;
  /**
   * Bound on READ/WRITE payload bytes in flight; default 128 MiB. A single
   * request larger than the bound is still admitted, alone.
   */
  maxInFlightBytes?: number;
  stats?: IoStats;
  log?: Logger;
  /** Reader to use: it may hold bytes buffered by a handshake. */
  reader?: FrameReader;
  /**
   * Once aborted, a request header read from then on is dropped unanswered and
   * the loop ends as soon as what is in flight is answered (a daemon leaving
   * its device to the next one: the kernel resends what got no answer).
   */
  stop?: AbortSignal;
}

/** Why serveTransmission returned: NBD_CMD_DISC, EOF at a request boundary, or `stop`. */
export type ServeEnd = "disc" | "eof" | "stopped";

/**
 * Serves NBD requests from `stream` with `backend` until the peer sends
 * NBD_CMD_DISC or closes the stream at a request boundary; resolves once every
 * request in flight is answered. Rejects (after answering what it can) on a
 * protocol error such as bad magic, on EOF inside a request, or when a reply
 * cannot be written.
 */
export async function serveTransmission(
  stream: ByteStream,
  backend: Backend,
  options: ServeOptions = {},
): Promise<ServeEnd> {
  return await new Transmission(stream, backend, options).run();
}

class Transmission {
  readonly #backend: Backend;
  /** What the client was told (the handshake or NBD_SET_FLAGS used the same function). */
  readonly #advertised: AdvertisedExport;
  readonly #reader: FrameReader;
  readonly #log: Logger;
  readonly #stats: IoStats;
  readonly #admission: Admission;
  readonly #writer: FrameWriter<ReplyFrame>;
  /** Requests received whose reply is not written (or dropped) yet. */
  #inFlight = 0;
  /** Resolved when #inFlight drops to 0 while run() waits for it. */
  #allAnswered: PromiseWithResolvers<void> | null = null;
  /**
   * Client handles whose reply is not queued yet. A handle leaves this set when
   * its reply is queued, not when the write settles: a client may reuse it as
   * soon as it reads the reply, which can be before our writer resumes.
   */
  readonly #handles = new Set<bigint>();
  readonly #header = new Uint8Array(REQUEST_SIZE);
  readonly #pool = new BufferPool(POOLED_BYTES);
  readonly #stop: AbortSignal | undefined;

  constructor(stream: ByteStream, backend: Backend, options: ServeOptions) {
    this.#backend = backend;
    this.#advertised = { size: backend.size, flags: transmissionFlags(backend) };
    this.#reader = options.reader ?? new FrameReader(stream);
    this.#log = options.log ?? logger("nbd");
    this.#stats = options.stats ?? new IoStats();
    this.#admission = new Admission(
      positive(options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT, "maxInFlight"),
      positive(options.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES, "maxInFlightBytes"),
    );
    this.#writer = new FrameWriter(stream, {
      // Replies up to 256 KiB are copied whole beside their neighbours: one socket write. A
      // larger READ reply's header leaves with its first page of data (never alone) and the
      // rest goes from the backend's buffer. A 64 KiB head measured no better at 1 MiB qd8 than
      // a header alone (bench/one_hop.ts, noisy host), so the copy is kept to one page.
      copyBytes: COPY_REPLY_BYTES,
      gatherBytes: COPY_REPLY_BYTES,
      headDataBytes: HEAD_DATA_BYTES,
      onError: (error) => this.#log.warn("cannot write NBD replies; dropping the rest", { error }),
    });
    this.#stop = options.stop;
  }

  async run(): Promise<ServeEnd> {
    let failure: unknown = null;
    let end: ServeEnd = "eof";
    try {
      end = await this.#readLoop();
    } catch (error) {
      failure = error;
      this.#log.error("NBD request stream failed; answering what is in flight", {
        error,
        inFlight: this.#inFlight,
      });
    }
    // Every request already read gets its answer before we return.
    if (this.#inFlight > 0) {
      this.#allAnswered = Promise.withResolvers();
      await this.#allAnswered.promise;
    }
    if (failure !== null) throw failure;
    if (this.#writer.error !== null) throw this.#writer.error;
    return end;
  }

  async #readLoop(): Promise<ServeEnd> {
    for (;;) {
      // Take the slot before reading the header: when the backend is slow the
      // reader stops, the socket fills, and the kernel stops sending.
      if (!this.#admission.tryAcquire(1, 0)) await this.#admission.acquire(1, 0);
      let request: NbdRequest | null;
      try {
        const more = await this.#reader.readFull(this.#header, "NBD request header", true);
        request = more ? decodeRequest(this.#header) : null;
      } catch (error) {
        this.#admission.release(1, 0);
        throw error;
      }
      if (request === null) {
        this.#admission.release(1, 0);
        this.#log.debug("peer closed the NBD stream");
        return this.#stop?.aborted ? "stopped" : "eof";
      }
      if (request.type === Command.DISC) {
        this.#admission.release(1, 0);
        this.#log.debug("NBD disconnect requested", { inFlight: this.#inFlight });
        return "disc";
      }
      if (this.#stop?.aborted) {
        this.#admission.release(1, 0);
        return "stopped";
      }
      // Synchronous unless it has to wait (a WRITE payload, a full byte budget): a READ
      // costs no promise here.
      const accepting = this.#accept(request);
      if (accepting !== undefined) await accepting;
    }
  }

  /**
   * Validates, reads the payload, and dispatches; holds one request slot on
   * entry. Returns a promise only when it has to wait.
   */
  #accept(request: NbdRequest): Promise<void> | undefined {
    const started = performance.now();
    if (this.#handles.has(request.handle)) {
      this.#admission.release(1, 0);
      throw new NbdProtocolError(`duplicate NBD handle ${request.handle} while in flight`);
    }
    const rejected = this.#validate(request);
    if (request.type === Command.WRITE) return this.#acceptWrite(request, rejected, started);
    let reserved = 0;
    if (request.type === Command.READ && rejected === NbdError.OK) {
      reserved = request.length;
      if (!this.#admission.tryAcquire(0, reserved)) {
        return this.#admission.acquire(0, reserved).then(() =>
          this.#dispatch(request, rejected, null, reserved, started)
        );
      }
    }
    this.#dispatch(request, rejected, null, reserved, started);
    return undefined;
  }

  /** #accept for a WRITE: reads (or skips) its payload first. */
  async #acceptWrite(request: NbdRequest, rejected: number, started: number): Promise<void> {
    let payload: Uint8Array | null = null;
    let reserved = 0;
    if (request.length > MAX_PAYLOAD) {
      this.#dispatch(request, NbdError.EINVAL, null, 0, started);
      throw new NbdProtocolError(
        `NBD WRITE of ${request.length} bytes exceeds ${MAX_PAYLOAD}; closing`,
      );
    }
    if (rejected !== NbdError.OK) {
      await this.#reader.skip(request.length, "rejected NBD WRITE payload");
    } else {
      reserved = request.length;
      if (!this.#admission.tryAcquire(0, reserved)) await this.#admission.acquire(0, reserved);
      payload = this.#pool.take(request.length);
      try {
        await this.#reader.readFull(payload, "NBD WRITE payload");
      } catch (error) {
        this.#admission.release(1, reserved);
        throw error;
      }
    }
    this.#dispatch(request, rejected, payload, reserved, started);
  }

  /** The NBD error for a request we refuse without asking the backend, or OK. */
  #validate(request: NbdRequest): number {
    const refusal = validateRequest(request, this.#advertised);
    if (refusal === null) return NbdError.OK;
    this.#log.warn("NBD request rejected", {
      command: commandName(request.type),
      flags: request.flags,
      offset: request.offset,
      length: request.length,
      error: errorName(refusal.error),
      reason: refusal.reason,
    });
    return refusal.error;
  }

  #dispatch(
    request: NbdRequest,
    rejected: number,
    payload: Uint8Array | null,
    reserved: number,
    started: number,
  ): void {
    this.#stats.inFlight++;
    this.#inFlight++;
    this.#handles.add(request.handle);
    this.#answer(request, rejected, payload, reserved, started);
  }

  /**
   * Runs the request (unless rejected) and queues its reply; the reply's
   * `written` callback (#settle) ends it. Never rejects.
   */
  async #answer(
    request: NbdRequest,
    rejected: number,
    payload: Uint8Array | null,
    reserved: number,
    started: number,
  ): Promise<void> {
    let error = rejected;
    let data: Uint8Array | null = null;
    if (error === NbdError.OK) {
      try {
        data = await this.#execute(request, payload);
      } catch (cause) {
        error = this.#errorFor(request, cause);
      }
    }
    const kind = kindOf(request.type);
    this.#stats.observe(kind, request.length, performance.now() - started, error === NbdError.OK);
    this.#handles.delete(request.handle);
    const body = error === NbdError.OK && data !== null && data.length > 0 ? data : undefined;
    const pooled = data !== null && request.type === Command.READ && this.#backend.readInto
      ? data
      : null;
    this.#writer.send(new ReplyFrame(request.handle, error, body, reserved, pooled, this.#settle));
  }

  /** A reply written or dropped: its buffer, its admission and its in-flight count go back. */
  readonly #settle = (frame: ReplyFrame): void => {
    if (frame.pooled !== null) this.#pool.give(frame.pooled);
    this.#admission.release(1, frame.reserved);
    this.#stats.inFlight--;
    if (--this.#inFlight === 0) this.#allAnswered?.resolve();
  };

  async #execute(request: NbdRequest, payload: Uint8Array | null): Promise<Uint8Array | null> {
    const backend = this.#backend;
    const { offset, length } = request;
    // Validated: FUA and FLUSH arrive only when SEND_FUA / SEND_FLUSH said the backend has
    // flush, TRIM and WRITE_ZEROES only when advertised, and every count is above 0.
    const fua = (request.flags & CommandFlag.FUA) !== 0;
    switch (request.type) {
      case Command.READ: {
        if (backend.readInto) {
          const target = this.#pool.take(length);
          await backend.readInto(offset, target);
          return target; // back to the pool once the reply is written
        }
        const data = await backend.read(offset, length);
        if (data.length !== length) {
          throw new Error(`backend returned ${data.length} bytes for a ${length}-byte read`);
        }
        return data;
      }
      case Command.WRITE:
        await backend.write(offset, payload!);
        // Only after success: a failed write may still be queued somewhere.
        this.#pool.give(payload!);
        break;
      case Command.TRIM:
        await backend.trim!(offset, length);
        break;
      case Command.WRITE_ZEROES:
        await backend.writeZeroes!(offset, length);
        break;
      case Command.FLUSH:
        await backend.flush!();
        return null;
    }
    if (fua) await backend.flush!();
    return null;
  }

  /** Maps a backend failure to an NBD error, logging the real cause first. */
  #errorFor(request: NbdRequest, cause: unknown): number {
    const fields = {
      command: commandName(request.type),
      offset: request.offset,
      length: request.length,
    };
    if (cause instanceof BackendError) {
      const code = nbdErrorFor(cause.errno);
      this.#log.warn("NBD request failed", { ...fields, error: errorName(code), cause });
      return code;
    }
    this.#log.error("NBD request failed unexpectedly; answering EIO", {
      ...fields,
      cause,
      stack: cause instanceof Error ? cause.stack : undefined,
    });
    return NbdError.EIO;
  }
}

function kindOf(type: number): IoKind {
  switch (type) {
    case Command.READ:
      return "read";
    case Command.WRITE:
      return "write";
    case Command.FLUSH:
      return "flush";
    case Command.TRIM:
      return "trim";
    case Command.WRITE_ZEROES:
      return "zeroes";
    default:
      return "other";
  }
}

function positive(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`${name} must be a positive integer, got ${value}`);
  }
  return value;
}

/** A reply on its way: header, then (READ) the data; once written or dropped it settles. */
class ReplyFrame implements Frame {
  readonly head: Uint8Array;
  constructor(
    handle: bigint,
    error: number,
    readonly body: Uint8Array | undefined,
    /** Payload bytes admitted for the request. */
    readonly reserved: number,
    /** The READ buffer to give back to the pool once written. */
    readonly pooled: Uint8Array | null,
    readonly settle: (frame: ReplyFrame) => void,
  ) {
    this.head = encodeReply(handle, error);
  }

  written(): void {
    this.settle(this);
  }
}
