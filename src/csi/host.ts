/**
 * What the CSI node does to the host, behind one small interface so tests can
 * fake it: run a program (mount, umount, blkid, mkfs, stat), read the mount
 * table, and read a device node's number. The filesystem work built on top is
 * in volume_fs.ts.
 * @module
 */

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Host {
  /** Runs `command` with `args` (no shell), stdin closed; output decoded as UTF-8. */
  run(command: string, args: readonly string[]): Promise<CommandResult>;
  /** The text of /proc/self/mountinfo. */
  readMountInfo(): Promise<string>;
  /**
   * The device number (st_rdev) of the block device node at `path`, or null
   * when there is nothing there or it is not a block device.
   */
  deviceNumber(path: string): Promise<number | null>;
}

const decoder = new TextDecoder();

/** The real host: programs from PATH, the kernel's own mount table. */
export const systemHost: Host = {
  async run(command, args) {
    const output = await new Deno.Command(command, {
      args: [...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  },
  readMountInfo: () => Deno.readTextFile("/proc/self/mountinfo"),
  async deviceNumber(path) {
    try {
      const info = await Deno.stat(path);
      return info.isBlockDevice ? info.rdev : null;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return null;
      throw error;
    }
  },
};
