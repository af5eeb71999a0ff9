/**
 * NBD transmission phase, simple replies only: the 28-byte request, the
 * 16-byte reply, the command / flag / error tables and the errno mapping.
 * Layouts from the NBD protocol (NetworkBlockDevice/nbd doc/proto.md) and
 * linux/nbd.h. Integers are big-endian. No sockets here.
 *
 * @example Round trip of a READ request
 * ```ts
 * import { Command, decodeRequest, encodeRequest, REQUEST_SIZE } from "./wire.ts";
 * const bytes = encodeRequest({ type: Command.READ, handle: 7n, offset: 4096, length: 512 });
 * const request = decodeRequest(bytes);
 * if (bytes.length !== REQUEST_SIZE || request.length !== 512) throw new Error("bad");
 * ```
 * @module
 */
import type { Errno } from "../block/backend.ts";
import { codeNames } from "../code_names.ts";

/** Magic at the start of every request. */
export const REQUEST_MAGIC = 0x25609513;
/** Magic at the start of every simple reply. */
export const REPLY_MAGIC = 0x67446698;
/** Bytes in a request header (a WRITE's data follows it). */
export const REQUEST_SIZE = 28;
/** Bytes in a simple reply header (a successful READ's data follows it). */
export const REPLY_SIZE = 16;
/**
 * Largest READ/WRITE payload we accept: 32 MiB. The kernel never sends more
 * (its max_hw_sectors for nbd is 32 MiB) and proto.md says no payload up to
 * 2^25 bytes may be treated as abuse.
 */
export const MAX_PAYLOAD = 32 * 1024 * 1024;

// Request field offsets.
const REQ_MAGIC = 0; // u32 REQUEST_MAGIC
const REQ_FLAGS = 4; // u16 command flags (FUA …)
const REQ_TYPE = 6; // u16 command
const REQ_HANDLE = 8; // u64 opaque, echoed in the reply ("cookie" in newer texts)
const REQ_OFFSET = 16; // u64 byte offset
const REQ_LENGTH = 24; // u32 byte length

// Reply field offsets.
const REP_MAGIC = 0; // u32 REPLY_MAGIC
const REP_ERROR = 4; // u32 NBD error code, 0 = success
const REP_HANDLE = 8; // u64 the request's handle

/** Commands (request `type`), by name. */
export const Command = {
  READ: 0,
  WRITE: 1,
  /** Disconnect: no reply; the server finishes what is in flight and closes. */
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;
export type CommandCode = typeof Command[keyof typeof Command];

/** Command flags (request `flags`), by name. */
export const CommandFlag = {
  /** Force unit access: the write is durable when answered. */
  FUA: 1 << 0,
  /** WRITE_ZEROES: do not punch a hole. */
  NO_HOLE: 1 << 1,
  /** READ: do not fragment (structured replies only). */
  DF: 1 << 2,
  /** BLOCK_STATUS: one extent only. */
  REQ_ONE: 1 << 3,
  /** WRITE_ZEROES: fail fast with ENOTSUP instead of writing slowly. */
  FAST_ZERO: 1 << 4,
  /** Extended headers: the request carries a payload length. */
  PAYLOAD_LEN: 1 << 5,
} as const;

/** Transmission flags: what the server advertises (NBD_FLAG_* in linux/nbd.h). */
export const TransmissionFlag = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
  BLOCK_STAT_PAYLOAD: 1 << 12,
} as const;

/** NBD error codes (reply `error`); the values are Linux errno numbers. */
export const NbdError = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdErrorCode = typeof NbdError[keyof typeof NbdError];

/** Name of a command for logs ("READ", or "command 99" when unknown). */
export const commandName: (type: number) => string = codeNames(
  Command,
  (type) => `command ${type}`,
);

/** Name of an NBD error code for logs ("EPERM", or "error 99" when unknown). */
export const errorName: (code: number) => string = codeNames(NbdError, (code) => `error ${code}`);

/** Names of the set transmission flags, for logs: "HAS_FLAGS|READ_ONLY". */
export function transmissionFlagNames(flags: number): string {
  return Object.entries(TransmissionFlag)
    .filter(([, bit]) => (flags & bit) !== 0)
    .map(([name]) => name)
    .join("|");
}

/**
 * The NBD error code for a data-path errno. Every `Errno` has an NBD code of
 * the same name; anything else (a bug elsewhere) is EIO.
 */
export function nbdErrorFor(errno: string): NbdErrorCode {
  const code = (NbdError as Record<string, number>)[errno];
  return code === undefined || code === NbdError.OK ? NbdError.EIO : code as NbdErrorCode;
}

/** Every NBD error code is named after its errno; unknown codes read as EINVAL (proto.md). */
const errnoOfCode = codeNames(NbdError, () => "EINVAL");

/** The errno for an NBD error code (a client's view). */
export function errnoFor(code: number): Errno | null {
  return code === NbdError.OK ? null : errnoOfCode(code) as Errno;
}

/** Bytes that are not an NBD request. The connection cannot continue. */
export class NbdProtocolError extends Error {
  readonly code = "NBD_PROTOCOL";
  constructor(message: string) {
    super(message);
    this.name = "NbdProtocolError";
  }
}

/** A decoded request header. */
export interface NbdRequest {
  /** Command flags (`CommandFlag` bits). */
  flags: number;
  /** Command code; may be one we do not know (the serve loop answers EINVAL). */
  type: number;
  /** Opaque 64-bit handle, echoed in the reply; a bigint so it can key a Map. */
  handle: bigint;
  /**
   * Byte offset. A u64 over 2^53 loses precision as a number, but is then far
   * beyond any export size, so the range check still rejects it.
   */
  offset: number;
  /** Byte length (u32). */
  length: number;
}

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * A view of a request or reply header: `bytes` hold at least `size` of them
 * and start with `magic`; else NbdProtocolError naming `what`.
 */
function headerView(bytes: Uint8Array, what: string, size: number, magic: number): DataView {
  if (bytes.length < size) {
    throw new NbdProtocolError(`short NBD ${what}: ${bytes.length} of ${size} bytes`);
  }
  const dv = view(bytes);
  const found = dv.getUint32(0); // REQ_MAGIC, REP_MAGIC
  if (found !== magic) {
    throw new NbdProtocolError(`bad NBD ${what} magic 0x${found.toString(16).padStart(8, "0")}`);
  }
  return dv;
}

/** Decodes a 28-byte request header; throws NbdProtocolError on short input or bad magic. */
export function decodeRequest(bytes: Uint8Array): NbdRequest {
  const dv = headerView(bytes, "request", REQUEST_SIZE, REQUEST_MAGIC);
  return {
    flags: dv.getUint16(REQ_FLAGS),
    type: dv.getUint16(REQ_TYPE),
    handle: dv.getBigUint64(REQ_HANDLE),
    offset: Number(dv.getBigUint64(REQ_OFFSET)),
    length: dv.getUint32(REQ_LENGTH),
  };
}

/** Fields of a request to encode (the client side: tests and tools). */
export interface RequestFields {
  type: number;
  handle: bigint;
  offset?: number;
  length?: number;
  flags?: number;
}

/** Writes a request header into `target` at `at` (default: a new 28-byte buffer). */
export function encodeRequest(
  fields: RequestFields,
  target: Uint8Array = new Uint8Array(REQUEST_SIZE),
  at = 0,
): Uint8Array {
  const length = fields.length ?? 0;
  const offset = fields.offset ?? 0;
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new NbdProtocolError(`request offset ${offset} is not a non-negative integer`);
  }
  if (!Number.isInteger(length) || length < 0 || length > 0xffffffff) {
    throw new NbdProtocolError(`request length ${length} does not fit in a u32`);
  }
  const dv = view(target);
  dv.setUint32(at + REQ_MAGIC, REQUEST_MAGIC);
  dv.setUint16(at + REQ_FLAGS, fields.flags ?? 0);
  dv.setUint16(at + REQ_TYPE, fields.type);
  dv.setBigUint64(at + REQ_HANDLE, BigInt.asUintN(64, fields.handle));
  dv.setBigUint64(at + REQ_OFFSET, BigInt(offset));
  dv.setUint32(at + REQ_LENGTH, length);
  return target;
}

/** A decoded simple reply header. */
export interface NbdReply {
  error: number;
  handle: bigint;
}

/** Writes a simple reply header into `target` at `at` (default: a new 16-byte buffer). */
export function encodeReply(
  handle: bigint,
  error: number,
  target: Uint8Array = new Uint8Array(REPLY_SIZE),
  at = 0,
): Uint8Array {
  const dv = view(target);
  dv.setUint32(at + REP_MAGIC, REPLY_MAGIC);
  dv.setUint32(at + REP_ERROR, error);
  dv.setBigUint64(at + REP_HANDLE, handle);
  return target;
}

/** Decodes a 16-byte simple reply header; throws NbdProtocolError on short input or bad magic. */
export function decodeReply(bytes: Uint8Array): NbdReply {
  const dv = headerView(bytes, "reply", REPLY_SIZE, REPLY_MAGIC);
  return { error: dv.getUint32(REP_ERROR), handle: dv.getBigUint64(REP_HANDLE) };
}

/** Whether a request of this type carries `length` bytes of payload after its header. */
export function hasRequestPayload(type: number): boolean {
  return type === Command.WRITE;
}
