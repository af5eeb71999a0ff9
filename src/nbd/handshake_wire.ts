/**
 * The byte layouts of the NBD fixed newstyle handshake (proto.md "Fixed
 * newstyle negotiation", "Option types"): magics, flag / option / reply / info
 * tables, the limits we hold a client to, and the option data codecs. No
 * sockets and no state: handshake.ts drives the negotiation.
 * @module
 */
import { codeNames } from "../code_names.ts";

/** 'NBDMAGIC': first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': the newstyle magic, sent by the server once and by the client before each option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Magic at the start of every fixed-newstyle option reply. */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;

/** Handshake flags (16 bits, server → client). */
export const HandshakeFlag = {
  /** Server speaks fixed newstyle (structured option replies). */
  FIXED_NEWSTYLE: 1 << 0,
  /** Server can omit the 124 zero bytes after NBD_OPT_EXPORT_NAME. */
  NO_ZEROES: 1 << 1,
} as const;

/** Client flags (32 bits, client → server); any other bit closes the connection. */
export const ClientFlag = {
  FIXED_NEWSTYLE: 1 << 0,
  NO_ZEROES: 1 << 1,
} as const;
export const KNOWN_CLIENT_FLAGS = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;

/** Option codes (client → server), with their names for logs. */
export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;
/** Name of an option code for logs ("GO", or "OPT_42" when unknown). */
export const optionName: (option: number) => string = codeNames(Opt, (option) => `OPT_${option}`);

/** Option reply types; errors have bit 31 set. */
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x8000_0001,
  ERR_POLICY: 0x8000_0002,
  ERR_INVALID: 0x8000_0003,
  ERR_PLATFORM: 0x8000_0004,
  ERR_TLS_REQD: 0x8000_0005,
  ERR_UNKNOWN: 0x8000_0006,
  ERR_SHUTDOWN: 0x8000_0007,
  ERR_BLOCK_SIZE_REQD: 0x8000_0008,
  ERR_TOO_BIG: 0x8000_0009,
} as const;

/** Information types inside NBD_REP_INFO (also what a client may request in GO/INFO). */
export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Size constraints we advertise: any byte alignment, 4 KiB preferred, 32 MiB per request. */
export const BLOCK_SIZE = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 } as const;

/** Longest string the protocol allows (export names, messages). */
export const MAX_STRING = 4096;
/** Option data read into memory: fits a GO with a 4096-byte name and a few info requests. */
export const MAX_OPTION_DATA = 8 * 1024;
/** Longer options (none we parse) are read and dropped up to this size; beyond it we hang up. */
export const MAX_SKIPPED_OPTION = 1024 * 1024;

export const GREETING_SIZE = 18; // NBDMAGIC u64 + IHAVEOPT u64 + handshake flags u16
export const OPTION_HEADER_SIZE = 16; // IHAVEOPT u64 + option u32 + length u32
export const REPLY_HEADER_SIZE = 20; // magic u64 + option u32 + type u32 + length u32
export const EXPORT_NAME_REPLY_SIZE = 10; // size u64 + transmission flags u16
export const EXPORT_NAME_ZEROES = 124;

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });

/** A protocol string: valid UTF-8, no NUL, at most MAX_STRING bytes; null otherwise. */
export function decodeString(bytes: Uint8Array): string | null {
  if (bytes.length > MAX_STRING || bytes.includes(0)) return null;
  try {
    return strictDecoder.decode(bytes);
  } catch {
    return null;
  }
}

/** NBD_OPT_INFO / NBD_OPT_GO data, decoded; a string says why it is malformed. */
export function decodeInfoRequest(
  data: Uint8Array,
): { name: string; infos: Set<number> } | string {
  // name length u32, name, info request count u16, count × info type u16
  if (data.length < 6) return `option data is ${data.length} bytes, need at least 6`;
  const view = new DataView(data.buffer, data.byteOffset, data.length);
  const nameLength = view.getUint32(0);
  if (nameLength > data.length - 6) {
    return `name length ${nameLength} exceeds the ${data.length}-byte option`;
  }
  const name = decodeString(data.subarray(4, 4 + nameLength));
  if (name === null) return "export name is not a valid NBD string";
  const count = view.getUint16(4 + nameLength);
  const expected = 6 + nameLength + 2 * count;
  if (data.length !== expected) {
    return `${count} info requests need ${expected} bytes of option data, got ${data.length}`;
  }
  const infos = new Set<number>();
  for (let i = 0; i < count; i++) infos.add(view.getUint16(6 + nameLength + 2 * i));
  return { name, infos };
}

export function encodeInfoExport(size: number, flags: number): Uint8Array {
  const out = new Uint8Array(12); // type u16 + size u64 + flags u16
  const view = new DataView(out.buffer);
  view.setUint16(0, Info.EXPORT);
  view.setBigUint64(2, BigInt(size));
  view.setUint16(10, flags);
  return out;
}

export function encodeInfoBlockSize(): Uint8Array {
  const out = new Uint8Array(14); // type u16 + minimum u32 + preferred u32 + maximum u32
  const view = new DataView(out.buffer);
  view.setUint16(0, Info.BLOCK_SIZE);
  view.setUint32(2, BLOCK_SIZE.minimum);
  view.setUint32(6, BLOCK_SIZE.preferred);
  view.setUint32(10, BLOCK_SIZE.maximum);
  return out;
}

export function encodeInfoString(type: number, text: string): Uint8Array {
  const bytes = encoder.encode(text);
  const out = new Uint8Array(2 + bytes.length);
  new DataView(out.buffer).setUint16(0, type);
  out.set(bytes, 2);
  return out;
}
