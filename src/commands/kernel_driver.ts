/**
 * The real mount driver of `serve` and `demo`: IVBS sessions over this
 * machine's NBD devices, attached the way src/nbd/attach.ts decides (netlink,
 * or ioctl where the kernel has no nbd netlink family or `nbd.attach` says
 * so). Loaded on demand, so commands that never touch a device do not pay for
 * the FFI.
 * @module
 */
import type { DaemonConfig } from "../daemon/config.ts";
import type { MountDriver } from "../daemon/driver.ts";

/** A mount driver on this machine's /dev/nbdX devices. */
export async function kernelMountDriver(config: DaemonConfig): Promise<MountDriver> {
  const [{ createSystemDriver }, { openKernelDevices }, { logger }] = await Promise.all([
    import("../daemon/system_driver.ts"),
    import("../nbd/attach.ts"),
    import("../log.ts"),
  ]);
  const log = logger("daemon");
  const kernel = await openKernelDevices(config.nbd.attach, config.nbd, logger("nbd"));
  if (kernel.kind === "ioctl" && config.nbd.attach !== "ioctl") {
    log.warn("the kernel has no nbd netlink family; devices attach through ioctl");
  }
  return createSystemDriver(config, kernel, log);
}
