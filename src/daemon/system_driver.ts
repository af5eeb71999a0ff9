/**
 * The real mount driver: an IVBS session per mount (src/ivbs/session.ts) and
 * the kernel NBD attachment. The kernel side is passed in by main.ts (the one
 * module that wires every layer), so this file loads no FFI by itself.
 * @module
 */
import type { Backend } from "../nbd/backend.ts";
import { IvbsSession } from "../ivbs/session.ts";
import type { Logger } from "../log.ts";
import type { DaemonConfig } from "./config.ts";
import type { DeviceAttachment, MountDriver, NbdDevice } from "./driver.ts";

/** What the daemon needs from src/nbd/kernel.ts and src/nbd/devices.ts. */
export interface NbdKernelApi {
  attachDevice(
    device: string,
    backend: Backend,
    options?: { blockSize?: number; timeoutS?: number; maxInFlight?: number; log?: Logger },
  ): Promise<DeviceAttachment>;
  listNbdDevices(): Promise<NbdDevice[]>;
}

export function createSystemDriver(
  config: DaemonConfig,
  kernel: NbdKernelApi,
  log?: Logger,
): MountDriver {
  const { ivbs, nbd } = config;
  return {
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
    attach: (device, backend, options) =>
      kernel.attachDevice(device, backend, {
        blockSize: nbd.blockSize,
        timeoutS: nbd.timeoutS,
        maxInFlight: nbd.maxInFlight,
        log: options?.log,
      }),
    listDevices: () => kernel.listNbdDevices(),
  };
}
