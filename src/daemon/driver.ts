/**
 * What the mount table drives: IVBS sessions (backends) and kernel NBD
 * devices. The real driver (`system_driver.ts`) opens `IvbsSession`s and
 * attaches through src/nbd/attach.ts; tests and the screenshot script use
 * `FakeMountDriver`. The shapes the two sides share are the contracts in
 * src/block/ (device.ts, session.ts) and the kernel side of
 * src/nbd/attach.ts (KernelDevices), imported, not copied; the session's
 * events are IVBS's own vocabulary (src/ivbs/session_events.ts), which the
 * proxy registry reads.
 * @module
 */
import type { SessionBackend } from "../block/session.ts";
import type { IvbsSessionEvent } from "../ivbs/session_events.ts";
import type { Logger } from "../log.ts";
import type { KernelDevices, LeftDevice } from "../nbd/attach.ts";
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
export type ReattachRequest = LeftDevice;

/** The kernel side of a mount, as src/nbd/attach.ts gives it (the fake driver plays it too). */
type KernelSide = Pick<
  KernelDevices,
  "attach" | "reattach" | "isStillAttached" | "detachOrphan" | "listDevices"
>;

/**
 * What the mount table needs from the outside world: IVBS sessions and the
 * kernel's devices. Failures are thrown as errors carrying a stable `code`
 * (IvbsMountError / NbdAttachError codes). `picksDevice` and
 * `maxConnections` default to false and 1.
 */
export interface MountDriver
  extends KernelSide, Partial<Pick<KernelDevices, "picksDevice" | "maxConnections">> {
  /** Opens an IVBS session on `image` (logs in, attaches the image). */
  openBackend(request: OpenBackendRequest): Promise<SessionBackend>;
  /** The host's nbd module, free devices and what blocks a mount (never throws). */
  hostHealth?(): Promise<NbdHealth>;
  /**
   * Connects to the IVBS proxy "host:port", waits for its GREETING and closes
   * (the idle check, proxy_probe.ts); throws why when it cannot, or once
   * `signal` aborts. Absent: no checks.
   */
  probeProxy?(address: string, signal: AbortSignal): Promise<{ name: string }>;
}
