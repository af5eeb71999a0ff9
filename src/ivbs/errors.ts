/**
 * Errors of the IVBS client and the mapping from IVBS status codes to the errno
 * the NBD side reports. Only conditions a caller catches get a class.
 * @module
 */
import type { Errno } from "../block/backend.ts";
import { Status } from "./wire.ts";

/**
 * Why a mount (IvbsSession.open) failed; stable codes for the daemon and the
 * HTTP API (the mount and export tables pass them through as their own).
 */
export const IVBS_MOUNT_ERROR_CODES = [
  "LOGIN_DENIED", // the proxy refused the username/password
  "IMAGE_NOT_FOUND", // ATTACH_TO_IMAGE answered NOT_FOUND
  "ACCESS_DENIED", // ATTACH_TO_IMAGE answered PERMISSION_DENIED
  "NO_PROXY", // no configured or listed proxy could be reached
  "PROTOCOL", // every proxy answered with bytes that are not IVBS
] as const;
export type IvbsMountErrorCode = typeof IVBS_MOUNT_ERROR_CODES[number];

/** Thrown by IvbsSession.open when the image cannot be mounted. */
export class IvbsMountError extends Error {
  constructor(readonly code: IvbsMountErrorCode, message: string) {
    super(message);
    this.name = "IvbsMountError";
  }
}

/**
 * A connection to one proxy ended (TCP error, EOF, dead peer, bad bytes, or we
 * closed it). Requests pending on it reject with this; the session replays them.
 */
export class ConnectionLostError extends Error {
  readonly code = "CONNECTION_LOST";
  /** `protocol`: the proxy sent bytes that are not IVBS (as opposed to a network fault). */
  constructor(readonly proxy: string, readonly reason: string, readonly protocol = false) {
    super(`IVBS connection to ${proxy} lost: ${reason}`);
    this.name = "ConnectionLostError";
  }
}

/** The failing statuses with an errno of their own (the contract); the others are EIO. */
const STATUS_ERRNO: ReadonlyMap<number, Errno> = new Map([
  [Status.READ_ONLY, "EPERM"],
  [Status.INVALID_REQUEST, "EINVAL"],
]);

/** errno for a status that fails one request: its own, else EIO. */
export function statusErrno(status: number): Errno {
  return STATUS_ERRNO.get(status) ?? "EIO";
}

/** What the session does with a reply status. */
export type StatusAction =
  | "ok"
  | "relogin" // NOT_LOGGEDIN: log in again on this connection, then retry
  | "retry" // NOT_READY, TEMPORARY_ERROR: retry after a backoff
  | "failover" // USE_ANOTHER_PROXY, EXPIRED: drop the connection, replay elsewhere
  | "fail"; // anything else: that request fails with statusErrno()

const STATUS_ACTION: ReadonlyMap<number, StatusAction> = new Map([
  [Status.OK, "ok"],
  [Status.NOT_LOGGEDIN, "relogin"],
  [Status.NOT_READY, "retry"],
  [Status.TEMPORARY_ERROR, "retry"],
  [Status.USE_ANOTHER_PROXY, "failover"],
  [Status.EXPIRED, "failover"],
]);

export function statusAction(status: number): StatusAction {
  return STATUS_ACTION.get(status) ?? "fail";
}
