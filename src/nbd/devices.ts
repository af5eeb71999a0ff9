/**
 * NBD devices as the kernel shows them in sysfs: /sys/block/nbdN has a `pid`
 * file while a process serves it (NBD_DO_IT running) and a non-zero `size`
 * (in 512-byte sectors) while it is configured. Either means in use.
 * @module
 */

import type { NbdDevice } from "../block/device.ts";

const SYS_BLOCK = "/sys/block";
const DEVICE_PATTERN = /^\/dev\/nbd(\d+)$/;

/** A device as sysfs shows it (the contract in src/block/device.ts). */
export type NbdDeviceInfo = NbdDevice;

/** The index of "/dev/nbdN", or null for anything else. */
export function nbdIndex(device: string): number | null {
  const match = DEVICE_PATTERN.exec(device);
  return match ? Number(match[1]) : null;
}

async function readTrimmed(path: string): Promise<string | null> {
  try {
    return (await Deno.readTextFile(path)).trim();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

/** The sysfs view of one device, or null when the kernel has no such device. */
export async function readNbdDevice(index: number): Promise<NbdDeviceInfo | null> {
  const dir = `${SYS_BLOCK}/nbd${index}`;
  const size = await readTrimmed(`${dir}/size`);
  if (size === null) return null;
  const pidText = await readTrimmed(`${dir}/pid`);
  const pid = pidText === null || pidText === "" ? null : Number(pidText);
  const sizeBytes = (Number(size) || 0) * 512;
  return {
    device: `/dev/nbd${index}`,
    index,
    inUse: pid !== null || sizeBytes > 0,
    sizeBytes,
    pid: pid !== null && Number.isFinite(pid) ? pid : null,
  };
}

/** Every nbd device, by index; [] when the nbd module is not loaded. */
export async function listNbdDevices(): Promise<NbdDeviceInfo[]> {
  const indexes: number[] = [];
  try {
    for await (const entry of Deno.readDir(SYS_BLOCK)) {
      const match = /^nbd(\d+)$/.exec(entry.name);
      if (match) indexes.push(Number(match[1]));
    }
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
  indexes.sort((a, b) => a - b);
  const devices = await Promise.all(indexes.map(readNbdDevice));
  return devices.filter((device): device is NbdDeviceInfo => device !== null);
}

/** The first device not in use and not in `exclude`, or null. */
export async function findFreeDevice(exclude: Set<string> = new Set()): Promise<string | null> {
  for (const device of await listNbdDevices()) {
    if (!device.inUse && !exclude.has(device.device)) return device.device;
  }
  return null;
}
