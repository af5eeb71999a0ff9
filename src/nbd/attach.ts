/**
 * The one place that decides how a backend becomes /dev/nbdN: through generic
 * netlink (netlink_attach.ts: devices outlive the daemon, N connections, the
 * kernel may pick the device) where the kernel has the nbd family, else
 * through ioctls (ioctl_attach.ts: one connection, the device goes with the
 * daemon). `mode` "netlink" or "ioctl" forces one; "auto" (the default) asks
 * the kernel. The daemon sees only `KernelDevices`.
 * @module
 */
import type { Backend } from "../block/backend.ts";
import {
  type AttachSettings,
  type DeviceAttachment,
  MAX_CONNECTIONS,
  type NbdDevice,
} from "../block/device.ts";
import { type Logger, logger } from "../log.ts";
import { NbdAttachError } from "./device_setup.ts";
import { listNbdDevices, nbdIndex } from "./devices.ts";
import { attachDevice } from "./ioctl_attach.ts";
import { NbdNetlink } from "./netlink.ts";
import { attachNetlink, newBackendId, readBackendId, reattachNetlink } from "./netlink_attach.ts";

export type AttachMode = "auto" | "netlink" | "ioctl";

/** Device settings from the config (nbd section). */
export interface KernelSettings extends AttachSettings {
  /** Requests in flight between the kernel and each backend. */
  readonly maxInFlight: number;
  /** netlink with TIMEOUT 0: the block layer's request timer, in s. */
  readonly requeueAfterS: number;
}

/** A device a previous daemon left attached, as its state record names it. */
export interface LeftDevice {
  readonly index: number;
  readonly backendId: string;
  readonly options: AttachSettings;
}

/** The kernel's NBD devices, attached one way. */
export interface KernelDevices {
  readonly kind: "netlink" | "ioctl";
  /** The kernel picks a free device for "auto" (netlink CONNECT without an index). */
  readonly picksDevice: boolean;
  /** Connections (sockets, one backend each) a device may have: 1 through ioctl. */
  readonly maxConnections: number;
  /**
   * Attaches one backend per connection (sessions on one image) to `device`
   * ("/dev/nbdN", or "auto" where the kernel picks).
   */
  attach(
    device: string,
    backends: readonly Backend[],
    options?: { log?: Logger },
  ): Promise<DeviceAttachment>;
  /**
   * Takes over a device an earlier daemon left attached (netlink only: see
   * `DeviceAttachment.persistent`), with one new socket per backend; throws
   * with code NO_DEVICE when the device no longer carries `backendId`.
   */
  reattach?(
    device: LeftDevice,
    backends: readonly Backend[],
    options?: { log?: Logger },
  ): Promise<DeviceAttachment>;
  /** Whether the device still carries `backendId` (cheap: sysfs). */
  isStillAttached?(index: number, backendId: string): Promise<boolean>;
  /** Disconnects a device an earlier daemon of ours left; false when it is not one. */
  detachOrphan?(index: number): Promise<boolean>;
  /** Every NBD device the kernel has, free or used; [] without the nbd module. */
  listDevices(): Promise<NbdDevice[]>;
}

/** Backend ids of our devices start so (netlink_attach.ts newBackendId). */
const BACKEND_ID_PREFIX = "ivbsnetd:";

/**
 * The kernel's devices, attached the way `mode` asks and the kernel allows.
 * "netlink" without the nbd family gives devices whose attach fails with
 * NO_MODULE (the daemon still starts and says why).
 */
export async function openKernelDevices(
  mode: AttachMode,
  settings: KernelSettings,
  log: Logger = logger("nbd"),
): Promise<KernelDevices> {
  if (mode === "ioctl") return ioctlDevices(settings);
  let netlink: NbdNetlink | null = null;
  try {
    netlink = await NbdNetlink.open();
  } catch (error) {
    log.warn("cannot open the nbd netlink interface", { error });
  }
  if (netlink !== null) return netlinkDevices(netlink, settings, log);
  if (mode === "auto") return ioctlDevices(settings);
  log.error('nbd.attach is "netlink" but the kernel has no nbd netlink family; mounts will fail');
  return {
    ...ioctlDevices(settings),
    attach: (device) =>
      Promise.reject(
        new NbdAttachError(
          `Cannot attach ${device}: the kernel has no nbd netlink family`,
          "NO_MODULE",
        ),
      ),
  };
}

function ioctlDevices(settings: KernelSettings): KernelDevices {
  return {
    kind: "ioctl",
    picksDevice: false,
    maxConnections: 1,
    attach: async (device, backends, options) => {
      if (backends.length !== 1) {
        throw new RangeError(`ioctl attach serves one connection, got ${backends.length}`);
      }
      return await attachDevice(device, backends[0], {
        blockSize: settings.blockSize,
        timeoutS: settings.timeoutS,
        maxInFlight: settings.maxInFlight,
        log: options?.log,
      });
    },
    listDevices: listNbdDevices,
  };
}

function netlinkDevices(
  netlink: NbdNetlink,
  settings: KernelSettings,
  log: Logger,
): KernelDevices {
  const tuning = { maxInFlight: settings.maxInFlight, requeueAfterS: settings.requeueAfterS };
  return {
    kind: "netlink",
    picksDevice: true,
    maxConnections: MAX_CONNECTIONS,
    attach: async (device, backends, options) => {
      const index = device === "auto" ? undefined : nbdIndex(device);
      if (index === null) {
        throw new NbdAttachError(`Cannot attach ${device}: not an NBD device path`, "NO_DEVICE");
      }
      return await attachNetlink(netlink, backends, {
        ...tuning,
        blockSize: settings.blockSize,
        timeoutS: settings.timeoutS,
        deadConnTimeoutS: settings.deadConnTimeoutS,
        backendId: newBackendId(),
        index,
        log: options?.log,
      });
    },
    reattach: (left, backends, options) =>
      reattachNetlink(netlink, left.index, backends, {
        ...tuning,
        ...left.options,
        backendId: left.backendId,
        log: options?.log,
      }),
    isStillAttached: async (index, backendId) => await readBackendId(index) === backendId,
    detachOrphan: async (index) => {
      if (!(await readBackendId(index))?.startsWith(BACKEND_ID_PREFIX)) return false;
      log.warn("detaching a device an earlier daemon left attached", {
        device: `/dev/nbd${index}`,
      });
      await netlink.disconnect(index);
      return true;
    },
    listDevices: listNbdDevices,
  };
}
