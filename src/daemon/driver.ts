/**
 * What the mount table drives: IVBS sessions (backends) and kernel NBD
 * devices. The real driver (`system_driver.ts`) opens `IvbsSession`s and
 * attaches through src/nbd/attach.ts; tests and the screenshot script use
 * `FakeMountDriver`. The shapes the two sides share are the contracts in
 * src/block/ (device.ts, session.ts), imported, not copied; the session's
 * events are IVBS's own vocabulary (src/ivbs/session_events.ts), which the
 * proxy registry reads.
 * @module
 */
import type { AttachSettings, DeviceAttachment, NbdDevice } from "../block/device.ts";
import type { SessionBackend } from "../block/session.ts";
import type { IvbsSessionEvent } from "../ivbs/session_events.ts";
import type { Logger } from "../log.ts";
import type { NbdHealth } from "../nbd/host_health.ts";

export type {
  AttachSettings,
  DeviceAttachment,
  DeviceIoStats,
  NbdDevice,
} from "../block/device.ts";
export type { SessionBackend as MountBackend, SessionStats } from "../block/session.ts";

export interface OpenBackendRequest {
  image: string;
  username: string;
  password: string;
  readOnly: boolean;
  /**
   * Which of a device's connections this session serves (0 for exports and
   * single-connection devices): the driver spreads connections over proxies.
   */
  connection?: number;
  /** The session's events (connected, failover…), for the proxy registry. */
  onEvent?: (event: IvbsSessionEvent) => void;
  /** Where the session logs (a logger that names the mount or export). */
  log?: Logger;
}

/** A device a previous daemon left attached (from its state record). */
export interface ReattachRequest {
  index: number;
  backendId: string;
  options: AttachSettings;
}

/**
 * What the mount table needs from the outside world. Failures are thrown as
 * errors carrying a stable `code` (IvbsMountError / NbdAttachError codes).
 */
export interface MountDriver {
  /** Opens an IVBS session on `image` (logs in, attaches the image). */
  openBackend(request: OpenBackendRequest): Promise<SessionBackend>;
  /**
   * Connects `backends` (one per connection, sessions on one image) to the
   * kernel device `device` ("/dev/nbdN"), or, with "auto" when `picksDevice`
   * is set, to a free device the kernel picks.
   */
  attach(
    device: string,
    backends: readonly SessionBackend[],
    options?: { log?: Logger },
  ): Promise<DeviceAttachment>;
  /** The kernel picks the device itself (netlink CONNECT without an index). */
  readonly picksDevice?: boolean;
  /** Connections a device may have (default 1: ioctl attach serves one). */
  readonly maxConnections?: number;
  /**
   * Takes over a device a previous daemon left attached (see
   * `DeviceAttachment.persistent`), with one new socket per backend; throws
   * with code NO_DEVICE when the device no longer carries `backendId`.
   * Absent when attachments cannot outlive us.
   */
  reattach?(
    device: ReattachRequest,
    backends: readonly SessionBackend[],
    options?: { log?: Logger },
  ): Promise<DeviceAttachment>;
  /** Whether the device still carries `backendId` (cheap: sysfs). */
  isStillAttached?(index: number, backendId: string): Promise<boolean>;
  /**
   * Detaches a device that an earlier daemon left attached and nobody serves
   * (its backend id is one of ours); false when the device is not such an orphan.
   */
  detachOrphan?(index: number): Promise<boolean>;
  /** Every NBD device the kernel has, free or used; [] without the nbd module. */
  listDevices(): Promise<NbdDevice[]>;
  /** The host's nbd module, free devices and what blocks a mount (never throws). */
  hostHealth?(): Promise<NbdHealth>;
  /**
   * Connects to the IVBS proxy "host:port", waits for its GREETING and closes
   * (the idle check, proxy_probe.ts); throws why when it cannot, or once
   * `signal` aborts. Absent: no checks.
   */
  probeProxy?(address: string, signal: AbortSignal): Promise<{ name: string }>;
}
