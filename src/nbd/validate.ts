/**
 * The edge check of one NBD request, in the order nbdkit's `validate_request`
 * (server/protocol.c) applies it, so that a client sees the same error from
 * us as from nbdkit for the same odd request. A pure function of the request
 * and what the handshake advertised: the serve loop turns a refusal into an
 * error reply without asking the backend.
 *
 * The checks, first match wins:
 * 1. write, trim or zero on a read-only export → EPERM;
 * 2. the command and its range: READ, WRITE, TRIM, WRITE_ZEROES need a count
 *    above 0 and a range inside the export (else ENOSPC for WRITE and
 *    WRITE_ZEROES, EINVAL for the others: proto.md "Error values"); FLUSH
 *    needs offset and count 0; other commands are unknown → EINVAL;
 * 3. flags: unknown bits, and a flag on a command it does not belong to
 *    (NO_HOLE and FAST_ZERO: WRITE_ZEROES only; DF: READ with structured
 *    replies, which we never negotiate; REQ_ONE: BLOCK_STATUS only; FUA: only
 *    when SEND_FUA was advertised) → EINVAL;
 * 4. READ or WRITE over MAX_PAYLOAD → EINVAL;
 * 5. FLUSH, TRIM or WRITE_ZEROES not advertised → EINVAL.
 * @module
 */
import {
  Command,
  CommandFlag,
  MAX_PAYLOAD,
  NbdError,
  type NbdRequest,
  TransmissionFlag,
} from "./wire.ts";

/** What the handshake promised the client: the export's size and transmission flags. */
export interface AdvertisedExport {
  readonly size: number;
  readonly flags: number;
}

/** A refused request: the NBD error to answer and why, for the log. */
export interface Refusal {
  readonly error: number;
  readonly reason: string;
}

/** Command flags any command may carry before the per-command checks. */
const KNOWN_FLAGS = CommandFlag.FUA | CommandFlag.NO_HOLE | CommandFlag.DF |
  CommandFlag.REQ_ONE | CommandFlag.FAST_ZERO;

/** Each command flag that belongs to one command only, and that command. */
const FLAG_OWNERS: ReadonlyArray<readonly [number, number, string]> = [
  [CommandFlag.NO_HOLE, Command.WRITE_ZEROES, "NO_HOLE"],
  [CommandFlag.FAST_ZERO, Command.WRITE_ZEROES, "FAST_ZERO"],
  [CommandFlag.DF, Command.READ, "DF"],
  [CommandFlag.REQ_ONE, Command.BLOCK_STATUS, "REQ_ONE"],
];

/** The transmission flag a command needs advertised before a client may send it. */
const NEEDS_ADVERTISED: ReadonlyArray<readonly [number, number]> = [
  [Command.FLUSH, TransmissionFlag.SEND_FLUSH],
  [Command.TRIM, TransmissionFlag.SEND_TRIM],
  [Command.WRITE_ZEROES, TransmissionFlag.SEND_WRITE_ZEROES],
];

/** The refusal for `request` on an export advertised as `advertised`, or null when it may run. */
export function validateRequest(request: NbdRequest, advertised: AdvertisedExport): Refusal | null {
  const { type, flags, offset, length } = request;
  const writes = type === Command.WRITE || type === Command.TRIM ||
    type === Command.WRITE_ZEROES;
  if (writes && (advertised.flags & TransmissionFlag.READ_ONLY) !== 0) {
    return { error: NbdError.EPERM, reason: "write request on a read-only export" };
  }
  switch (type) {
    case Command.READ:
    case Command.WRITE:
    case Command.TRIM:
    case Command.WRITE_ZEROES:
      if (length === 0 || offset + length > advertised.size) {
        const space = type === Command.WRITE || type === Command.WRITE_ZEROES;
        return {
          error: space ? NbdError.ENOSPC : NbdError.EINVAL,
          reason: length === 0
            ? "zero-length request"
            : `range ends past the ${advertised.size}-byte export`,
        };
      }
      break;
    case Command.FLUSH:
      if (offset !== 0 || length !== 0) {
        return { error: NbdError.EINVAL, reason: "FLUSH with an offset or a count" };
      }
      break;
    default:
      return { error: NbdError.EINVAL, reason: "unknown or unsupported command" };
  }
  if ((flags & ~KNOWN_FLAGS) !== 0) {
    return { error: NbdError.EINVAL, reason: `unknown command flags 0x${flags.toString(16)}` };
  }
  for (const [flag, owner, name] of FLAG_OWNERS) {
    if ((flags & flag) !== 0 && type !== owner) {
      return { error: NbdError.EINVAL, reason: `${name} flag on a command it does not belong to` };
    }
  }
  if ((flags & CommandFlag.DF) !== 0) {
    return { error: NbdError.EINVAL, reason: "DF flag without structured replies" };
  }
  if ((flags & CommandFlag.FUA) !== 0 && (advertised.flags & TransmissionFlag.SEND_FUA) === 0) {
    return { error: NbdError.EINVAL, reason: "FUA flag not advertised" };
  }
  if ((type === Command.READ || type === Command.WRITE) && length > MAX_PAYLOAD) {
    return { error: NbdError.EINVAL, reason: `length over ${MAX_PAYLOAD}` };
  }
  for (const [command, needed] of NEEDS_ADVERTISED) {
    if (type === command && (advertised.flags & needed) === 0) {
      return { error: NbdError.EINVAL, reason: "command not advertised" };
    }
  }
  return null;
}
