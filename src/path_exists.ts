/**
 * Whether a name is there: a device node, a sysfs entry, a mount point.
 * @module
 */

/** Whether anything is at `path`; a symlink counts as itself (it is not followed). */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}
