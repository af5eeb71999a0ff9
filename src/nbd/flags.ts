/**
 * The transmission flags a backend earns: what the handshake sends a client
 * and what NBD_SET_FLAGS / netlink CONNECT tell the kernel. One place, below
 * both of them and the serve loop, so each describes a backend the same way.
 * @module
 */
import type { Backend } from "../block/backend.ts";
import { TransmissionFlag } from "./wire.ts";

/**
 * Whether several connections to one image may be used as one device
 * (NBD_FLAG_CAN_MULTI_CONN). proto.md asks two things of such a server: a read
 * on any connection sees every write already answered on any connection, and a
 * FLUSH on any connection covers every write answered on all of them.
 *
 * Why a backend without `flush` qualifies, IVBS sessions above all
 * (/work/shared/ivbs-protocol.md):
 * - IVBS answers a WRITE OK only once the data is stored, and the session
 *   answers the NBD WRITE only after that reply: nothing answered lives in a
 *   cache of one connection. The daemon keeps no data cache either; every READ
 *   goes to IVBS, the one store all sessions of an image share (failover to
 *   another proxy relies on the same fact).
 * - So FLUSH has nothing to do on any connection: every answered write is
 *   already durable, which is why such backends have no `flush` and FLUSH is
 *   answered at once (serve.ts).
 * - Failover replays only writes not yet answered; proto.md leaves the order of
 *   overlapping writes in flight at the same time unspecified anyway.
 *
 * A backend with `flush` has a volatile cache of its own, and each connection
 * opens its own backend: a FLUSH on one connection would not reach another's
 * cache, so it does not qualify. (Backends shared between connections, such as
 * a memory export, have no flush and one copy of the data.)
 */
export function canMultiConn(backend: Backend): boolean {
  return backend.flush === undefined;
}

/** The transmission flags that describe `backend` honestly (for NBD_SET_FLAGS or a handshake). */
export function transmissionFlags(backend: Backend): number {
  let flags = TransmissionFlag.HAS_FLAGS;
  if (backend.readOnly) flags |= TransmissionFlag.READ_ONLY;
  if (backend.flush) flags |= TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA;
  if (!backend.readOnly && backend.trim) flags |= TransmissionFlag.SEND_TRIM;
  if (!backend.readOnly && backend.writeZeroes) flags |= TransmissionFlag.SEND_WRITE_ZEROES;
  if (canMultiConn(backend)) flags |= TransmissionFlag.CAN_MULTI_CONN;
  return flags;
}
