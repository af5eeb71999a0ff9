/**
 * The daemon's state file, `<stateDir>/mounts.json`: what a daemon started
 * after this one (after a crash, an OOM kill or an upgrade) needs to take
 * over the devices this one left attached. One record per mount that can
 * outlive the process (netlink-attached); no passwords: the user is named and
 * its password comes from the config of the daemon that takes over.
 *
 * Written atomically (a 0600 temp file in the same directory, fsync, rename),
 * so a crash leaves the old or the new file, never half of one.
 * @module
 */
import { z } from "zod";
import { MAX_CONNECTIONS } from "../block/device.ts";

export const STATE_FILE = "mounts.json";
const STATE_VERSION = 1;

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
  /** Sockets the device was connected with (a takeover hands it as many); older files: 1. */
  connections?: number;
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
  /** Exports to serve again (older files have none). */
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
  connections: z.number().int().min(1).max(MAX_CONNECTIONS).optional(),
});

const ExportRecordSchema = z.object({
  name: z.string().min(1).max(4096),
  image: z.string().min(1),
  username: z.string().min(1),
  readOnly: z.boolean(),
});

const StateSchema = z.object({
  version: z.literal(STATE_VERSION),
  pid: z.number().int(),
  writtenAt: z.string(),
  mounts: z.array(RecordSchema),
  exports: z.array(ExportRecordSchema).default([]),
});

/** A state file that exists but cannot be used. */
export class StateFileError extends Error {
  readonly code = "STATE_FILE";
  constructor(message: string) {
    super(message);
    this.name = "StateFileError";
  }
}

export function statePath(stateDir: string): string {
  return `${stateDir === "/" ? "" : stateDir}/${STATE_FILE}`;
}

/** The state a previous daemon left, or null when there is none. */
export async function readState(stateDir: string): Promise<DaemonState | null> {
  const path = statePath(stateDir);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw new StateFileError(`cannot read ${path}: ${(error as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new StateFileError(`${path} is not JSON: ${(error as Error).message}`);
  }
  const parsed = StateSchema.safeParse(value);
  if (!parsed.success) {
    throw new StateFileError(
      `${path} is not a state file of this version: ${parsed.error.message}`,
    );
  }
  return parsed.data as DaemonState;
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
    await Deno.remove(path).catch((error) => {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    });
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
  const temp = `${path}.${Deno.pid}.tmp`;
  const file = await Deno.open(temp, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    await file.write(new TextEncoder().encode(JSON.stringify(state, null, 2) + "\n"));
    await file.sync();
  } finally {
    file.close();
  }
  await Deno.chmod(temp, 0o600); // mode on create is masked by the umask
  await Deno.rename(temp, path);
}

/**
 * Serializes writes: each call writes the latest records once the previous
 * write has finished (a slow disk never reorders two states).
 */
export class StateWriter {
  readonly #stateDir: string;
  readonly #onError: (error: unknown) => void;
  #chain: Promise<void> = Promise.resolve();

  constructor(stateDir: string, onError: (error: unknown) => void) {
    this.#stateDir = stateDir;
    this.#onError = onError;
  }

  /** Queues a write; resolves once it is on disk (or failed and was reported). */
  write(mounts: MountRecord[], exports: ExportRecord[] = []): Promise<void> {
    const snapshot = mounts.map((m) => ({ ...m, options: { ...m.options } }));
    const exported = exports.map((e) => ({ ...e }));
    this.#chain = this.#chain.then(() => writeState(this.#stateDir, snapshot, exported)).catch(
      this.#onError,
    );
    return this.#chain;
  }
}
