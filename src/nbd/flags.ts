/**
 * The transmission flags a backend earns: what the handshake sends a client
 * and what NBD_SET_FLAGS tells the kernel. One place, below both of them and
 * the serve loop, so each describes a backend the same way.
 * @module
 */
import type { Backend } from "../block/backend.ts";
import { TransmissionFlag } from "./wire.ts";

/** The transmission flags that describe `backend` honestly (for NBD_SET_FLAGS or a handshake). */
export function transmissionFlags(backend: Backend): number {
  let flags = TransmissionFlag.HAS_FLAGS;
  if (backend.readOnly) flags |= TransmissionFlag.READ_ONLY;
  if (backend.flush) flags |= TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA;
  if (!backend.readOnly && backend.trim) flags |= TransmissionFlag.SEND_TRIM;
  if (!backend.readOnly && backend.writeZeroes) flags |= TransmissionFlag.SEND_WRITE_ZEROES;
  return flags;
}
