/**
 * The daemon's state file, `<stateDir>/mounts.json`: what a daemon started
 * after this one (after a crash, an OOM kill or an upgrade) needs to take
 * over the devices this one left attached. One record per mount that can
 * outlive the process (netlink-attached); no passwords: the user is named and
 * its password comes from the config of the daemon that takes over.
 *
 * Written atomically (a 0600 temp file in the same directory, fsync, rename),
 * so a crash leaves the old or the new file, never half of one. The file
 * carries its format's version; every earlier format is read, a newer one is
 * refused and left as it is.
 * @module
 */
import { z } from "zod";
import { MAX_CONNECTIONS } from "../block/device.ts";

export const STATE_FILE = "mounts.json";
/**
 * The format this daemon writes. Every earlier one is read (see `migrate`):
 * 1 (ivbsnetd up to 6320cf8, and main until format 2): `connections` and
 *   `exports` optional (absent: 1 and none).
 * 2: each mount records the sockets its device was connected with.
 */
export const STATE_VERSION = 2;

export interface MountRecord {
  /** "/dev/nbdN" */
  device: string;
  index: number;
  /** The kernel's /sys/block/nbdN/backend: proves the device is still ours. */
  backendId: string;
  image: string;
  username: string;
  readOnly: boolean;
  /** Size the device was connected with; the image must still have it. */
  sizeBytes: number;
  /** Settings the device was connected with. */
  options: { blockSize: number; timeoutS: number; deadConnTimeoutS: number };
  /** Sockets the device was connected with (a take-over hands it as many). */
  connections: number;
}

/** An NBD export, so that the next daemon serves it again at the same socket. */
export interface ExportRecord {
  name: string;
  image: string;
  username: string;
  readOnly: boolean;
}

export interface DaemonState {
  version: typeof STATE_VERSION;
  /** The daemon that wrote the file. */
  pid: number;
  writtenAt: string;
  mounts: MountRecord[];
  /** Exports to serve again. */
  exports: ExportRecord[];
}

const RecordSchema = z.object({
  device: z.string().regex(/^\/dev\/nbd\d+$/),
  index: z.number().int().min(0),
  backendId: z.string().min(1).max(200),
  image: z.string().min(1),
  username: z.string().min(1),
  readOnly: z.boolean(),
  sizeBytes: z.number().int().positive(),
  options: z.object({
    blockSize: z.number().int().positive(),
    timeoutS: z.number().int().min(0),
    deadConnTimeoutS: z.number().int().min(0),
  }),
  connections: z.number().int().min(1).max(MAX_CONNECTIONS),
});

const ExportRecordSchema = z.object({
  name: z.string().min(1).max(4096),
  image: z.string().min(1),
  username: z.string().min(1),
  readOnly: z.boolean(),
});

const StateV1Schema = z.object({
  version: z.literal(1),
  pid: z.number().int(),
  writtenAt: z.string(),
  mounts: z.array(RecordSchema.extend({ connections: RecordSchema.shape.connections.optional() })),
  exports: z.array(ExportRecordSchema).default([]),
});

const StateV2Schema = z.object({
  version: z.literal(2),
  pid: z.number().int(),
  writtenAt: z.string(),
  mounts: z.array(RecordSchema),
  exports: z.array(ExportRecordSchema),
});

/** Each format's schema and how its content becomes the current format. */
const FORMATS: Record<number, (value: unknown) => DaemonState> = {
  1: (value) => {
    const v1 = StateV1Schema.parse(value);
    return {
      ...v1,
      version: 2,
      mounts: v1.mounts.map((m) => ({ ...m, connections: m.connections ?? 1 })),
    };
  },
  2: (value) => StateV2Schema.parse(value),
};

/** A state file that exists but cannot be used. */
export class StateFileError extends Error {
  readonly code = "STATE_FILE";
  /**
   * "newer": written by a newer ivbsnetd in a format this one does not know;
   * it must be left as it is (a downgrade must not destroy what the newer
   * daemon left). "unreadable": damaged or not a state file.
   */
  readonly reason: "newer" | "unreadable";
  constructor(message: string, reason: "newer" | "unreadable" = "unreadable") {
    super(message);
    this.name = "StateFileError";
    this.reason = reason;
  }
}

export function statePath(stateDir: string): string {
  return `${stateDir === "/" ? "" : stateDir}/${STATE_FILE}`;
}

/** The state a previous daemon left (in any format up to ours), or null when there is none. */
export async function readState(stateDir: string): Promise<DaemonState | null> {
  const path = statePath(stateDir);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw new StateFileError(`cannot read ${path}: ${(error as Error).message}`);
  }
  return parseState(text, path);
}

/** A state file's text in any known format, as the current format. */
export function parseState(text: string, path: string): DaemonState {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new StateFileError(`${path} is not JSON: ${(error as Error).message}`);
  }
  const version = typeof value === "object" && value !== null
    ? (value as { version?: unknown }).version
    : undefined;
  if (typeof version !== "number" || !Number.isInteger(version) || version < 1) {
    throw new StateFileError(`${path} is not a state file (no format version)`);
  }
  if (version > STATE_VERSION) {
    throw new StateFileError(
      `${path} is in state format ${version}, written by a newer ivbsnetd; this one reads formats 1 to ${STATE_VERSION}`,
      "newer",
    );
  }
  try {
    return FORMATS[version](value);
  } catch (error) {
    const detail = error instanceof z.ZodError
      ? error.issues.slice(0, 3).map((i) => `${i.path.join(".") || "(top)"}: ${i.message}`)
        .join("; ")
      : String(error);
    throw new StateFileError(`${path} is not a valid format ${version} state file: ${detail}`);
  }
}

/**
 * Replaces `path` atomically with `text`: a 0600 temp file in the same
 * directory, fsync, rename; a crash leaves the old or the new file.
 */
export async function writePrivateFile(path: string, text: string): Promise<void> {
  const temp = `${path}.${Deno.pid}.tmp`;
  const file = await Deno.open(temp, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    await file.write(new TextEncoder().encode(text));
    await file.sync();
  } finally {
    file.close();
  }
  await Deno.chmod(temp, 0o600); // mode on create is masked by the umask
  await Deno.rename(temp, path);
}

/** Removes `path`; one that is not there is fine. */
export async function removeIfPresent(path: string): Promise<void> {
  await Deno.remove(path).catch((error) => {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  });
}

/**
 * Replaces the state file atomically with `mounts` and `exports` (removes it
 * when there are neither). Creates `stateDir` (0700) if needed.
 */
export async function writeState(
  stateDir: string,
  mounts: MountRecord[],
  exports: ExportRecord[] = [],
): Promise<void> {
  const path = statePath(stateDir);
  if (mounts.length === 0 && exports.length === 0) {
    await removeIfPresent(path);
    return;
  }
  await Deno.mkdir(stateDir, { recursive: true, mode: 0o700 });
  const state: DaemonState = {
    version: STATE_VERSION,
    pid: Deno.pid,
    writtenAt: new Date().toISOString(),
    mounts,
    exports,
  };
  await writePrivateFile(path, JSON.stringify(state, null, 2) + "\n");
}

/**
 * Runs writes one after the other: a slow disk never reorders two states. A
 * failed write is reported and does not stop the next one.
 */
export class WriteQueue {
  readonly #onError: (error: unknown) => void;
  #chain: Promise<void> = Promise.resolve();

  constructor(onError: (error: unknown) => void) {
    this.#onError = onError;
  }

  /** Queues `task`; resolves once it has run (or failed and was reported). */
  run(task: () => Promise<void>): Promise<void> {
    this.#chain = this.#chain.then(task).catch(this.#onError);
    return this.#chain;
  }
}

/** Writes the latest records once the previous write has finished. */
export class StateWriter {
  readonly #stateDir: string;
  readonly #queue: WriteQueue;

  constructor(stateDir: string, onError: (error: unknown) => void) {
    this.#stateDir = stateDir;
    this.#queue = new WriteQueue(onError);
  }

  /** Queues a write; resolves once it is on disk (or failed and was reported). */
  write(mounts: MountRecord[], exports: ExportRecord[] = []): Promise<void> {
    const snapshot = mounts.map((m) => ({ ...m, options: { ...m.options } }));
    const exported = exports.map((e) => ({ ...e }));
    return this.#queue.run(() => writeState(this.#stateDir, snapshot, exported));
  }
}
