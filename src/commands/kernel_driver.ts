/**
 * The real mount driver of `serve` and `demo`: IVBS sessions over the kernel's
 * NBD devices, attached through generic netlink (ioctl where the kernel has no
 * nbd netlink family or the config asks for it). Loaded on demand, so commands
 * that never touch a device do not pay for the FFI.
 * @module
 */
import type { NetlinkKernelApi } from "../daemon/system_driver.ts";
import type { ServeDependencies } from "./serve.ts";

/** Serve dependencies that mount on this machine's /dev/nbdX devices. */
export async function kernelServeDependencies(): Promise<ServeDependencies> {
  const [{ createSystemDriver }, kernel, devices, health, { logger }] = await Promise.all([
    import("../daemon/system_driver.ts"),
    import("../nbd/kernel.ts"),
    import("../nbd/devices.ts"),
    import("../nbd/host_health.ts"),
    import("../log.ts"),
  ]);
  const api = {
    attachDevice: kernel.attachDevice,
    listNbdDevices: devices.listNbdDevices,
    readNbdHealth: health.readNbdHealth,
  };
  return {
    createDriver: async (config) => {
      const netlink = config.nbd.attach === "ioctl" ? null : await openNetlink();
      return createSystemDriver(config, { ...api, netlink }, logger("daemon"));
    },
  };
}

/** The kernel's nbd netlink interface, or null where it has none (then devices use ioctl). */
async function openNetlink(): Promise<NetlinkKernelApi | null> {
  const [{ NbdNetlink }, attach, { logger }] = await Promise.all([
    import("../nbd/netlink.ts"),
    import("../nbd/netlink_attach.ts"),
    import("../log.ts"),
  ]);
  let netlink;
  try {
    netlink = await NbdNetlink.open();
  } catch (error) {
    logger("daemon").warn("cannot open the nbd netlink interface; using ioctl", { error });
    return null;
  }
  if (netlink === null) return null;
  return {
    attach: (backend, options) => attach.attachNetlink(netlink, backend, options),
    reattach: (index, backend, options) => attach.reattachNetlink(netlink, index, backend, options),
    readBackendId: attach.readBackendId,
    newBackendId: attach.newBackendId,
    disconnect: (index) => netlink.disconnect(index),
  };
}
