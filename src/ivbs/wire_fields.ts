/**
 * The field codecs under the IVBS packet layouts in wire.ts: NUL-padded
 * fixed-width strings, u64 as a safe integer, and the error every decoder
 * throws. Kept apart so wire.ts holds the layouts themselves.
 * @module
 */

/** Thrown for bytes that are not a valid IVBS packet. The connection must close. */
export class IvbsProtocolError extends Error {
  readonly code = "IVBS_PROTOCOL";
  constructor(message: string) {
    super(message);
    this.name = "IvbsProtocolError";
  }
}

/** A big-endian view of exactly `bytes`. */
export function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: false });

/** Writes `text` NUL-padded into `width` bytes; throws if it does not fit. */
export function putString(
  target: Uint8Array,
  offset: number,
  width: number,
  text: string,
  what: string,
) {
  const bytes = encoder.encode(text);
  if (bytes.length > width) {
    throw new IvbsProtocolError(`${what} is ${bytes.length} bytes, longer than ${width}`);
  }
  if (bytes.includes(0)) throw new IvbsProtocolError(`${what} contains a NUL byte`);
  target.set(bytes, offset);
  target.fill(0, offset + bytes.length, offset + width);
}

/** Reads a NUL-padded string of `width` bytes. */
export function getString(source: Uint8Array, offset: number, width: number): string {
  const field = source.subarray(offset, offset + width);
  const end = field.indexOf(0);
  return decoder.decode(end === -1 ? field : field.subarray(0, end));
}

export function getU64(dv: DataView, offset: number, what: string): number {
  const value = dv.getBigUint64(offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new IvbsProtocolError(`${what} ${value} is out of range`);
  }
  return Number(value);
}

export function putU64(dv: DataView, offset: number, value: number, what: string) {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new IvbsProtocolError(`${what} ${value} is not a non-negative integer`);
  }
  dv.setBigUint64(offset, BigInt(value));
}
