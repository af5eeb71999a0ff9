/**
 * The CSI front-end's view of the daemon: the calls it makes over the HTTP
 * API (cli/api_client.ts) and the translation of the daemon's refusals into
 * CSI status codes. The CSI process keeps no state of its own, so a daemon
 * call is how it learns which device serves a volume.
 * @module
 */
import {
  ApiError,
  type Health,
  type ImageCheckBody,
  type ImageInfo,
  type MountInfo,
  type MountRequestBody,
  ServerUnreachableError,
} from "../cli/api_client.ts";
import { errorMessage } from "../error_info.ts";
import { Code, CsiError } from "./status.ts";

/**
 * A mount as `GET /api/mounts` shows it. `state`/`reason` follow the shared
 * contract (pending, attaching, ready, failing); older daemons say mounting,
 * mounted, reconnecting or unmounting and give no reason.
 */
export type DaemonMount = Omit<MountInfo, "state"> & { state: string; reason?: string };

/** The part of ApiClient the CSI services use (tests may hand in the real one). */
export interface DaemonApi {
  health(): Promise<Health>;
  mounts(): Promise<DaemonMount[]>;
  mount(request: MountRequestBody): Promise<DaemonMount>;
  unmount(device: string): Promise<string>;
  checkImage(request: ImageCheckBody): Promise<ImageInfo>;
}

/** Mount states in which the daemon serves the device's I/O. */
const HEALTHY_STATES = new Set(["ready", "mounted"]);

export function isHealthy(mount: DaemonMount): boolean {
  return HEALTHY_STATES.has(mount.state);
}

/** Daemon refusals by their stable code, where one CSI code fits better than the HTTP status. */
const BY_REASON: Record<string, Code> = {
  IMAGE_NOT_FOUND: Code.NOT_FOUND,
  LOGIN_DENIED: Code.PERMISSION_DENIED,
  ACCESS_DENIED: Code.PERMISSION_DENIED,
  NO_FREE_DEVICE: Code.RESOURCE_EXHAUSTED,
  NOT_MOUNTED: Code.NOT_FOUND,
  UNKNOWN_DEVICE: Code.NOT_FOUND,
};

function byStatus(status: number): Code {
  if (status === 400) return Code.INVALID_ARGUMENT;
  if (status === 401 || status === 403) return Code.PERMISSION_DENIED;
  if (status === 404) return Code.NOT_FOUND;
  if (status === 409) return Code.FAILED_PRECONDITION;
  if (status === 502 || status === 503) return Code.UNAVAILABLE;
  return Code.INTERNAL;
}

/** The CSI error for a failed daemon call; `what` names the action ("mount image disk0"). */
export function daemonFailure(error: unknown, what: string): CsiError {
  if (error instanceof CsiError) return error;
  if (error instanceof ApiError) {
    const code = (error.reason ? BY_REASON[error.reason] : undefined) ?? byStatus(error.status);
    return new CsiError(code, `${what}: ${error.message}`);
  }
  if (error instanceof ServerUnreachableError) {
    return new CsiError(Code.UNAVAILABLE, `${what}: ivbsnetd ${error.message}`);
  }
  return new CsiError(Code.INTERNAL, `${what}: ${errorMessage(error)}`);
}

/** Runs one daemon call; its failure becomes a CsiError naming `what`. */
export async function askDaemon<T>(what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw daemonFailure(error, what);
  }
}

/** Whether the daemon said the thing is already gone (for idempotent detaches). */
export function isGone(error: unknown): boolean {
  return error instanceof ApiError &&
    (error.status === 404 || error.reason === "NOT_MOUNTED");
}
