/**
 * The session's requests from acceptance until answered: every request by id
 * in acceptance order (which is deadline order, one I/O timeout for all), and
 * the subset parked while no connection is up, replayed in the order they were
 * parked. Memory is bounded by the session's byte budget, taken before a
 * request is added. Time is passed in (`now`, ms on one monotonic clock), as in
 * liveness.ts, so expiry is tested with explicit times.
 *
 * @example Requests expire oldest first
 * ```ts
 * import { RequestTable } from "./request_table.ts";
 * const table = new RequestTable();
 * const settled: string[] = [];
 * const track = (deadline: number) =>
 *   table.add("READ", 0, new Uint8Array(512), deadline, () => settled.push("ok"), (e) =>
 *     settled.push(e.message));
 * track(100);
 * track(200);
 * const expired = table.expired(150);
 * if (expired.length !== 1 || table.size !== 2) throw new Error("one request is due");
 * ```
 * @module
 */
import type { RequestOwner } from "./connection.ts";
import {
  encodeReadRequest,
  encodeWriteRequestHeader,
  MAX_IO_LENGTH,
  SESSION_ID_SIZE,
} from "./wire.ts";

export type Kind = "READ" | "WRITE";

/** One request of at most MAX_IO_LENGTH bytes, as the session tracks it until answered. */
export interface Chunk extends RequestOwner {
  id: number;
  kind: Kind;
  offset: number;
  length: number;
  /** Encoded once; each connection stamps its session id and a sequence into it. */
  packet: Uint8Array;
  /** READ: where the data lands (a view into the caller's result). */
  target: Uint8Array | undefined;
  /** WRITE: the caller's data, sent after `packet` (never copied into it). */
  body: Uint8Array | undefined;
  deadline: number;
  attempts: number;
  done: boolean;
  resolve: () => void;
  reject: (error: Error) => void;
}

const NO_SESSION_ID = new Uint8Array(SESSION_ID_SIZE);
/** The packet for one piece, and for a WRITE the caller's data sent after it. */
export function encodeChunk(
  kind: Kind,
  offset: number,
  buffer: Uint8Array,
): { packet: Uint8Array; body: Uint8Array | undefined } {
  const length = buffer.length;
  let packet: Uint8Array;
  let body: Uint8Array | undefined;
  if (kind === "READ") {
    packet = encodeReadRequest(NO_SESSION_ID, 0, offset, length);
  } else {
    // Header and offset only, with data_len covering the data sent after it: the data
    // goes from the caller's buffer (the frame writer copies a small one once, into its
    // gathered write, and sends a large one uncopied), never into a fresh packet.
    packet = encodeWriteRequestHeader(NO_SESSION_ID, 0, offset, length);
    body = buffer;
  }
  return { packet, body };
}

/**
 * Submits `buffer` (READ: the destination) in pieces of at most MAX_IO_LENGTH
 * and settles once every piece has (a failed piece must not return the buffer
 * while its siblings still fill it).
 */
export async function inPieces(
  offset: number,
  buffer: Uint8Array,
  submit: (offset: number, piece: Uint8Array) => Promise<void>,
): Promise<void> {
  if (buffer.length <= MAX_IO_LENGTH) return await submit(offset, buffer);
  const pieces: Promise<void>[] = [];
  for (let at = 0; at < buffer.length; at += MAX_IO_LENGTH) {
    pieces.push(
      submit(offset + at, buffer.subarray(at, Math.min(buffer.length, at + MAX_IO_LENGTH))),
    );
  }
  const failed = (await Promise.allSettled(pieces)).find((r) => r.status === "rejected");
  if (failed) throw failed.reason;
}

export class RequestTable {
  /** Every accepted chunk until answered, in acceptance order (= deadline order). */
  readonly #outstanding = new Map<number, Chunk>();
  /** Chunks waiting for a connection; replayed in order when one is up. */
  readonly #waiting = new Set<Chunk>();
  #nextId = 1;

  /** Requests accepted and not yet answered, parked ones included. */
  get size(): number {
    return this.#outstanding.size;
  }

  /** Requests parked until a connection is up. */
  get waitingCount(): number {
    return this.#waiting.size;
  }

  /** Accepts one piece (READ: `buffer` is where the data lands; WRITE: the data). */
  add(
    kind: Kind,
    offset: number,
    buffer: Uint8Array,
    deadline: number,
    resolve: () => void,
    reject: (error: Error) => void,
  ): Chunk {
    const { packet, body } = encodeChunk(kind, offset, buffer);
    const chunk: Chunk = {
      id: this.#nextId++,
      kind,
      offset,
      length: buffer.length,
      packet,
      target: kind === "READ" ? buffer : undefined,
      body,
      deadline,
      attempts: 0,
      done: false,
      resolve,
      reject,
    };
    this.#outstanding.set(chunk.id, chunk);
    return chunk;
  }

  /** Parks `chunk` until a connection is up. */
  park(chunk: Chunk): void {
    this.#waiting.add(chunk);
  }

  /** Every parked chunk in the order parked; none stays parked. */
  takeWaiting(): Chunk[] {
    const waiting = [...this.#waiting];
    this.#waiting.clear();
    return waiting;
  }

  /** Answers `chunk` once (later calls do nothing): resolves it, or rejects it with `error`. */
  finish(chunk: Chunk, error?: Error): void {
    if (chunk.done) return;
    chunk.done = true;
    this.#outstanding.delete(chunk.id);
    this.#waiting.delete(chunk);
    if (error) chunk.reject(error);
    else chunk.resolve();
  }

  /** Answers every request with `error`. */
  failAll(error: Error): void {
    for (const chunk of [...this.#outstanding.values()]) this.finish(chunk, error);
  }

  /** The deadline of the oldest request; undefined when none is outstanding. */
  nextDeadline(): number | undefined {
    const oldest = this.#outstanding.values().next();
    return oldest.done ? undefined : oldest.value.deadline;
  }

  /** Requests whose deadline is at or before `now`, oldest first (still outstanding). */
  expired(now: number): Chunk[] {
    const due: Chunk[] = [];
    // Acceptance order is deadline order: stop at the first one still in time.
    for (const chunk of this.#outstanding.values()) {
      if (chunk.deadline > now) break;
      due.push(chunk);
    }
    return due;
  }
}
