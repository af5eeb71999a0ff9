/**
 * Filesystem work of the CSI node on top of a Host: probe a device for a
 * signature, format a blank one, mount, bind-mount, unmount, and statfs. Every
 * program failure becomes a CsiError (INTERNAL) naming the program and the
 * first line it printed; a device is formatted only after blkid's low-level
 * probe found no signature at all (no filesystem, no partition table, no RAID
 * member), so data is never formatted over.
 * @module
 */
import type { Filesystem } from "./capability.ts";
import type { CommandResult, Host } from "./host.ts";
import { type MountEntry, parseMountInfo } from "./mountinfo.ts";
import { Code, CsiError } from "./status.ts";

/** What statfs(2) says about a mounted filesystem. */
export interface FsUsage {
  bytesTotal: number;
  bytesAvailable: number;
  bytesUsed: number;
  inodesTotal: number;
  inodesFree: number;
  inodesUsed: number;
}

/** mkfs per filesystem: quiet, no discard of a whole network-backed device first. */
const MKFS: Record<Filesystem, { command: string; args: readonly string[] }> = {
  // -F: it is a whole device, not a partition (mke2fs asks otherwise).
  ext4: { command: "mkfs.ext4", args: ["-q", "-F", "-E", "nodiscard"] },
  // No -f: mkfs.xfs itself refuses a device that holds a signature.
  xfs: { command: "mkfs.xfs", args: ["-q", "-K"] },
};

/** blkid's exit status when the probe found nothing on the device. */
const BLKID_NOTHING_FOUND = 2;

export class VolumeFs {
  constructor(readonly host: Host) {}

  async #run(command: string, args: readonly string[]): Promise<CommandResult> {
    let result: CommandResult;
    try {
      result = await this.host.run(command, args);
    } catch (error) {
      const why = error instanceof Deno.errors.NotFound ? "not installed" : String(error);
      throw new CsiError(Code.INTERNAL, `${command}: ${why}`);
    }
    return result;
  }

  async #mustRun(command: string, args: readonly string[]): Promise<CommandResult> {
    const result = await this.#run(command, args);
    if (result.code !== 0) {
      const line = (result.stderr.trim() || result.stdout.trim()).split("\n")[0].slice(0, 300);
      throw new CsiError(Code.INTERNAL, `${command} failed (exit ${result.code}): ${line}`);
    }
    return result;
  }

  /** The mount table, newest last. */
  async mounts(): Promise<MountEntry[]> {
    return parseMountInfo(await this.host.readMountInfo());
  }

  /**
   * The signature on `device` ("ext4", "xfs", "gpt"…), or null when the
   * low-level probe finds none: only then may the device be formatted.
   */
  async signature(device: string): Promise<string | null> {
    const result = await this.#run("blkid", ["-p", "-o", "export", device]);
    if (result.code === BLKID_NOTHING_FOUND) return null;
    if (result.code !== 0) {
      const line = result.stderr.trim().split("\n")[0].slice(0, 300);
      throw new CsiError(Code.INTERNAL, `blkid -p ${device} failed (exit ${result.code}): ${line}`);
    }
    const fields = new Map(
      result.stdout.split("\n").map((line) => line.split("=", 2) as [string, string]),
    );
    return fields.get("TYPE") ?? fields.get("PTTYPE") ?? "unknown";
  }

  async format(device: string, fsType: Filesystem): Promise<void> {
    const mkfs = MKFS[fsType];
    await this.#mustRun(mkfs.command, [...mkfs.args, device]);
  }

  async mount(source: string, target: string, fsType: string, options: string[]): Promise<void> {
    const args = ["-t", fsType];
    if (options.length > 0) args.push("-o", options.join(","));
    await this.#mustRun("mount", [...args, source, target]);
  }

  /** Bind-mounts `source` on `target`; read-only takes a second, remounting step (mount(8)). */
  async bind(source: string, target: string, readOnly: boolean): Promise<void> {
    await this.#mustRun("mount", ["--bind", source, target]);
    if (!readOnly) return;
    try {
      await this.#mustRun("mount", ["-o", "remount,bind,ro", target]);
    } catch (error) {
      await this.unmount(target);
      throw error;
    }
  }

  async unmount(target: string): Promise<void> {
    await this.#mustRun("umount", [target]);
  }

  /** statfs(2) of the filesystem mounted at `path`, through `stat -f`. */
  async usage(path: string): Promise<FsUsage> {
    // %S fundamental block size, %b blocks, %f free, %a available, %c inodes, %d free inodes.
    const result = await this.#mustRun("stat", ["-f", "-c", "%S %b %f %a %c %d", path]);
    const numbers = result.stdout.trim().split(/\s+/).map(Number);
    if (numbers.length !== 6 || numbers.some((n) => !Number.isSafeInteger(n) || n < 0)) {
      throw new CsiError(Code.INTERNAL, `stat -f ${path}: unexpected output`);
    }
    const [blockSize, blocks, free, available, inodes, inodesFree] = numbers;
    return {
      bytesTotal: blocks * blockSize,
      bytesAvailable: available * blockSize,
      bytesUsed: (blocks - free) * blockSize,
      inodesTotal: inodes,
      inodesFree,
      inodesUsed: inodes - inodesFree,
    };
  }
}
