/**
 * Whether this host can attach NBD devices now, for the operator at a glance
 * (start-up line, `GET /api/health`, /metrics, the status page) rather than
 * only when a mount fails: is the nbd module loaded, how many devices are
 * free, and if mounts cannot work, why. NBD exports need none of this.
 * @module
 */
import { listNbdDevices } from "./devices.ts";
import { pathExists } from "../path_exists.ts";

/** The `nbd` part of `GET /api/health`. */
export interface NbdHealth {
  /** The kernel has the nbd driver (module loaded or built in). */
  module: boolean;
  /** Devices neither configured nor served; null when unknown (no module, sysfs unreadable). */
  freeDevices: number | null;
  /** Why a mount would fail now; absent when mounts can work. */
  reason?: string;
}

/** What the judgement rests on. */
export interface NbdHostFacts {
  module: boolean;
  /** Every nbd device; null when they could not be read. */
  devices: readonly { inUse: boolean }[] | null;
  /** The kernel adds a device when none is free (netlink CONNECT without an index). */
  kernelAddsDevices: boolean;
  /** Our effective uid; null when unknown (then not judged). */
  uid: number | null;
  /** Why `devices` is null. */
  readError?: string;
}

/** The health the facts add up to; the first reason that blocks a mount wins. */
export function judgeNbdHealth(facts: NbdHostFacts): NbdHealth {
  if (!facts.module) {
    return {
      module: false,
      freeDevices: null,
      reason: "the nbd kernel module is not loaded (as root: modprobe nbd)",
    };
  }
  if (facts.devices === null) {
    return {
      module: true,
      freeDevices: null,
      reason: `cannot read the nbd devices: ${facts.readError ?? "unknown error"}`,
    };
  }
  const freeDevices = facts.devices.filter((d) => !d.inUse).length;
  if (facts.uid !== null && facts.uid !== 0) {
    return {
      module: true,
      freeDevices,
      reason: `not running as root (uid ${facts.uid}); attaching /dev/nbdX needs root`,
    };
  }
  if (freeDevices === 0 && !facts.kernelAddsDevices) {
    const reason = facts.devices.length === 0
      ? "the nbd module has no devices (nbds_max=0) and attaches by ioctl, which cannot add one"
      : `all ${facts.devices.length} nbd devices are in use`;
    return { module: true, freeDevices, reason };
  }
  return { module: true, freeDevices };
}

function effectiveUid(): number | null {
  try {
    return Deno.uid();
  } catch {
    return null;
  }
}

/** This host's nbd health from sysfs; never throws. */
export async function readNbdHealth(
  options: { kernelAddsDevices: boolean },
): Promise<NbdHealth> {
  let devices: { inUse: boolean }[] | null = null;
  let readError: string | undefined;
  try {
    devices = await listNbdDevices();
  } catch (error) {
    readError = (error as Error).message;
  }
  // A built-in nbd shows in /sys/module too (it has parameters); devices prove it either way.
  const module = (devices !== null && devices.length > 0) || await pathExists("/sys/module/nbd");
  return judgeNbdHealth({
    module,
    devices,
    kernelAddsDevices: options.kernelAddsDevices,
    uid: effectiveUid(),
    readError,
  });
}
