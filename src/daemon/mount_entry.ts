/**
 * One row of the mount table and what is read off it: the view (MountInfo),
 * the state shown, and the state record that lets a later daemon take the
 * device over. The table (mount_table.ts) keeps the rows and moves them
 * through their lifecycle.
 * @module
 */
import type { DeviceAttachment, NbdDevice } from "./driver.ts";
import { combinedBackend, connectionInfos, type MountSessions } from "./mount_sessions.ts";
import type { DeviceInfo, MountInfo, MountState } from "./mount_types.ts";
import { RateSampler } from "./rate.ts";
import type { MountRecord } from "./state_file.ts";
import type { MountCredential } from "./credential_store.ts";

export interface MountEntry {
  device: string;
  image: string;
  username: string;
  /** Kept for the credential store (the next daemon logs in with it); never shown. */
  password: string;
  readOnly: boolean;
  state: "mounting" | "mounted" | "unmounting";
  mountedAt: Date;
  /** One IVBS session per connection (none until they are open). */
  sessions: MountSessions;
  attachment: DeviceAttachment | null;
  /** Settles when the mount attempt has finished either way. */
  settled: Promise<unknown>;
  rate: RateSampler;
}

/** A mount being made; `finish` settles it once the attempt is over, either way. */
export function newMountEntry(
  now: () => number,
  device: string,
  image: string,
  username: string,
  readOnly: boolean,
  password: string,
): { entry: MountEntry; finish: () => void } {
  let finish!: () => void;
  const entry: MountEntry = {
    device,
    image,
    username,
    password,
    readOnly,
    state: "mounting",
    mountedAt: new Date(),
    sessions: { backends: [], watches: [] },
    attachment: null,
    settled: new Promise<void>((resolve) => finish = resolve),
    rate: new RateSampler(now),
  };
  return { entry, finish };
}

/** "reconnecting" while any connection's session is between proxies. */
export function mountState(entry: MountEntry): MountState {
  const reconnecting = entry.sessions.backends.some((backend) => backend.proxy === null);
  if (entry.state === "mounted" && reconnecting) return "reconnecting";
  return entry.state;
}

/** The state record of a mount that outlives the daemon; null for any other. */
export function mountRecord(entry: MountEntry): MountRecord | null {
  const persistent = entry.attachment?.persistent;
  if (!persistent || entry.state === "unmounting") return null;
  return {
    device: entry.device,
    index: persistent.index,
    backendId: persistent.backendId,
    image: entry.image,
    username: entry.username,
    readOnly: entry.readOnly,
    sizeBytes: persistent.sizeBytes,
    options: { ...persistent.options },
    connections: persistent.connections,
  };
}

/** What a mount that outlives the daemon needs to log in again; null for any other. */
export function mountCredential(entry: MountEntry): MountCredential | null {
  const persistent = entry.attachment?.persistent;
  if (!persistent || entry.state === "unmounting") return null;
  return { backendId: persistent.backendId, username: entry.username, password: entry.password };
}

/** A kernel device as `lista` shows it, joined with the table's entry on it. */
export function deviceInfo(d: NbdDevice, entry: MountEntry | undefined): DeviceInfo {
  return {
    device: d.device,
    index: d.index,
    inUse: d.inUse || entry !== undefined,
    sizeBytes: d.sizeBytes,
    pid: d.pid,
    image: entry?.image ?? null,
    state: entry ? mountState(entry) : d.inUse ? "foreign" : "free",
  };
}

/** What views show of a mount: the kernel side's counters where attached, else the sessions'. */
export function mountInfo(entry: MountEntry): MountInfo {
  const io = entry.attachment?.stats;
  const session = combinedBackend(entry.sessions.backends)?.stats;
  const bytesRead = io?.bytesRead ?? session?.bytesRead ?? 0;
  const bytesWritten = io?.bytesWritten ?? session?.bytesWritten ?? 0;
  const throughput = entry.rate.update(bytesRead, bytesWritten);
  const first = entry.sessions.backends[0];
  return {
    device: entry.device,
    image: entry.image,
    username: entry.username,
    state: mountState(entry),
    sizeBytes: first?.size ?? 0,
    readOnly: entry.readOnly,
    proxy: first?.proxy ?? null,
    inFlight: io?.inFlight ?? session?.inFlight ?? 0,
    reads: io?.reads ?? 0,
    writes: io?.writes ?? 0,
    bytesRead,
    bytesWritten,
    errors: io?.errors ?? 0,
    failovers: session?.failovers ?? 0,
    reconnects: session?.reconnects ?? 0,
    retries: session?.retries ?? 0,
    mountedAt: entry.mountedAt.toISOString(),
    throughput,
    connections: connectionInfos(entry.sessions.backends, entry.attachment),
  };
}
