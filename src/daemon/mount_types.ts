/**
 * The mount table's vocabulary: what a mount request carries, what views see
 * of a mount and a device, and why a request was refused. Its own module so
 * the views' types do not come with the table's mechanics.
 * @module
 */
import type { DesiredState } from "./desired_status.ts";
import { CodedError } from "../error_info.ts";
import { IVBS_MOUNT_ERROR_CODES, type IvbsMountErrorCode } from "../ivbs/errors.ts";
import { NBD_ATTACH_ERROR_CODES, type NbdAttachErrorCode } from "../nbd/device_setup.ts";
import type { RefusalKind } from "./refusal.ts";
import type { Logger } from "../log.ts";
import type { DeviceAttachment, MountBackend } from "./driver.ts";
import type { WatchSession } from "./proxy_registry.ts";
import type { Throughput } from "./rate.ts";
import type { MountRecord } from "./state_file.ts";
import type { IoCounters } from "../block/counters.ts";

/** Why a mount or unmount was refused; `code` is stable (the HTTP layer maps it to a status). */
export type MountErrorCode =
  | "INVALID_DEVICE" // not an NBD device name
  | "UNKNOWN_DEVICE" // no such device (or beyond nbd.devices)
  | "NO_MODULE" // the kernel has no NBD devices at all
  | "BUSY" // device mounted, being mounted, or used by another process
  | "NO_FREE_DEVICE"
  | "NOT_MOUNTED"
  | "SHUTTING_DOWN"
  | "DETACH_FAILED"
  // Passed through from IvbsSession.open and the kernel attach:
  | IvbsMountErrorCode
  | NbdAttachErrorCode
  | "MOUNT_FAILED"; // anything else

export class MountError extends CodedError<MountErrorCode> {
  override readonly name = "MountError";
}

/** What a failure below the table becomes (refusal.ts). */
export const MOUNT_REFUSAL: RefusalKind<MountErrorCode, MountError> = {
  ErrorClass: MountError,
  passThrough: new Set<string>([...IVBS_MOUNT_ERROR_CODES, ...NBD_ATTACH_ERROR_CODES]),
  otherwise: "MOUNT_FAILED",
  noun: "mount",
};

export type MountState = "mounting" | "mounted" | "reconnecting" | "unmounting";

export interface MountRequest {
  /** "/dev/nbdN", "nbdN", "auto" or absent (= auto). */
  device?: string;
  image: string;
  username: string;
  password: string;
  readOnly?: boolean;
  /** Connections (one IVBS session each) of the device, 1..16; default nbd.connections. */
  connections?: number;
}

/** One connection of a mount: its socket to the kernel and its IVBS session. */
export interface ConnectionInfo extends IoCounters {
  /** IVBS proxy of this connection's session, "host:port"; null while it reconnects. */
  proxy: string | null;
  failovers: number;
}

/** What views show of a mount. Never carries the password. */
export interface MountInfo extends IoCounters {
  device: string;
  image: string;
  username: string;
  /**
   * The table's own states while it holds the mount; a desired mount that is
   * not up yet shows the reconciler's "pending", "attaching" or "failing"
   * (with `reason`, `nextRetryAt`, `attempts`).
   */
  state: MountState | Exclude<DesiredState, "ready">;
  reason?: string;
  nextRetryAt?: string;
  /** Attempts the reconciler made since the mount was last up. */
  attempts?: number;
  sizeBytes: number;
  readOnly: boolean;
  /**
   * IVBS proxy of the first connection, "host:port"; null while it reconnects
   * or before the session is open. `connections` has each connection's.
   */
  proxy: string | null;
  errors: number;
  failovers: number;
  reconnects: number;
  retries: number;
  /** When the table took it (null while only desired). */
  mountedAt: string | null;
  /** Average over the last sampling window (≥ 1 s, taken when the table is read). */
  throughput: Throughput;
  /** Per connection, in the kernel's socket order; one entry for a single-connection device. */
  connections: ConnectionInfo[];
}

/** A device as `lista` shows it: the kernel's view joined with the table's. */
export interface DeviceInfo {
  device: string;
  index: number;
  /** Attached (by us or by another process). */
  inUse: boolean;
  sizeBytes: number;
  pid: number | null;
  /** The image this daemon has on it, if any. */
  image: string | null;
  state: MountState | "free" | "foreign";
}

/** Everything metrics need about one mount (live objects, read at scrape time). */
export interface MountSnapshot {
  info: MountInfo;
  attachment: DeviceAttachment | null;
  /** The mount's sessions as one: the first one's proxy, counters summed. */
  backend: MountBackend | null;
}

export interface MountTableOptions {
  /** Devices the daemon manages: /dev/nbd0 … /dev/nbd{deviceCount-1}. */
  deviceCount: number;
  /** Connections per device when a request does not say (nbd.connections); default 1. */
  connections?: number;
  log?: Logger;
  /** Clock for throughput sampling (tests pass a fake one). */
  now?: () => number;
  /** Follows each mount's IVBS session (proxy registry, session log lines). */
  watchSession?: WatchSession;
  /** The kernel attachment's logger for `device` (its lines name the device). */
  deviceLog?: (context: { device: string }) => Logger;
  /** Called whenever the set of mounts that outlive the daemon changes (to save the state). */
  onPersistentChange?: () => void;
}

/**
 * A take-over made ready (`MountTable.prepareAdopt`): the IVBS sessions are
 * open, the device not yet handed over. Exactly one of the two is called, once.
 */
export interface PreparedAdoption {
  readonly record: MountRecord;
  /** Hands the kernel the new sockets (RECONFIGURE) and serves the device. */
  takeOver(): Promise<MountInfo>;
  /** Closes the sessions and frees the entry; the device stays as it is. */
  abandon(): Promise<void>;
}
