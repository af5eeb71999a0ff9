/**
 * The libc calls of a netlink socket (AF_NETLINK, linux/netlink.h), through
 * Deno FFI: socket, bind, send on a worker thread, and the constants. No
 * netlink message semantics here (src/nbd/netlink_wire.ts has the layouts).
 *
 * send runs on a worker thread: the kernel runs a generic-netlink command in
 * the sender's context, and NBD_CMD_DISCONNECT sends NBD_CMD_DISC to our own
 * socket and waits for the receive side, which only our main thread serves.
 * The symbols are ffi/libc.ts's (one libc handle); recv and poll come from there too.
 * @module
 */
import { errno, libc, LibcError } from "./libc.ts";

export const AF_NETLINK = 16;
export const SOCK_RAW = 3;
/** Protocol number of generic netlink (linux/netlink.h). */
export const NETLINK_GENERIC = 16;

/**
 * bind(2) of a netlink socket: struct sockaddr_nl { u16 family; u16 pad;
 * u32 pid; u32 groups; }, pid 0 = the kernel assigns our port id.
 */
export function bindNetlink(fd: number): void {
  const address = new Uint8Array(12);
  new DataView(address.buffer).setUint16(0, AF_NETLINK, true);
  if (libc().bind(fd, address, address.length) < 0) throw new LibcError(`bind(${fd})`, errno());
}

/**
 * send(2) of one whole message on a worker thread. Resolves with the bytes
 * sent, or throws a LibcError whose errno is unknown (lost with the worker).
 */
export async function sendOnWorker(fd: number, data: Uint8Array): Promise<number> {
  const n = Number(await libc().send_blocking(fd, data, BigInt(data.length), 0));
  if (n < 0) throw new LibcError(`send(${fd})`, null);
  return n;
}
