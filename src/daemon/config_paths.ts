/**
 * Where the daemon's runtime files go when the config does not say: the state
 * directory and the credential store (README, "Restarts and upgrades").
 * @module
 */

/**
 * Where runtime files go when the config does not say: /run/ivbsnetd for root,
 * else $XDG_RUNTIME_DIR/ivbsnetd, else /tmp/ivbsnetd-UID.
 */
export function defaultStateDir(uid: number | null, runtimeDir: string | undefined): string {
  if (uid === 0) return "/run/ivbsnetd";
  if (runtimeDir && runtimeDir.startsWith("/")) return `${runtimeDir.replace(/\/+$/, "")}/ivbsnetd`;
  return `/tmp/ivbsnetd-${uid ?? "user"}`;
}

/**
 * Where the credential store goes by default: in the state directory when that
 * is the runtime directory (tmpfs /run for root) or the operator asked for it
 * (`runtimeDir` null), else in the runtime directory under a name made from
 * the state directory, so two daemons with their own state directories never
 * share one file.
 */
export function defaultCredentialsPath(stateDir: string, runtimeDir: string | null): string {
  const inDir = (dir: string, name: string) => `${dir === "/" ? "" : dir}/${name}`;
  if (runtimeDir === null || runtimeDir === stateDir) return inDir(stateDir, "credentials.json");
  const escaped = stateDir.replaceAll("/", "-");
  const name = escaped.length <= 200
    ? `credentials${escaped}.json`
    : `credentials-${fnv1a(stateDir)}.json`;
  return inDir(runtimeDir, name);
}

/** FNV-1a, 32 bits, as 8 hex digits: a short stable name for a long path. */
function fnv1a(text: string): string {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(text)) {
    hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  }
  return hash.toString(16).padStart(8, "0");
}

/** defaultStateDir for this process; without sys/env permission it falls back to /tmp. */
export function processStateDir(): string {
  let uid: number | null = null;
  let runtimeDir: string | undefined;
  try {
    uid = Deno.uid();
  } catch {
    // No sys permission: not root as far as we know.
  }
  try {
    runtimeDir = Deno.env.get("XDG_RUNTIME_DIR");
  } catch {
    // No env permission.
  }
  return defaultStateDir(uid, runtimeDir);
}
