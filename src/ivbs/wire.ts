/**
 * IVBS wire protocol, version 1: every byte layout of `shared/ivbs-protocol.md`
 * lives in this module, so a difference found against a production IVBS is a
 * one-file change. Integers are big-endian. No sockets here.
 *
 * @example Round trip of a READ request
 * ```ts
 * import { decodeHeader, encodeReadRequest, HEADER_SIZE, Op } from "./wire.ts";
 * const packet = encodeReadRequest(new Uint8Array(32), 7, 4096, 512);
 * const header = decodeHeader(packet);
 * if (header.op !== Op.READ || header.dataLen !== 16) throw new Error("bad");
 * if (packet.length !== HEADER_SIZE + 16) throw new Error("bad");
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { getString, getU64, IvbsProtocolError, putString, putU64, view } from "./wire_fields.ts";
import { codeNames } from "../code_names.ts";

export { IvbsProtocolError };

/** Bytes in the fixed header that precedes every packet. */
export const HEADER_SIZE = 48;
/** Bytes of the opaque session id at the start of the header. */
export const SESSION_ID_SIZE = 32;
/** Largest READ/WRITE data length in one packet: 32 MiB. */
export const MAX_IO_LENGTH = 32 * 1024 * 1024;
/** Largest `data_len` a receiver accepts: 32 MiB of data + 16. */
export const MAX_DATA_LEN = MAX_IO_LENGTH + 16;
/** Default TCP port of an IVBS proxy. */
export const DEFAULT_PORT = 11417;
/** Idle timeout assumed when a GREETING carries no payload. */
export const DEFAULT_IDLE_TIMEOUT_S = 30;

// Header field offsets.
const OFF_OP = 32; // u32 operation code
const OFF_STATUS = 36; // u32 0 in requests, result code in replies
const OFF_DATA_LEN = 40; // u32 payload bytes after the header
const OFF_SEQUENCE = 44; // u32 client-chosen, echoed in the reply

// Payload sizes.
export const GREETING_SIZE = 68; // proxy_name[64] + idle_timeout_s u32
const PROXY_NAME_SIZE = 64;
export const LOGIN_SIZE = 160; // username[32] + password_hash[128]
const USERNAME_SIZE = 32;
const PASSWORD_HASH_SIZE = 128;
export const IMAGE_NAME_SIZE = 256;
export const ATTACH_REQUEST_SIZE = IMAGE_NAME_SIZE;
export const ATTACH_REPLY_SIZE = IMAGE_NAME_SIZE + 8 + 1; // name + size u64 + flags u8
const ATTACH_REPLY_SIZE_NO_FLAGS = IMAGE_NAME_SIZE + 8;
export const READ_REQUEST_SIZE = 16; // offset u64 + length u64
export const WRITE_PREFIX_SIZE = 8; // offset u64, then the data
const PROXY_ENTRY_SIZE = 66; // host[64] + port u16
const PROXY_HOST_SIZE = 64;
/** Bound on LIST_PROXIES entries so a hostile count cannot make us loop long. */
export const MAX_PROXY_ENTRIES = 1024;

/** Operation codes, by name. */
export const Op = {
  GREETING: 1,
  KEEPALIVE: 2,
  LOGIN: 100,
  ATTACH_TO_IMAGE: 200,
  LIST_PROXIES: 211,
  READ: 300,
  WRITE: 301,
} as const;
export type OpCode = typeof Op[keyof typeof Op];

/** Status codes, by name. */
export const Status = {
  OK: 0,
  NOT_FOUND: 1,
  ALREADY_EXISTS: 2,
  NOT_LOGGEDIN: 3,
  PERMISSION_DENIED: 4,
  READ_ONLY: 5,
  NOT_READY: 6,
  TEMPORARY_ERROR: 10,
  PERMANENT_ERROR: 11,
  USE_ANOTHER_PROXY: 12,
  INVALID_REQUEST: 13,
  EXPIRED: 14,
} as const;
export type StatusCode = typeof Status[keyof typeof Status];

/** Name of an op code for logs ("READ", or "op 999" when unknown). */
export const opName: (op: number) => string = codeNames(Op, (op) => `op ${op}`);

/** Name of a status code for logs ("EXPIRED", or "status 99" when unknown). */
export const statusName: (status: number) => string = codeNames(
  Status,
  (status) => `status ${status}`,
);

const OP_CODES = new Set<number>(Object.values(Op));

export function isKnownOp(op: number): op is OpCode {
  return OP_CODES.has(op);
}

/** The decoded 48-byte header. */
export interface PacketHeader {
  /** 32 opaque bytes; a view into the decoded buffer, copy it to keep it. */
  sessionId: Uint8Array;
  op: OpCode;
  status: number;
  dataLen: number;
  sequence: number;
}

/** Fields written into a header. */
export interface HeaderFields {
  sessionId: Uint8Array;
  op: OpCode;
  status?: number;
  dataLen: number;
  sequence: number;
}

/** Writes a header into `target` at `offset` (default: a new 48-byte buffer). */
export function encodeHeader(
  fields: HeaderFields,
  target: Uint8Array = new Uint8Array(HEADER_SIZE),
  offset = 0,
): Uint8Array {
  if (fields.sessionId.length !== SESSION_ID_SIZE) {
    throw new IvbsProtocolError(`session id must be 32 bytes, got ${fields.sessionId.length}`);
  }
  if (fields.dataLen > MAX_DATA_LEN) {
    throw new IvbsProtocolError(`data_len ${fields.dataLen} exceeds ${MAX_DATA_LEN}`);
  }
  target.set(fields.sessionId, offset);
  const dv = view(target);
  dv.setUint32(offset + OFF_OP, fields.op);
  dv.setUint32(offset + OFF_STATUS, fields.status ?? Status.OK);
  dv.setUint32(offset + OFF_DATA_LEN, fields.dataLen);
  dv.setUint32(offset + OFF_SEQUENCE, fields.sequence >>> 0);
  return target;
}

/**
 * Stamps `sessionId` and `sequence` into an encoded packet in place and returns
 * its op: the per-request path of a client connection, which needs neither a
 * decoded header object nor the rest rewritten. Throws like decodeHeader on a
 * short packet or an unknown op.
 */
export function stampHeader(packet: Uint8Array, sessionId: Uint8Array, sequence: number): OpCode {
  if (packet.length < HEADER_SIZE) {
    throw new IvbsProtocolError(`short header: ${packet.length} of ${HEADER_SIZE} bytes`);
  }
  if (sessionId.length !== SESSION_ID_SIZE) {
    throw new IvbsProtocolError(`session id must be 32 bytes, got ${sessionId.length}`);
  }
  const dv = view(packet);
  const op = dv.getUint32(OFF_OP);
  if (!isKnownOp(op)) throw new IvbsProtocolError(`unknown op ${op}`);
  packet.set(sessionId, 0);
  dv.setUint32(OFF_SEQUENCE, sequence >>> 0);
  return op;
}

/**
 * Decodes and validates a header: rejects short input, unknown ops and a
 * `data_len` over the protocol limit, so the caller never allocates without bound.
 */
export function decodeHeader(bytes: Uint8Array): PacketHeader {
  if (bytes.length < HEADER_SIZE) {
    throw new IvbsProtocolError(`short header: ${bytes.length} of ${HEADER_SIZE} bytes`);
  }
  const dv = view(bytes);
  const op = dv.getUint32(OFF_OP);
  const dataLen = dv.getUint32(OFF_DATA_LEN);
  if (!isKnownOp(op)) throw new IvbsProtocolError(`unknown op ${op}`);
  if (dataLen > MAX_DATA_LEN) {
    throw new IvbsProtocolError(`data_len ${dataLen} of ${opName(op)} exceeds ${MAX_DATA_LEN}`);
  }
  return {
    sessionId: bytes.subarray(0, SESSION_ID_SIZE),
    op,
    status: dv.getUint32(OFF_STATUS),
    dataLen,
    sequence: dv.getUint32(OFF_SEQUENCE),
  };
}

/** A header plus its payload, allocated once. */
function packet(fields: Omit<HeaderFields, "dataLen">, payloadSize: number): Uint8Array {
  const bytes = new Uint8Array(HEADER_SIZE + payloadSize);
  encodeHeader({ ...fields, dataLen: payloadSize }, bytes);
  return bytes;
}

function expectSize(what: string, payload: Uint8Array, size: number): void {
  if (payload.length !== size) {
    throw new IvbsProtocolError(`${what} payload must be ${size} bytes, got ${payload.length}`);
  }
}

// ---- GREETING ----

export interface Greeting {
  proxyName: string;
  idleTimeoutS: number;
}

export function encodeGreeting(sessionId: Uint8Array, greeting: Greeting): Uint8Array {
  const bytes = packet({ sessionId, op: Op.GREETING, sequence: 0 }, GREETING_SIZE);
  putString(bytes, HEADER_SIZE, PROXY_NAME_SIZE, greeting.proxyName, "proxy name");
  view(bytes).setUint32(HEADER_SIZE + PROXY_NAME_SIZE, greeting.idleTimeoutS);
  return bytes;
}

/** Accepts the 68-byte payload, or an empty one (unnamed proxy, 30 s). */
export function decodeGreeting(payload: Uint8Array): Greeting {
  if (payload.length === 0) return { proxyName: "", idleTimeoutS: DEFAULT_IDLE_TIMEOUT_S };
  expectSize("GREETING", payload, GREETING_SIZE);
  return {
    proxyName: getString(payload, 0, PROXY_NAME_SIZE),
    idleTimeoutS: view(payload).getUint32(PROXY_NAME_SIZE),
  };
}

// ---- LOGIN ----

/** The password hash IVBS expects: lowercase hex SHA-512 of the password. */
export function hashPassword(password: string): string {
  return createHash("sha512").update(password, "utf8").digest("hex");
}

export interface Login {
  username: string;
  passwordHash: string;
}

export function encodeLogin(sessionId: Uint8Array, sequence: number, login: Login): Uint8Array {
  if (!/^[0-9a-f]{128}$/.test(login.passwordHash)) {
    throw new IvbsProtocolError("password hash must be 128 lowercase hex characters");
  }
  const bytes = packet({ sessionId, op: Op.LOGIN, sequence }, LOGIN_SIZE);
  putString(bytes, HEADER_SIZE, USERNAME_SIZE, login.username, "username");
  putString(bytes, HEADER_SIZE + USERNAME_SIZE, PASSWORD_HASH_SIZE, login.passwordHash, "hash");
  return bytes;
}

export function decodeLogin(payload: Uint8Array): Login {
  expectSize("LOGIN", payload, LOGIN_SIZE);
  return {
    username: getString(payload, 0, USERNAME_SIZE),
    passwordHash: getString(payload, USERNAME_SIZE, PASSWORD_HASH_SIZE),
  };
}

// ---- ATTACH_TO_IMAGE ----

export function encodeAttachRequest(
  sessionId: Uint8Array,
  sequence: number,
  imageName: string,
): Uint8Array {
  const bytes = packet({ sessionId, op: Op.ATTACH_TO_IMAGE, sequence }, ATTACH_REQUEST_SIZE);
  putString(bytes, HEADER_SIZE, IMAGE_NAME_SIZE, imageName, "image name");
  return bytes;
}

export function decodeAttachRequest(payload: Uint8Array): string {
  expectSize("ATTACH_TO_IMAGE request", payload, ATTACH_REQUEST_SIZE);
  return getString(payload, 0, IMAGE_NAME_SIZE);
}

export interface AttachReply {
  imageName: string;
  size: number;
  readOnly: boolean;
}

/** flags bit 0: the image is read-only for this session. */
const ATTACH_FLAG_READ_ONLY = 0x01;

export function encodeAttachReply(
  sessionId: Uint8Array,
  sequence: number,
  reply: AttachReply,
): Uint8Array {
  const bytes = packet({ sessionId, op: Op.ATTACH_TO_IMAGE, sequence }, ATTACH_REPLY_SIZE);
  putString(bytes, HEADER_SIZE, IMAGE_NAME_SIZE, reply.imageName, "image name");
  const dv = view(bytes);
  putU64(dv, HEADER_SIZE + IMAGE_NAME_SIZE, reply.size, "image size");
  dv.setUint8(HEADER_SIZE + IMAGE_NAME_SIZE + 8, reply.readOnly ? ATTACH_FLAG_READ_ONLY : 0);
  return bytes;
}

/** Accepts 265 bytes, or 264 (no flags byte: read-write). */
export function decodeAttachReply(payload: Uint8Array): AttachReply {
  if (payload.length !== ATTACH_REPLY_SIZE && payload.length !== ATTACH_REPLY_SIZE_NO_FLAGS) {
    throw new IvbsProtocolError(
      `ATTACH_TO_IMAGE reply payload must be 264 or 265 bytes, got ${payload.length}`,
    );
  }
  const dv = view(payload);
  const flags = payload.length === ATTACH_REPLY_SIZE ? dv.getUint8(IMAGE_NAME_SIZE + 8) : 0;
  return {
    imageName: getString(payload, 0, IMAGE_NAME_SIZE),
    size: getU64(dv, IMAGE_NAME_SIZE, "image size"),
    readOnly: (flags & ATTACH_FLAG_READ_ONLY) !== 0,
  };
}

// ---- READ / WRITE ----

export interface IoRange {
  offset: number;
  length: number;
}

function checkIoLength(length: number) {
  if (!Number.isSafeInteger(length) || length < 0 || length > MAX_IO_LENGTH) {
    throw new IvbsProtocolError(`I/O length ${length} is outside 0..${MAX_IO_LENGTH}`);
  }
}

/**
 * The start of a READ or WRITE packet, in a buffer with `room` payload bytes:
 * the header (data_len `dataLen`), the offset and, for a READ, the length.
 */
function ioRequest(
  op: typeof Op.READ | typeof Op.WRITE,
  sessionId: Uint8Array,
  sequence: number,
  offset: number,
  length: number,
  room: number,
  dataLen: number,
): Uint8Array {
  checkIoLength(length);
  const bytes = new Uint8Array(HEADER_SIZE + room);
  encodeHeader({ sessionId, op, sequence, dataLen }, bytes);
  const dv = view(bytes);
  putU64(dv, HEADER_SIZE, offset, "offset");
  if (op === Op.READ) putU64(dv, HEADER_SIZE + 8, length, "length");
  return bytes;
}

export function encodeReadRequest(
  sessionId: Uint8Array,
  sequence: number,
  offset: number,
  length: number,
): Uint8Array {
  const size = READ_REQUEST_SIZE;
  return ioRequest(Op.READ, sessionId, sequence, offset, length, size, size);
}

export function decodeReadRequest(payload: Uint8Array): IoRange {
  expectSize("READ request", payload, READ_REQUEST_SIZE);
  const dv = view(payload);
  const range = { offset: getU64(dv, 0, "offset"), length: getU64(dv, 8, "length") };
  checkIoLength(range.length);
  return range;
}

/**
 * A WRITE packet: header, offset and data in one buffer (one copy of the data),
 * so it leaves in a single socket write.
 */
export function encodeWriteRequest(
  sessionId: Uint8Array,
  sequence: number,
  offset: number,
  data: Uint8Array,
): Uint8Array {
  const size = WRITE_PREFIX_SIZE + data.length;
  const bytes = ioRequest(Op.WRITE, sessionId, sequence, offset, data.length, size, size);
  bytes.set(data, HEADER_SIZE + WRITE_PREFIX_SIZE);
  return bytes;
}

/**
 * A WRITE packet without its data: header and offset, with data_len counting
 * the `length` data bytes the sender writes right after it from where they lie.
 */
export function encodeWriteRequestHeader(
  sessionId: Uint8Array,
  sequence: number,
  offset: number,
  length: number,
): Uint8Array {
  const dataLen = WRITE_PREFIX_SIZE + length;
  return ioRequest(Op.WRITE, sessionId, sequence, offset, length, WRITE_PREFIX_SIZE, dataLen);
}

/** Splits a WRITE payload into its offset and a view of its data (no copy). */
export function decodeWriteRequest(payload: Uint8Array): { offset: number; data: Uint8Array } {
  if (payload.length < WRITE_PREFIX_SIZE) {
    throw new IvbsProtocolError(`WRITE payload must be at least 8 bytes, got ${payload.length}`);
  }
  const data = payload.subarray(WRITE_PREFIX_SIZE);
  checkIoLength(data.length);
  return { offset: getU64(view(payload), 0, "offset"), data };
}

// ---- replies and packets without payload ----

/** A header-only packet: KEEPALIVE, LIST_PROXIES request, LOGIN reply, error replies. */
export function encodeEmpty(
  sessionId: Uint8Array,
  op: OpCode,
  sequence: number,
  status: number = Status.OK,
): Uint8Array {
  return packet({ sessionId, op, sequence, status }, 0);
}

/**
 * The 48-byte header of a successful READ reply carrying `length` bytes, for a
 * sender that writes the data from where it already lies (no copy into a packet).
 */
export function encodeReadReplyHeader(
  sessionId: Uint8Array,
  sequence: number,
  length: number,
  target: Uint8Array = new Uint8Array(HEADER_SIZE),
): Uint8Array {
  checkIoLength(length);
  return encodeHeader({ sessionId, op: Op.READ, sequence, dataLen: length }, target);
}

/** A READ reply with its data in one buffer. */
export function encodeReadReply(
  sessionId: Uint8Array,
  sequence: number,
  data: Uint8Array,
): Uint8Array {
  checkIoLength(data.length);
  const bytes = packet({ sessionId, op: Op.READ, sequence }, data.length);
  bytes.set(data, HEADER_SIZE);
  return bytes;
}

// ---- LIST_PROXIES ----

export interface ProxyAddress {
  host: string;
  port: number;
}

export function encodeProxyList(
  sessionId: Uint8Array,
  sequence: number,
  proxies: readonly ProxyAddress[],
): Uint8Array {
  if (proxies.length > MAX_PROXY_ENTRIES) {
    throw new IvbsProtocolError(`${proxies.length} proxies exceed ${MAX_PROXY_ENTRIES}`);
  }
  const bytes = packet(
    { sessionId, op: Op.LIST_PROXIES, sequence },
    4 + proxies.length * PROXY_ENTRY_SIZE,
  );
  const dv = view(bytes);
  dv.setUint32(HEADER_SIZE, proxies.length);
  proxies.forEach((proxy, i) => {
    const at = HEADER_SIZE + 4 + i * PROXY_ENTRY_SIZE;
    putString(bytes, at, PROXY_HOST_SIZE, proxy.host, "proxy host");
    dv.setUint16(at + PROXY_HOST_SIZE, proxy.port);
  });
  return bytes;
}

export function decodeProxyList(payload: Uint8Array): ProxyAddress[] {
  if (payload.length < 4) {
    throw new IvbsProtocolError(`LIST_PROXIES payload must be at least 4 bytes`);
  }
  const dv = view(payload);
  const count = dv.getUint32(0);
  if (count > MAX_PROXY_ENTRIES) {
    throw new IvbsProtocolError(`LIST_PROXIES count ${count} exceeds ${MAX_PROXY_ENTRIES}`);
  }
  expectSize("LIST_PROXIES", payload, 4 + count * PROXY_ENTRY_SIZE);
  const proxies: ProxyAddress[] = [];
  for (let i = 0; i < count; i++) {
    const at = 4 + i * PROXY_ENTRY_SIZE;
    proxies.push({ host: getString(payload, at, PROXY_HOST_SIZE), port: dv.getUint16(at + 64) });
  }
  return proxies;
}
