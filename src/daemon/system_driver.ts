/**
 * The real mount driver: an IVBS session per connection of a mount
 * (src/ivbs/session.ts) over the kernel's NBD devices, attached the way
 * src/nbd/attach.ts decided (netlink, or ioctl). The kernel side is passed in
 * by the commands (src/commands/kernel_driver.ts), so this file loads no FFI
 * by itself.
 * @module
 */
import type { ProxyAddress } from "../ivbs/wire.ts";
import { IvbsSession } from "../ivbs/session.ts";
import { IvbsConnection } from "../ivbs/connection.ts";
import type { Logger } from "../log.ts";
import type { KernelDevices } from "../nbd/attach.ts";
import { type DaemonConfig, parseListenAddress } from "./config.ts";
import { readNbdHealth } from "../nbd/host_health.ts";
import type { MountDriver } from "./driver.ts";

/**
 * The configured proxies with proxy `connection mod count` first and the
 * others in their order: connection i of a device starts on its own proxy
 * where there are enough, and fails over in the configured order otherwise.
 */
export function proxiesFor(proxies: readonly ProxyAddress[], connection: number): ProxyAddress[] {
  if (proxies.length === 0) return [];
  const first = connection % proxies.length;
  return [proxies[first], ...proxies.filter((_, i) => i !== first)];
}

export function createSystemDriver(
  config: DaemonConfig,
  kernel: KernelDevices,
  log?: Logger,
): MountDriver {
  const { ivbs } = config;
  const driver: MountDriver = {
    openBackend: (request) =>
      IvbsSession.open({
        proxies: proxiesFor(ivbs.proxies, request.connection ?? 0),
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
    attach: (device, backends, options) => kernel.attach(device, backends, options),
    picksDevice: kernel.picksDevice,
    maxConnections: kernel.maxConnections,
    listDevices: () => kernel.listDevices(),
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
  driver.hostHealth = () => readNbdHealth({ kernelAddsDevices: kernel.picksDevice });
  const { reattach, isStillAttached, detachOrphan } = kernel;
  if (reattach) driver.reattach = (left, backends, options) => reattach(left, backends, options);
  if (isStillAttached) driver.isStillAttached = (index, id) => isStillAttached(index, id);
  if (detachOrphan) driver.detachOrphan = (index) => detachOrphan(index);
  return driver;
}
