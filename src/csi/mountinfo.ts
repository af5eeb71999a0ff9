/**
 * /proc/self/mountinfo (proc(5)): the mount table as the kernel sees it, the
 * CSI node's only memory of what it staged and published (so a restarted CSI
 * process knows as much as the one before). A malformed line is skipped, not
 * trusted: each field is checked before use.
 * @module
 */

export interface MountEntry {
  /** "major:minor" of the filesystem's device. */
  majorMinor: string;
  /** The mount's root inside its filesystem ("/" for a whole filesystem). */
  root: string;
  mountPoint: string;
  /** Per-mount options ("ro" or "rw" first). */
  options: string[];
  fsType: string;
  /** "/dev/nbd0" for a block filesystem, "devtmpfs" and the like otherwise. */
  source: string;
}

/** `\040`-style octal escapes, as the kernel writes space, tab, newline and backslash. */
function unescape(field: string): string {
  return field.replace(
    /\\([0-7]{3})/g,
    (_, octal: string) => String.fromCharCode(parseInt(octal, 8)),
  );
}

/** Parses one line; null for a line that does not have the mountinfo shape. */
export function parseMountInfoLine(line: string): MountEntry | null {
  const fields = line.split(" ");
  const separator = fields.indexOf("-", 6);
  if (separator < 0 || fields.length < separator + 3) return null;
  const [, , majorMinor, root, mountPoint, options] = fields;
  if (!/^\d+:\d+$/.test(majorMinor) || !root.startsWith("/") || !mountPoint.startsWith("/")) {
    return null;
  }
  return {
    majorMinor,
    root: unescape(root),
    mountPoint: unescape(mountPoint),
    options: options.split(","),
    fsType: unescape(fields[separator + 1]),
    source: unescape(fields[separator + 2]),
  };
}

/** Every well-formed line of a mountinfo text, in the kernel's order (oldest first). */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split("\n")) {
    const entry = line === "" ? null : parseMountInfoLine(line);
    if (entry) entries.push(entry);
  }
  return entries;
}

/** Escapes a path the way the kernel does in mountinfo (for fakes and fixtures). */
export function escapeMountPath(path: string): string {
  return path.replace(/[\\ \t\n]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, "0")}`);
}

/** The newest mount at `path` (the one a process sees), or null. */
export function mountAt(entries: readonly MountEntry[], path: string): MountEntry | null {
  for (let i = entries.length - 1; i >= 0; i--) {
    if (entries[i].mountPoint === path) return entries[i];
  }
  return null;
}

/** Whether the mount is read-only for its users. */
export function isReadOnly(entry: MountEntry): boolean {
  return entry.options.includes("ro");
}
