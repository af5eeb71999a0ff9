/**
 * The daemon's state directory (the state file, the export socket): created
 * 0700, and refused when it is a symlink or someone else's.
 * @module
 */
import type { Logger } from "../log.ts";

export function parentDir(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash <= 0 ? "/" : path.slice(0, slash);
}

/**
 * Creates the state directory with mode 0700, or checks an existing one: it
 * must be a real directory (not a symlink) owned by us; one others can enter is
 * tightened to 0700. In /tmp someone else could have made it first.
 */
export async function prepareStateDir(dir: string, log: Logger): Promise<void> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const info = await Deno.lstat(dir);
  if (!info.isDirectory) {
    throw new Error(
      `state directory ${dir} is ${info.isSymlink ? "a symlink" : "not a directory"}`,
    );
  }
  let uid: number | null = null;
  try {
    uid = Deno.uid();
  } catch {
    // No sys permission: the owner cannot be compared.
  }
  if (uid !== null && info.uid !== null && info.uid !== uid) {
    throw new Error(`state directory ${dir} belongs to uid ${info.uid}, not to us (uid ${uid})`);
  }
  if (info.mode !== null && (info.mode & 0o077) !== 0) {
    log.warn("state directory was open to others; setting mode 0700", {
      dir,
      mode: (info.mode & 0o777).toString(8),
    });
    await Deno.chmod(dir, 0o700);
  }
}
