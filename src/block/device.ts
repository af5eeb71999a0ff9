/**
 * The kernel-device contracts that the NBD side produces and the daemon
 * consumes: a device as sysfs shows it, an attachment (a backend served as
 * /dev/nbdN over one or more sockets) and its I/O counters. They live below
 * both sides, so the daemon imports them instead of re-declaring their shapes
 * and the NBD side implements them (src/nbd/stats.ts, ioctl_attach.ts,
 * netlink_attach.ts, devices.ts).
 * @module
 */

/** Most connections (sockets, one backend each) a kernel device may have. */
export const MAX_CONNECTIONS = 16;

/** I/O counters of a served device, export or one of a device's connections. */
export interface DeviceIoStats {
  readonly reads: number;
  readonly writes: number;
  readonly flushes: number;
  readonly trims: number;
  readonly bytesRead: number;
  readonly bytesWritten: number;
  /** Requests answered with an error. */
  readonly errors: number;
  /** Requests received and not yet answered. */
  readonly inFlight: number;
  /** Upper bounds of the latency buckets, in milliseconds. */
  readonly latencyBucketsMs: readonly number[];
  /** Count per bucket (not cumulative); one extra trailing entry counts the overflow. */
  readonly latencyCounts: readonly number[];
  readonly latencySumMs: number;
}

/** One kernel NBD device, as sysfs shows it. */
export interface NbdDevice {
  /** "/dev/nbd0" */
  readonly device: string;
  readonly index: number;
  /** Configured (non-zero size) or served (a `pid` file). */
  readonly inUse: boolean;
  readonly sizeBytes: number;
  /**
   * The kernel's `pid` file: the task in NBD_DO_IT (ioctl) or the one that
   * connected the device (netlink); null when unused.
   */
  readonly pid: number | null;
}

/** Settings a device was connected with; a later daemon that takes it over needs them. */
export interface AttachSettings {
  readonly blockSize: number;
  /** Kernel request timeout in s; 0 = none. */
  readonly timeoutS: number;
  /** How long requests wait for a new socket after one dies, in s. */
  readonly deadConnTimeoutS: number;
}

/** What a device that outlives the daemon (netlink) adds to its attachment. */
export interface PersistentAttachment {
  readonly index: number;
  /** The kernel's /sys/block/nbdN/backend: proves the device is still ours. */
  readonly backendId: string;
  readonly sizeBytes: number;
  readonly options: AttachSettings;
  /** Sockets (connections) the device was connected with; a takeover hands it as many. */
  readonly connections: number;
  /** Stops serving but leaves the device attached for the next daemon. */
  release(): Promise<void>;
}

/** A backend (or one backend per connection) attached to a kernel device and served. */
export interface DeviceAttachment {
  readonly device: string;
  /** The device's counters: the sum over its connections. */
  readonly stats: DeviceIoStats;
  /** One entry per socket, in the order of the backends it was attached with. */
  readonly connections: readonly DeviceIoStats[];
  /** Disconnects the device and waits until the kernel let go; idempotent. */
  detach(): Promise<void>;
  /** Settles once the device is detached (or released), whoever asked for it. */
  readonly done: Promise<void>;
  /** Set when the device can outlive the daemon (netlink). */
  readonly persistent?: PersistentAttachment;
}
