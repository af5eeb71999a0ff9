/**
 * File modes of files that hold secrets (configs, password files): which bits
 * make them risky, as words for a warning.
 * @module
 */

/**
 * What is risky about a file's mode, as "is … (mode 0644)", or null: readable
 * by others leaks the secrets it holds; writable by others lets them swap what
 * it says (mounts, listen address, passwords). `secret` = it holds passwords.
 */
export function looseMode(mode: number | null, secret: boolean): string | null {
  if (mode === null) return null;
  const problems: string[] = [];
  if (secret && (mode & 0o044) !== 0) problems.push("readable by group/others");
  if ((mode & 0o002) !== 0) problems.push("writable by others");
  else if ((mode & 0o020) !== 0) problems.push("writable by its group");
  if (problems.length === 0) return null;
  return `is ${problems.join(" and ")} (mode ${(mode & 0o777).toString(8).padStart(4, "0")})`;
}
