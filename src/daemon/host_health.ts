/**
 * The host's nbd health as the daemon reports it: from the driver when it can
 * read the kernel (the system driver), else judged from the devices the driver
 * lists (the fake driver: no devices means no module). Said once at start-up.
 * @module
 */
import type { MountDriver } from "./driver.ts";
import type { Logger } from "../log.ts";
import { judgeNbdHealth, type NbdHealth } from "../nbd/host_health.ts";

/** The host's nbd health now; never throws. */
export async function nbdHealthOf(driver: MountDriver): Promise<NbdHealth> {
  if (driver.hostHealth) return await driver.hostHealth();
  try {
    const devices = await driver.listDevices();
    return judgeNbdHealth({
      module: devices.length > 0,
      devices,
      kernelAddsDevices: driver.picksDevice === true,
      uid: null,
    });
  } catch (error) {
    return judgeNbdHealth({
      module: true,
      devices: null,
      kernelAddsDevices: false,
      uid: null,
      readError: (error as Error).message,
    });
  }
}

/** The start-up line: info when mounts can work, warn with the reason when not. */
export function logNbdHealth(health: NbdHealth, log: Logger): void {
  const fields = { module: health.module, freeDevices: health.freeDevices };
  if (health.reason === undefined) log.info("nbd ready for mounts", fields);
  else log.warn(`nbd: mounts will fail: ${health.reason}; NBD exports work`, fields);
}
