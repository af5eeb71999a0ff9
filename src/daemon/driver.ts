/**
 * What the mount table drives: an IVBS backend opener and the kernel NBD
 * attachment. The real driver (`system_driver.ts`) wraps `IvbsSession.open` and
 * `attachDevice`; tests and the screenshot script use `FakeMountDriver`. The
 * shapes below mirror the contracts of src/ivbs/session.ts and src/nbd/ structurally,
 * so the daemon stays testable without either.
 * @module
 */
import type { Backend } from "../block/backend.ts";
import type { IvbsSessionEvent } from "../ivbs/session.ts";
import type { Logger } from "../log.ts";

/** Counters an IVBS session exposes (a subset of `IvbsSession.stats`). */
export interface SessionStats {
  readonly inFlight: number;
  readonly failovers: number;
  readonly reconnects: number;
  readonly retries: number;
  readonly keepalivesSent: number;
  /** Liveness probes (KEEPALIVE to a proxy that looked hung) and answers to them. */
  readonly probesSent?: number;
  readonly probesAnswered?: number;
  /** Failovers by cause ("closed", "error", "status", "dead-peer", "probe-timeout"). */
  readonly failoverCauses?: Readonly<Record<string, number>>;
  readonly bytesRead: number;
  readonly bytesWritten: number;
}

/** A backend as the daemon sees it: optional session details for status and metrics. */
export interface MountBackend extends Backend {
  /** "host:port" of the proxy in use; null while reconnecting. */
  readonly proxy?: string | null;
  readonly stats?: SessionStats;
}

/** Per-device I/O counters kept by the NBD serve loop (`IoStats` in src/nbd/stats.ts). */
export interface DeviceIoStats {
  readonly reads: number;
  readonly writes: number;
  readonly flushes: number;
  readonly trims: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  readonly errors: number;
  readonly inFlight: number;
  /** Upper bounds of the latency buckets, in milliseconds. */
  readonly latencyBucketsMs: readonly number[];
  /** Count per bucket (not cumulative); one extra trailing entry counts the overflow. */
  readonly latencyCounts: readonly number[];
  readonly latencySumMs: number;
}

/** A backend attached to a kernel device (`AttachedDevice` in src/nbd/kernel.ts). */
export interface DeviceAttachment {
  readonly device: string;
  readonly stats: DeviceIoStats;
  /** Disconnects the device and waits until the kernel let go; idempotent. */
  detach(): Promise<void>;
  /** Settles once the device is detached, whoever asked for it. */
  readonly done: Promise<void>;
  /**
   * Set when the device can outlive the daemon (netlink): what a later daemon
   * needs to find it again, and `release()`, which stops serving it but leaves
   * it attached for the next daemon.
   */
  readonly persistent?: {
    readonly index: number;
    readonly backendId: string;
    readonly sizeBytes: number;
    readonly options: { blockSize: number; timeoutS: number; deadConnTimeoutS: number };
    /** Sockets the device was connected with; 1 when absent. */
    readonly connections?: number;
    release(): Promise<void>;
  };
}

/** One kernel NBD device (`NbdDeviceInfo` in src/nbd/devices.ts). */
export interface NbdDevice {
  readonly device: string;
  readonly index: number;
  readonly inUse: boolean;
  readonly sizeBytes: number;
  readonly pid: number | null;
}

export interface OpenBackendRequest {
  image: string;
  username: string;
  password: string;
  readOnly: boolean;
  /** The session's events (connected, failover…), for the proxy registry. */
  onEvent?: (event: IvbsSessionEvent) => void;
  /** Where the session logs (a logger that names the mount or export). */
  log?: Logger;
}

export interface ReattachRequest {
  index: number;
  backendId: string;
  options: { blockSize: number; timeoutS: number; deadConnTimeoutS: number };
}

/**
 * The three things the mount table needs from the outside world. Failures are
 * thrown as errors carrying a stable `code` (IvbsMountError / NbdAttachError codes).
 */
export interface MountDriver {
  /** Opens an IVBS session on `image` (logs in, attaches the image). */
  openBackend(request: OpenBackendRequest): Promise<MountBackend>;
  /**
   * Connects `backend` to the kernel device `device` ("/dev/nbdN"), or, with
   * "auto" when `picksDevice` is set, to a free device the kernel picks.
   */
  attach(
    device: string,
    backend: MountBackend,
    options?: { log?: Logger },
  ): Promise<DeviceAttachment>;
  /** The kernel picks the device itself (netlink CONNECT without an index). */
  readonly picksDevice?: boolean;
  /**
   * Takes over a device a previous daemon left attached (see
   * `DeviceAttachment.persistent`); throws with code NO_DEVICE when the device
   * no longer carries `backendId`. Absent when attachments cannot outlive us.
   */
  reattach?(device: ReattachRequest, backend: MountBackend): Promise<DeviceAttachment>;
  /** Whether the device still carries `backendId` (cheap: sysfs). */
  isStillAttached?(index: number, backendId: string): Promise<boolean>;
  /**
   * Detaches a device that an earlier daemon left attached and nobody serves
   * (its backend id is one of ours); false when the device is not such an orphan.
   */
  detachOrphan?(index: number): Promise<boolean>;
  /** Every NBD device the kernel has, free or used; [] without the nbd module. */
  listDevices(): Promise<NbdDevice[]>;
}
