/**
 * Byte layouts of the kernel's generic-netlink NBD interface: netlink and
 * genetlink headers, attributes, the controller's GETFAMILY, and the "nbd"
 * family's CONNECT / DISCONNECT / RECONFIGURE / STATUS messages. LINK_DEAD
 * (the kernel's multicast when a socket dies) is not used: a dead kernel socket
 * is one whose peer we closed or lost, and our serve loop sees that end first.
 * No sockets here (ffi/netlink.ts moves the bytes, src/nbd/netlink.ts talks).
 *
 * Facts from the kernel (include/uapi/linux/netlink.h, genetlink.h,
 * nbd-netlink.h, drivers/block/nbd.c), pinned by tests/nbd_netlink_wire_test.ts:
 * - Every field is in HOST byte order (little-endian on x86-64 and aarch64,
 *   the only hosts ivbsnetd runs on). Messages and attributes are padded to 4 bytes.
 * - nbd_attr_policy types SIZE_BYTES, BLOCK_SIZE_BYTES, TIMEOUT, SERVER_FLAGS,
 *   CLIENT_FLAGS and DEAD_CONN_TIMEOUT as NLA_U64: an attribute of 4 bytes is
 *   rejected (EINVAL), so they are always written as 8 bytes. INDEX and
 *   SOCK_FD are NLA_U32, BACKEND_IDENTIFIER an NLA_STRING (NUL-terminated here).
 * - SOCKETS nests SOCK_ITEM nests SOCK_FD; the kernel ignores an item without
 *   an fd and refuses anything but SOCK_ITEM at the middle level.
 * - CONNECT's reply is a CONNECT message carrying NBD_ATTR_INDEX (u32) of the
 *   device the kernel chose; STATUS replies DEVICE_LIST nests DEVICE_ITEM nests
 *   DEVICE_INDEX (u32) and DEVICE_CONNECTED (u8).
 * - An error (or, with NLM_F_ACK, success) comes back as NLMSG_ERROR whose
 *   payload starts with a negative errno (0 = ACK), then the request's header.
 * @module
 */

/** struct nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32. */
export const NLMSG_HEADER_BYTES = 16;
/** struct genlmsghdr: cmd u8, version u8, reserved u16. */
export const GENL_HEADER_BYTES = 4;
/** struct nlattr: len u16, type u16. */
export const NLA_HEADER_BYTES = 4;

/** Netlink message types below NLMSG_MIN_TYPE (0x10) are the core's own. */
export const NlmsgType = {
  NOOP: 0x1,
  ERROR: 0x2,
  DONE: 0x3,
  OVERRUN: 0x4,
  /** GENL_ID_CTRL = NLMSG_MIN_TYPE: the genetlink controller. */
  GENL_CTRL: 0x10,
} as const;

export const NlmsgFlag = {
  REQUEST: 0x1,
  MULTI: 0x2,
  ACK: 0x4,
} as const;

/** Nested-attribute flag bits a sender may set on `nla_type`. */
const NLA_F_NESTED = 0x8000;
const NLA_F_NET_BYTEORDER = 0x4000;
const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

/** The genetlink controller's commands and attributes (linux/genetlink.h). */
export const CtrlCmd = { NEWFAMILY: 1, GETFAMILY: 3 } as const;
export const CtrlAttr = {
  FAMILY_ID: 1, // u16
  FAMILY_NAME: 2, // string
} as const;
const CTRL_VERSION = 2;

/** linux/nbd-netlink.h. */
export const NBD_GENL_FAMILY = "nbd";
export const NBD_GENL_VERSION = 1;

export const NbdCmd = {
  CONNECT: 1,
  DISCONNECT: 2,
  RECONFIGURE: 3,
  STATUS: 5,
} as const;

export const NbdAttr = {
  INDEX: 1, // u32
  SIZE_BYTES: 2, // u64
  BLOCK_SIZE_BYTES: 3, // u64
  TIMEOUT: 4, // u64, seconds
  SERVER_FLAGS: 5, // u64, NBD transmission flags
  CLIENT_FLAGS: 6, // u64, NBD_CFLAG_*
  SOCKETS: 7, // nested SOCK_ITEM
  DEAD_CONN_TIMEOUT: 8, // u64, seconds
  DEVICE_LIST: 9, // nested DEVICE_ITEM (STATUS reply)
  BACKEND_IDENTIFIER: 10, // string, shown in /sys/block/nbdN/backend
} as const;

const NBD_SOCK_ITEM = 1;
const NBD_SOCK_FD = 1; // u32
const NBD_DEVICE_ITEM = 1;
const NBD_DEVICE_INDEX = 1; // u32
const NBD_DEVICE_CONNECTED = 2; // u8

/** A netlink message that cannot be parsed. */
export class NetlinkWireError extends Error {
  readonly code = "NETLINK_WIRE";
  constructor(message: string) {
    super(message);
    this.name = "NetlinkWireError";
  }
}

const align4 = (n: number) => (n + 3) & ~3;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One attribute to encode; nested ones carry their children. */
export type Attr =
  | { type: number; u8: number }
  | { type: number; u16: number }
  | { type: number; u32: number }
  | { type: number; u64: number | bigint }
  | { type: number; string: string }
  | { type: number; nested: Attr[] };

function payloadBytes(attr: Attr): number {
  if ("u8" in attr) return 1;
  if ("u16" in attr) return 2;
  if ("u32" in attr) return 4;
  if ("u64" in attr) return 8;
  if ("string" in attr) return encoder.encode(attr.string).length + 1;
  return attr.nested.reduce((sum, child) => sum + attrBytes(child), 0);
}

/** Bytes an attribute occupies, padding included. */
function attrBytes(attr: Attr): number {
  return align4(NLA_HEADER_BYTES + payloadBytes(attr));
}

function writeAttr(view: DataView, bytes: Uint8Array, at: number, attr: Attr): number {
  const length = NLA_HEADER_BYTES + payloadBytes(attr);
  view.setUint16(at, length, true);
  view.setUint16(at + 2, attr.type, true);
  const body = at + NLA_HEADER_BYTES;
  if ("u8" in attr) view.setUint8(body, attr.u8);
  else if ("u16" in attr) view.setUint16(body, attr.u16, true);
  else if ("u32" in attr) view.setUint32(body, attr.u32, true);
  else if ("u64" in attr) view.setBigUint64(body, BigInt(attr.u64), true);
  else if ("string" in attr) bytes.set(encoder.encode(attr.string), body); // NUL: zero-filled
  else {
    let child = body;
    for (const a of attr.nested) child = writeAttr(view, bytes, child, a);
  }
  return at + align4(length);
}

export interface GenlRequest {
  /** Family id (nlmsg_type): GENL_CTRL or the id GETFAMILY returned. */
  family: number;
  cmd: number;
  version: number;
  seq: number;
  attrs: Attr[];
  /** Ask for an NLMSG_ERROR(0) acknowledgement on success; default true. */
  ack?: boolean;
}

/** One genetlink request message, allocated exactly once. */
export function encodeGenlRequest(request: GenlRequest): Uint8Array {
  const attrsLength = request.attrs.reduce((sum, a) => sum + attrBytes(a), 0);
  const total = NLMSG_HEADER_BYTES + GENL_HEADER_BYTES + attrsLength;
  const bytes = new Uint8Array(total);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, total, true);
  view.setUint16(4, request.family, true);
  view.setUint16(6, NlmsgFlag.REQUEST | (request.ack === false ? 0 : NlmsgFlag.ACK), true);
  view.setUint32(8, request.seq, true);
  view.setUint32(12, 0, true); // port id: 0 lets the kernel fill in ours
  view.setUint8(16, request.cmd);
  view.setUint8(17, request.version);
  let at = NLMSG_HEADER_BYTES + GENL_HEADER_BYTES;
  for (const attr of request.attrs) at = writeAttr(view, bytes, at, attr);
  return bytes;
}

/** A parsed attribute: its type (flags masked off) and payload (a view, not a copy). */
export interface ParsedAttr {
  type: number;
  nested: boolean;
  data: Uint8Array;
}

/** Splits a run of attributes; throws on a length that runs past the end. */
export function parseAttrs(bytes: Uint8Array): ParsedAttr[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const attrs: ParsedAttr[] = [];
  let at = 0;
  while (at + NLA_HEADER_BYTES <= bytes.length) {
    const length = view.getUint16(at, true);
    const rawType = view.getUint16(at + 2, true);
    if (length < NLA_HEADER_BYTES || at + length > bytes.length) {
      throw new NetlinkWireError(
        `attribute ${rawType & NLA_TYPE_MASK} at byte ${at} claims ${length} bytes, ${
          bytes.length - at
        } left`,
      );
    }
    attrs.push({
      type: rawType & NLA_TYPE_MASK,
      nested: (rawType & NLA_F_NESTED) !== 0,
      data: bytes.subarray(at + NLA_HEADER_BYTES, at + length),
    });
    at += align4(length);
  }
  return attrs;
}

function attrView(attr: ParsedAttr, size: number, what: string): DataView {
  if (attr.data.length < size) {
    throw new NetlinkWireError(`${what} has ${attr.data.length} bytes, expected ${size}`);
  }
  return new DataView(attr.data.buffer, attr.data.byteOffset, attr.data.byteLength);
}

export const attrU8 = (a: ParsedAttr, what = "u8 attribute") => attrView(a, 1, what).getUint8(0);
export const attrU16 = (a: ParsedAttr, what = "u16 attribute") =>
  attrView(a, 2, what).getUint16(0, true);
export const attrU32 = (a: ParsedAttr, what = "u32 attribute") =>
  attrView(a, 4, what).getUint32(0, true);
export function attrString(a: ParsedAttr): string {
  const nul = a.data.indexOf(0);
  return decoder.decode(nul === -1 ? a.data : a.data.subarray(0, nul));
}

/** A received netlink message. */
export type NetlinkMessage =
  | { kind: "error"; seq: number; errno: number }
  | { kind: "ack"; seq: number }
  | { kind: "done"; seq: number }
  | { kind: "genl"; type: number; flags: number; seq: number; cmd: number; attrs: ParsedAttr[] }
  | { kind: "other"; type: number; seq: number };

/** Splits one recv(2) buffer (it may hold several messages) and parses each. */
export function decodeNetlinkMessages(bytes: Uint8Array): NetlinkMessage[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const messages: NetlinkMessage[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < NLMSG_HEADER_BYTES) {
      throw new NetlinkWireError(`truncated netlink header: ${bytes.length - at} bytes`);
    }
    const length = view.getUint32(at, true);
    if (length < NLMSG_HEADER_BYTES || at + length > bytes.length) {
      throw new NetlinkWireError(
        `netlink message claims ${length} bytes, ${bytes.length - at} left`,
      );
    }
    const type = view.getUint16(at + 4, true);
    const flags = view.getUint16(at + 6, true);
    const seq = view.getUint32(at + 8, true);
    const body = bytes.subarray(at + NLMSG_HEADER_BYTES, at + length);
    messages.push(decodeOne(type, flags, seq, body));
    at += align4(length);
  }
  return messages;
}

function decodeOne(type: number, flags: number, seq: number, body: Uint8Array): NetlinkMessage {
  if (type === NlmsgType.ERROR) {
    if (body.length < 4) throw new NetlinkWireError(`NLMSG_ERROR of ${body.length} bytes`);
    const error = new DataView(body.buffer, body.byteOffset, 4).getInt32(0, true);
    return error === 0 ? { kind: "ack", seq } : { kind: "error", seq, errno: -error };
  }
  if (type === NlmsgType.DONE) return { kind: "done", seq };
  if (type < NlmsgType.GENL_CTRL) return { kind: "other", type, seq };
  if (body.length < GENL_HEADER_BYTES) {
    throw new NetlinkWireError(`genetlink message of ${body.length} bytes`);
  }
  return {
    kind: "genl",
    type,
    flags,
    seq,
    cmd: body[0],
    attrs: parseAttrs(body.subarray(GENL_HEADER_BYTES)),
  };
}

// ---------------------------------------------------------------- controller

/** CTRL_CMD_GETFAMILY for `name`. */
export function encodeGetFamily(name: string, seq: number): Uint8Array {
  return encodeGenlRequest({
    family: NlmsgType.GENL_CTRL,
    cmd: CtrlCmd.GETFAMILY,
    version: CTRL_VERSION,
    seq,
    attrs: [{ type: CtrlAttr.FAMILY_NAME, string: name }],
  });
}

export interface GenlFamily {
  id: number;
  name: string;
}

/** The controller's NEWFAMILY reply: the family id (its other attributes are not needed). */
export function parseFamily(attrs: ParsedAttr[]): GenlFamily {
  let id: number | null = null;
  let name = "";
  for (const attr of attrs) {
    if (attr.type === CtrlAttr.FAMILY_ID) id = attrU16(attr, "CTRL_ATTR_FAMILY_ID");
    else if (attr.type === CtrlAttr.FAMILY_NAME) name = attrString(attr);
  }
  if (id === null) throw new NetlinkWireError(`family reply without CTRL_ATTR_FAMILY_ID`);
  return { id, name };
}

// ---------------------------------------------------------------- nbd family

export interface NbdConnectRequest {
  /** Device index; absent = the kernel picks a free device (or creates one). */
  index?: number;
  sizeBytes: number;
  blockSize: number;
  /** Kernel request timeout in s; 0 = none. */
  timeoutS: number;
  /** NBD transmission flags (HAS_FLAGS, READ_ONLY, SEND_FLUSH, …). */
  serverFlags: number;
  clientFlags: number;
  /** How long requests wait for a new socket after ours dies, in s. */
  deadConnTimeoutS: number;
  backendId: string;
  /**
   * The kernel's ends of our sockets, as fds of this process: one NBD_SOCK_ITEM
   * each, one hardware queue (and connection) of the device each.
   */
  sockets: number[];
}

function socketsAttr(fds: number[]): Attr {
  return {
    type: NbdAttr.SOCKETS,
    nested: fds.map((fd) => ({ type: NBD_SOCK_ITEM, nested: [{ type: NBD_SOCK_FD, u32: fd }] })),
  };
}

export function encodeNbdConnect(family: number, seq: number, r: NbdConnectRequest): Uint8Array {
  const attrs: Attr[] = [];
  if (r.index !== undefined) attrs.push({ type: NbdAttr.INDEX, u32: r.index });
  attrs.push(
    { type: NbdAttr.SIZE_BYTES, u64: r.sizeBytes },
    { type: NbdAttr.BLOCK_SIZE_BYTES, u64: r.blockSize },
    { type: NbdAttr.TIMEOUT, u64: r.timeoutS },
    { type: NbdAttr.SERVER_FLAGS, u64: r.serverFlags },
    { type: NbdAttr.CLIENT_FLAGS, u64: r.clientFlags },
    { type: NbdAttr.DEAD_CONN_TIMEOUT, u64: r.deadConnTimeoutS },
    { type: NbdAttr.BACKEND_IDENTIFIER, string: r.backendId },
    socketsAttr(r.sockets),
  );
  return encodeGenlRequest({ family, cmd: NbdCmd.CONNECT, version: NBD_GENL_VERSION, seq, attrs });
}

export interface NbdReconfigureRequest {
  index: number;
  /** Must equal the identifier the device was connected with, or the kernel refuses. */
  backendId: string;
  sockets: number[];
  deadConnTimeoutS?: number;
}

/**
 * RECONFIGURE with new socket(s). The kernel puts a socket only in place of
 * one it has marked dead; with none dead it drops the new socket and still
 * answers success.
 */
export function encodeNbdReconfigure(
  family: number,
  seq: number,
  r: NbdReconfigureRequest,
): Uint8Array {
  const attrs: Attr[] = [
    { type: NbdAttr.INDEX, u32: r.index },
    { type: NbdAttr.BACKEND_IDENTIFIER, string: r.backendId },
  ];
  if (r.deadConnTimeoutS !== undefined) {
    attrs.push({ type: NbdAttr.DEAD_CONN_TIMEOUT, u64: r.deadConnTimeoutS });
  }
  attrs.push(socketsAttr(r.sockets));
  return encodeGenlRequest({
    family,
    cmd: NbdCmd.RECONFIGURE,
    version: NBD_GENL_VERSION,
    seq,
    attrs,
  });
}

export function encodeNbdDisconnect(family: number, seq: number, index: number): Uint8Array {
  return encodeGenlRequest({
    family,
    cmd: NbdCmd.DISCONNECT,
    version: NBD_GENL_VERSION,
    seq,
    attrs: [{ type: NbdAttr.INDEX, u32: index }],
  });
}

/** STATUS of one device, or of every device without `index`. */
export function encodeNbdStatus(family: number, seq: number, index?: number): Uint8Array {
  return encodeGenlRequest({
    family,
    cmd: NbdCmd.STATUS,
    version: NBD_GENL_VERSION,
    seq,
    attrs: index === undefined ? [] : [{ type: NbdAttr.INDEX, u32: index }],
  });
}

/** NBD_ATTR_INDEX of a CONNECT reply; null when absent. */
export function parseNbdIndex(attrs: ParsedAttr[]): number | null {
  const attr = attrs.find((a) => a.type === NbdAttr.INDEX);
  return attr === undefined ? null : attrU32(attr, "NBD_ATTR_INDEX");
}

export interface NbdDeviceStatus {
  index: number;
  /** The device has a configuration (set up and not yet torn down). */
  connected: boolean;
}

/** The devices of a STATUS reply. */
export function parseNbdStatus(attrs: ParsedAttr[]): NbdDeviceStatus[] {
  const devices: NbdDeviceStatus[] = [];
  for (const list of attrs.filter((a) => a.type === NbdAttr.DEVICE_LIST)) {
    for (const item of parseAttrs(list.data)) {
      if (item.type !== NBD_DEVICE_ITEM) continue;
      let index: number | null = null;
      let connected = false;
      for (const field of parseAttrs(item.data)) {
        if (field.type === NBD_DEVICE_INDEX) index = attrU32(field, "NBD_DEVICE_INDEX");
        if (field.type === NBD_DEVICE_CONNECTED) {
          connected = attrU8(field, "NBD_DEVICE_CONNECTED") !== 0;
        }
      }
      if (index !== null) devices.push({ index, connected });
    }
  }
  return devices;
}
