/**
 * The credential store: what each live mount and each API export needs to
 * log in again, so that the next daemon (after `kill -9`, SIGTERM or an
 * upgrade) can take them over when their user is not in its config: mounts
 * and exports made through the API or by the CSI plugin, whose passwords the
 * config never holds.
 *
 * Why a file, and where: the next daemon is a new process, so the secret must
 * outlive this one, but it must not outlive the machine: after a reboot the
 * devices are gone and a password on disk would only be a liability. By
 * default the file is `<runtime dir>/credentials.json`, which for root is
 * /run/ivbsnetd (tmpfs, emptied at boot); `credentials.keepInStateDir` or
 * `credentials.path` move it where the operator asks (for hosts where /run is
 * not a tmpfs). The directory is 0700 and the file 0600, both owned by us,
 * and written atomically; an entry leaves the file when its mount or export
 * is removed, and the file goes when there is none. A file that others could
 * read or replace (wrong owner, group/other bits, a symlink) is not used.
 * Nothing here ever logs a password: lines name the file and the problem.
 * @module
 */
import { z } from "zod";
import { errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";
import { prepareStateDir } from "./export_table.ts";
import { removeIfPresent, writePrivateFile, WriteQueue } from "./state_file.ts";

/** A mount's credentials, found again by the device's backend id. */
export interface MountCredential {
  backendId: string;
  username: string;
  password: string;
}

/** An export's credentials, found again by its name. */
export interface ExportCredential {
  name: string;
  username: string;
  password: string;
}

export interface CredentialSet {
  mounts: MountCredential[];
  exports: ExportCredential[];
}

const FORMAT_VERSION = 1;
/** Far above any real file (hundreds of entries); a bigger one is not ours. */
const MAX_FILE_BYTES = 4 * 1024 * 1024;

const Secret = z.object({
  username: z.string().min(1).max(256),
  password: z.string().max(4096),
});

const FileSchema = z.object({
  version: z.literal(FORMAT_VERSION),
  mounts: z.array(Secret.extend({ backendId: z.string().min(1).max(200) })),
  exports: z.array(Secret.extend({ name: z.string().min(1).max(4096) })),
});

/** Lookups over what the previous daemon stored. */
export class StoredCredentials {
  readonly #mounts: Map<string, MountCredential>;
  readonly #exports: Map<string, ExportCredential>;

  constructor(set: CredentialSet = { mounts: [], exports: [] }) {
    this.#mounts = new Map(set.mounts.map((m) => [m.backendId, m]));
    this.#exports = new Map(set.exports.map((e) => [e.name, e]));
  }

  /** The password the device with `backendId` was mounted with, when it was `username`. */
  mountPassword(backendId: string, username: string): string | undefined {
    const found = this.#mounts.get(backendId);
    return found?.username === username ? found.password : undefined;
  }

  /** The password export `name` was added with, when it was `username`. */
  exportPassword(name: string, username: string): string | undefined {
    const found = this.#exports.get(name);
    return found?.username === username ? found.password : undefined;
  }
}

export class CredentialStore {
  readonly path: string;
  readonly #log: Logger;
  readonly #queue: WriteQueue;

  constructor(path: string, log: Logger) {
    this.path = path;
    this.#log = log;
    this.#queue = new WriteQueue((error) => {
      this.#log.error(
        "cannot save the credential store; a restart cannot take over mounts of users not in the config",
        { path, error: errorMessage(error) },
      );
    });
  }

  /**
   * What the previous daemon stored; empty when there is no file or it cannot
   * be trusted (one error line says why). Never throws.
   */
  async load(): Promise<StoredCredentials> {
    try {
      const set = await this.#read();
      return new StoredCredentials(set ?? undefined);
    } catch (error) {
      this.#log.error("ignoring the credential store", {
        path: this.path,
        error: errorMessage(error),
      });
      return new StoredCredentials();
    }
  }

  async #read(): Promise<CredentialSet | null> {
    let info: Deno.FileInfo;
    try {
      info = await Deno.lstat(this.path);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return null;
      throw error;
    }
    if (!info.isFile) throw new Error("not a regular file");
    const uid = ownUid();
    if (uid !== null && info.uid !== null && info.uid !== uid) {
      throw new Error(`owned by uid ${info.uid}, not by us (uid ${uid})`);
    }
    if (info.mode !== null && (info.mode & 0o077) !== 0) {
      throw new Error(`mode ${(info.mode & 0o777).toString(8)}: others could read it`);
    }
    if (info.size > MAX_FILE_BYTES) throw new Error(`${info.size} bytes is too big`);
    const bytes = await Deno.readFile(this.path);
    if (bytes.length > MAX_FILE_BYTES) throw new Error(`${bytes.length} bytes is too big`);
    let value: unknown;
    try {
      value = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      // Never the parser's message: it could quote a password.
      throw new Error("not JSON");
    }
    const parsed = FileSchema.safeParse(value);
    if (!parsed.success) {
      // Paths of the problems only, never the values.
      const where = parsed.error.issues.slice(0, 3).map((i) => i.path.join(".") || "(top)");
      throw new Error(`not a credential file (format ${FORMAT_VERSION}): at ${where.join(", ")}`);
    }
    return parsed.data;
  }

  /**
   * Replaces the stored set (removes the file when it is empty). Writes are
   * serialized; resolves once on disk, or failed and logged.
   */
  write(set: CredentialSet): Promise<void> {
    const snapshot: CredentialSet = {
      mounts: set.mounts.map((m) => ({ ...m })),
      exports: set.exports.map((e) => ({ ...e })),
    };
    return this.#queue.run(async () => {
      if (snapshot.mounts.length === 0 && snapshot.exports.length === 0) {
        await removeIfPresent(this.path);
        return;
      }
      await prepareStateDir(parentDir(this.path), this.#log);
      const text = JSON.stringify({ version: FORMAT_VERSION, ...snapshot }, null, 2) + "\n";
      await writePrivateFile(this.path, text);
    });
  }
}

function ownUid(): number | null {
  try {
    return Deno.uid();
  } catch {
    return null;
  }
}

function parentDir(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash <= 0 ? "/" : path.slice(0, slash);
}
