/**
 * The real mount driver: an IVBS session per mount (src/ivbs/session.ts) and
 * the kernel NBD attachment, through generic netlink where the kernel has it
 * (devices then outlive the daemon) and the ioctl interface otherwise or when
 * `nbd.attach` is "ioctl". The kernel side is passed in by the commands
 * (src/commands/kernel_driver.ts), so this file loads no FFI by itself.
 * @module
 */
import type { Backend } from "../block/backend.ts";
import type { NetlinkAttachedDevice, NetlinkAttachOptions } from "../nbd/netlink_attach.ts";
import { IvbsSession } from "../ivbs/session.ts";
import { IvbsConnection } from "../ivbs/connection.ts";
import type { Logger } from "../log.ts";
import { type DaemonConfig, parseListenAddress } from "./config.ts";
import type { NbdHealth } from "../nbd/host_health.ts";
import type { DeviceAttachment, MountDriver, NbdDevice } from "./driver.ts";

/** What the daemon needs from src/nbd/kernel.ts and src/nbd/devices.ts. */
export interface NbdKernelApi {
  attachDevice(
    device: string,
    backend: Backend,
    options?: { blockSize?: number; timeoutS?: number; maxInFlight?: number; log?: Logger },
  ): Promise<DeviceAttachment>;
  listNbdDevices(): Promise<NbdDevice[]>;
  /** The host's nbd health (src/nbd/host_health.ts); never throws. */
  readNbdHealth?(options: { kernelAddsDevices: boolean }): Promise<NbdHealth>;
  /** The netlink interface (src/nbd/netlink_attach.ts); null where the kernel lacks it. */
  netlink?: NetlinkKernelApi | null;
}

export interface NetlinkKernelApi {
  attach(backend: Backend, options: NetlinkAttachOptions): Promise<NetlinkAttachedDevice>;
  reattach(
    index: number,
    backend: Backend,
    options: NetlinkAttachOptions,
  ): Promise<NetlinkAttachedDevice>;
  readBackendId(index: number): Promise<string | null>;
  newBackendId(): string;
  /** NBD_CMD_DISCONNECT of a device. */
  disconnect(index: number): Promise<void>;
}

/** Backend ids of our devices start so (src/nbd/netlink_attach.ts newBackendId). */
const BACKEND_ID_PREFIX = "ivbsnetd:";

/** A netlink attachment as the mount table sees it: persistent. */
function persistentAttachment(
  attached: NetlinkAttachedDevice,
  sizeBytes: number,
  options: { blockSize: number; timeoutS: number; deadConnTimeoutS: number },
): DeviceAttachment {
  return {
    device: attached.device,
    stats: attached.stats,
    detach: () => attached.detach(),
    done: attached.done,
    persistent: {
      index: attached.index,
      backendId: attached.backendId,
      sizeBytes,
      options,
      release: () => attached.release(),
    },
  };
}

export function createSystemDriver(
  config: DaemonConfig,
  kernel: NbdKernelApi,
  log?: Logger,
): MountDriver {
  const { ivbs, nbd } = config;
  const netlink = nbd.attach === "ioctl" ? null : kernel.netlink ?? null;
  if (nbd.attach === "netlink" && netlink === null) {
    log?.error(
      'nbd.attach is "netlink" but the kernel has no nbd netlink family; mounts will fail',
    );
  }
  const settings = {
    blockSize: nbd.blockSize,
    timeoutS: nbd.timeoutS,
    deadConnTimeoutS: nbd.deadConnTimeoutS,
  };
  const netlinkOptions = (
    backendId: string,
    options: typeof settings,
  ): NetlinkAttachOptions => ({
    ...options,
    backendId,
    maxInFlight: nbd.maxInFlight,
    requeueAfterS: nbd.requeueAfterS,
  });
  const driver: MountDriver = {
    openBackend: (request) =>
      IvbsSession.open({
        proxies: ivbs.proxies,
        image: request.image,
        username: request.username,
        password: request.password,
        readOnly: request.readOnly,
        deadPeerTimeoutMs: ivbs.deadPeerTimeoutMs,
        ioTimeoutMs: ivbs.ioTimeoutMs,
        connectTimeoutMs: ivbs.connectTimeoutMs,
        backoff: ivbs.backoff,
        maxInFlightBytes: ivbs.maxInFlightBytes,
        liveness: ivbs.liveness,
        onEvent: request.onEvent,
        log: request.log ?? log,
      }),
    attach: async (device, backend, options) => {
      if (netlink === null) {
        if (nbd.attach === "netlink") {
          throw Object.assign(
            new Error(`Cannot attach ${device}: the kernel has no nbd netlink family`),
            { code: "NO_MODULE" },
          );
        }
        return await kernel.attachDevice(device, backend, {
          blockSize: nbd.blockSize,
          timeoutS: nbd.timeoutS,
          maxInFlight: nbd.maxInFlight,
          log: options?.log,
        });
      }
      const index = device === "auto" ? undefined : Number(device.replace("/dev/nbd", ""));
      const attached = await netlink.attach(backend, {
        ...netlinkOptions(netlink.newBackendId(), settings),
        index,
        log: options?.log,
      });
      const sizeBytes = Math.floor(backend.size / nbd.blockSize) * nbd.blockSize;
      return persistentAttachment(attached, sizeBytes, settings);
    },
    listDevices: () => kernel.listNbdDevices(),
  };
  driver.probeProxy = async (label, signal) => {
    const address = parseListenAddress(label);
    if (address === null) throw new Error(`${label} is not host:port`);
    const connection = await IvbsConnection.open(address, {
      connectTimeoutMs: ivbs.connectTimeoutMs,
      signal,
      log,
    });
    const name = connection.proxyName;
    await connection.close("idle check done");
    return { name };
  };
  const readHealth = kernel.readNbdHealth;
  if (readHealth) driver.hostHealth = () => readHealth({ kernelAddsDevices: netlink !== null });
  if (netlink !== null) {
    Object.assign(driver, {
      picksDevice: true,
      reattach: async (request: {
        index: number;
        backendId: string;
        options: typeof settings;
      }, backend: Backend) => {
        const attached = await netlink.reattach(
          request.index,
          backend,
          netlinkOptions(request.backendId, request.options),
        );
        const size = Math.floor(backend.size / request.options.blockSize) *
          request.options.blockSize;
        return persistentAttachment(attached, size, request.options);
      },
      isStillAttached: async (index: number, backendId: string) =>
        await netlink.readBackendId(index) === backendId,
      detachOrphan: async (index: number) => {
        if (!(await netlink.readBackendId(index))?.startsWith(BACKEND_ID_PREFIX)) return false;
        log?.warn("detaching a device an earlier daemon left attached", {
          device: `/dev/nbd${index}`,
        });
        await netlink.disconnect(index);
        return true;
      },
    });
  }
  return driver;
}
