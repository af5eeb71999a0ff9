/**
 * Taking the devices over from the previous daemon, in two halves, so that
 * `serve --replace` does the slow one while the old daemon still serves:
 * `prepareAdoptions` logs in for every device the old daemon's state file
 * lists and attaches each image (the devices untouched); after the old daemon
 * has left, `Daemon.restore` claims each prepared adoption and only hands the
 * kernel its new socket. What is not claimed (a device unmounted meanwhile)
 * is abandoned: its session closed, the device left alone.
 * @module
 */
import { errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";
import type { StoredCredentials } from "./credential_store.ts";
import type { MountTable } from "./mount_table.ts";
import type { PreparedAdoption } from "./mount_types.ts";
import type { MountDriver } from "./driver.ts";
import type { MountRecord } from "./state_file.ts";

/**
 * The password to log in again with: the config's for a user it names (the
 * operator's current word), else the one stored when the mount or export was
 * made (API and CSI users are never in the config); undefined when neither.
 */
export function takeoverPassword(
  users: readonly { username: string; password: string }[],
  username: string,
  stored: () => string | undefined,
): string | undefined {
  return users.find((u) => u.username === username)?.password ?? stored();
}

/** The password of a device's record, from the config or the credential store. */
export function mountPassword(
  users: readonly { username: string; password: string }[],
  stored: StoredCredentials,
  record: MountRecord,
): string | undefined {
  return takeoverPassword(
    users,
    record.username,
    () => stored.mountPassword(record.backendId, record.username),
  );
}

/** Adoptions made ready before the previous daemon stopped, by backend id. */
export class PreparedTakeover {
  readonly #adoptions = new Map<string, PreparedAdoption>();

  add(adoption: PreparedAdoption): void {
    this.#adoptions.set(adoption.record.backendId, adoption);
  }

  get size(): number {
    return this.#adoptions.size;
  }

  /** The adoption prepared for `record` (same device and backend id), taken out of the set. */
  claim(record: MountRecord): PreparedAdoption | undefined {
    const adoption = this.#adoptions.get(record.backendId);
    if (!adoption || adoption.record.device !== record.device) return undefined;
    this.#adoptions.delete(record.backendId);
    return adoption;
  }

  /** Closes the sessions of every adoption nobody claimed; the devices are not touched. */
  async abandonRest(): Promise<void> {
    const rest = [...this.#adoptions.values()];
    this.#adoptions.clear();
    await Promise.allSettled(rest.map((adoption) => adoption.abandon()));
  }
}

/**
 * Prepares the adoption of every device in `records` that still carries its
 * backend id and whose password is known. Never throws: a device that cannot
 * be prepared now is one log line and is tried again, the ordinary way, by
 * `Daemon.restore` once the previous daemon has left.
 */
export async function prepareAdoptions(
  records: readonly MountRecord[],
  deps: {
    table: MountTable;
    driver: MountDriver;
    password: (record: MountRecord) => string | undefined;
    log: Logger;
  },
): Promise<PreparedTakeover> {
  const prepared = new PreparedTakeover();
  await Promise.all(records.map(async (record) => {
    const password = deps.password(record);
    if (password === undefined) return;
    try {
      if (!(await deps.driver.isStillAttached?.(record.index, record.backendId) ?? false)) return;
      prepared.add(await deps.table.prepareAdopt(record, password));
    } catch (error) {
      deps.log.warn("cannot prepare a take-over; trying again once the old daemon has left", {
        device: record.device,
        image: record.image,
        error: errorMessage(error),
      });
    }
  }));
  return prepared;
}
