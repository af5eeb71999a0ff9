/**
 * THE mount table: which image is on which /dev/nbdX, and the lifecycle of each
 * mount (mounting → mounted → unmounting → gone). The HTTP API, the status page,
 * the config loader and the CLI are thin views of this one table.
 *
 * A mount is made in two steps: its IVBS sessions are opened, one per
 * connection of the device (mount_sessions.ts), then handed to the kernel
 * (the driver's attach, or reattach when a previous daemon left the device).
 * @module
 */
import { errorMessage } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import { parseDeviceName } from "./device_name.ts";
import { asRefusal } from "./refusal.ts";
import type { DeviceAttachment, MountDriver, NbdDevice } from "./driver.ts";
import {
  closeSessions,
  combinedBackend,
  connectionCount,
  openSessions,
  type SessionRequest,
} from "./mount_sessions.ts";
import {
  deviceInfo,
  mountCredential,
  type MountEntry,
  mountInfo,
  mountRecord,
  newMountEntry,
} from "./mount_entry.ts";
import {
  type DeviceInfo,
  MOUNT_REFUSAL,
  MountError,
  type MountInfo,
  type MountRequest,
  type MountSnapshot,
  type MountTableOptions,
  type PreparedAdoption,
} from "./mount_types.ts";
import type { WatchSession } from "./proxy_registry.ts";
import type { MountRecord } from "./state_file.ts";
import type { MountCredential } from "./credential_store.ts";

export * from "./mount_types.ts";

export class MountTable {
  readonly #driver: MountDriver;
  readonly #deviceCount: number;
  readonly #connections: number;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #watchSession: WatchSession | undefined;
  readonly #deviceLog: ((context: { device: string }) => Logger) | undefined;
  readonly #entries = new Map<string, MountEntry>();
  readonly #onPersistentChange: () => void;
  /** Keys of mounts waiting for the kernel to pick their device. */
  #pendingSeq = 0;
  #closing = false;

  constructor(driver: MountDriver, options: MountTableOptions) {
    this.#watchSession = options.watchSession;
    this.#deviceLog = options.deviceLog;
    this.#driver = driver;
    this.#deviceCount = options.deviceCount;
    this.#connections = options.connections ?? 1;
    this.#log = options.log ?? logger("mounts");
    this.#now = options.now ?? (() => performance.now());
    this.#onPersistentChange = options.onPersistentChange ?? (() => {});
  }

  get deviceCount(): number {
    return this.#deviceCount;
  }

  get closing(): boolean {
    return this.#closing;
  }

  /** Canonical device path, or INVALID_DEVICE / UNKNOWN_DEVICE. */
  resolveDevice(text: string): string {
    const name = parseDeviceName(text);
    if (!name) {
      throw new MountError(
        `"${text}" is not an NBD device name (nbdN or /dev/nbdN)`,
        "INVALID_DEVICE",
      );
    }
    if (name.index >= this.#deviceCount) {
      throw new MountError(
        `${name.device} is not managed here (nbd.devices is ${this.#deviceCount})`,
        "UNKNOWN_DEVICE",
      );
    }
    return name.device;
  }

  /** Kernel devices this daemon manages. */
  async #kernelDevices(): Promise<NbdDevice[]> {
    const all = await this.#driver.listDevices();
    return all.filter((d) => d.index < this.#deviceCount).sort((a, b) => a.index - b.index);
  }

  /**
   * Mounts `request.image` on a device. Resolves once the device is attached;
   * on failure nothing stays half-done (the session is closed, the slot freed).
   * `quiet` (the reconciler's attempts, which log their own changes) puts the
   * progress lines at debug.
   */
  async mount(request: MountRequest, options: { quiet?: boolean } = {}): Promise<MountInfo> {
    const progress = (message: string, fields: object) =>
      options.quiet ? this.#log.debug(message, fields) : this.#log.info(message, fields);
    if (this.#closing) throw new MountError("the daemon is shutting down", "SHUTTING_DOWN");
    const wanted = request.device === undefined || request.device === "auto"
      ? "auto"
      : this.resolveDevice(request.device);
    const devices = await this.#kernelDevices();
    if (this.#closing) throw new MountError("the daemon is shutting down", "SHUTTING_DOWN");
    if (devices.length === 0) {
      throw new MountError(
        `Cannot mount ${request.image}: no NBD devices (the nbd kernel module is not loaded; try modprobe nbd)`,
        "NO_MODULE",
      );
    }
    // From here to the reservation nothing awaits, so two requests cannot pick the same device.
    // A driver whose kernel picks the device (netlink) gets "auto" and no race with other tools.
    const kernelPicks = wanted === "auto" && this.#driver.picksDevice === true;
    const device = kernelPicks
      ? `(auto ${++this.#pendingSeq})`
      : wanted === "auto"
      ? this.#pickFree(devices, request.image)
      : wanted;
    if (!kernelPicks) this.#checkAvailable(device, devices);
    const { entry, finish } = newMountEntry(
      this.#now,
      device,
      request.image,
      request.username,
      request.readOnly ?? false,
      request.password,
    );
    this.#entries.set(device, entry);
    const connections = connectionCount(
      request.connections ?? this.#connections,
      this.#driver.maxConnections ?? 1,
      this.#log,
    );
    progress("mounting", {
      device,
      image: request.image,
      user: request.username,
      connections,
    });
    try {
      await this.#connect(entry, request, kernelPicks ? "auto" : device, connections);
    } catch (error) {
      this.#entries.delete(entry.device);
      throw error;
    } finally {
      finish();
    }
    progress("mounted", {
      device: entry.device,
      image: entry.image,
      size: entry.sessions.backends[0]?.size,
      connections,
    });
    if (entry.attachment?.persistent) this.#onPersistentChange();
    return mountInfo(entry);
  }

  /**
   * Takes over a device a previous daemon left attached (its state record), in
   * two steps. This one is safe while that daemon still serves the device: it
   * reserves the entry, opens the sessions (log in, attach the image) and
   * checks the size (MOUNT_FAILED when it differs). `takeOver()` then hands
   * the kernel the new sockets (RECONFIGURE; NO_DEVICE when the device no
   * longer carries the record's backend id); `abandon()` closes the sessions.
   */
  async prepareAdopt(record: MountRecord, password: string): Promise<PreparedAdoption> {
    if (this.#closing) throw new MountError("the daemon is shutting down", "SHUTTING_DOWN");
    const driver = this.#driver;
    const reattach = driver.reattach?.bind(driver);
    if (!reattach) {
      throw new MountError(`Cannot take over ${record.device}: no netlink here`, "NO_DEVICE");
    }
    const existing = this.#entries.get(record.device);
    if (existing) {
      throw new MountError(`Cannot take over ${record.device}: already ${existing.state}`, "BUSY");
    }
    const { entry, finish } = newMountEntry(
      this.#now,
      record.device,
      record.image,
      record.username,
      record.readOnly,
      password,
    );
    this.#entries.set(record.device, entry);
    const release = async () => {
      await this.#closeSessions(entry);
      this.#entries.delete(record.device);
      finish();
    };
    const fail = async (error: unknown, what: string): Promise<never> => {
      await release();
      throw this.#wrap(error, what);
    };
    this.#log.info("taking over", { device: record.device, image: record.image });
    try {
      const owner = { device: record.device, image: record.image };
      await this.#openSessions(entry, { ...record, password }, record.connections, owner);
    } catch (error) {
      return await fail(error, `Cannot open IVBS image ${record.image}`);
    }
    const backend = entry.sessions.backends[0];
    const blockSize = record.options.blockSize;
    if (Math.floor(backend.size / blockSize) * blockSize !== record.sizeBytes) {
      const message =
        `image ${record.image} is ${backend.size} bytes, the device ${record.sizeBytes}`;
      return await fail(
        new MountError(message, "MOUNT_FAILED"),
        `Cannot take over ${record.device}`,
      );
    }
    let used = false;
    const once = () => {
      if (used) throw new Error(`the take-over of ${record.device} was already used`);
      used = true;
    };
    return {
      record,
      takeOver: async () => {
        once();
        try {
          if (this.#closing) throw new MountError("the daemon is shutting down", "SHUTTING_DOWN");
          entry.attachment = await reattach(record, entry.sessions.backends, {
            log: this.#deviceLog?.({ device: record.device }),
          });
        } catch (error) {
          return await fail(error, `Cannot take over ${record.device}`);
        }
        this.#watch(entry, entry.attachment);
        finish();
        this.#log.info("taken over", { device: record.device, image: record.image });
        return mountInfo(entry);
      },
      abandon: async () => {
        once();
        await release();
      },
    };
  }

  /** Step one of a mount: the sessions, one per connection (all or none). */
  async #openSessions(
    entry: MountEntry,
    request: SessionRequest,
    count: number,
    owner: { device: string; image: string },
  ): Promise<void> {
    try {
      entry.sessions = await openSessions(
        this.#driver,
        request,
        count,
        () => this.#watchSession?.(owner),
      );
    } catch (error) {
      throw this.#wrap(error, `Cannot open IVBS image ${request.image}`);
    }
  }

  /** State records of the mounts that outlive the daemon. */
  persistentRecords(): MountRecord[] {
    return this.#sorted().flatMap((entry) => mountRecord(entry) ?? []);
  }

  /** What each mount that outlives the daemon needs to log in again (credential_store.ts). */
  persistentCredentials(): MountCredential[] {
    return this.#sorted().flatMap((entry) => mountCredential(entry) ?? []);
  }

  #pickFree(devices: NbdDevice[], image: string): string {
    const free = devices.find((d) => !d.inUse && !this.#entries.has(d.device));
    if (!free) {
      throw new MountError(
        `Cannot mount ${image}: all ${devices.length} NBD devices are in use`,
        "NO_FREE_DEVICE",
      );
    }
    return free.device;
  }

  #checkAvailable(device: string, devices: NbdDevice[]): void {
    const existing = this.#entries.get(device);
    if (existing) {
      throw new MountError(
        `Cannot mount on ${device}: device busy (${existing.state} ${existing.image})`,
        "BUSY",
      );
    }
    const kernel = devices.find((d) => d.device === device);
    if (!kernel) throw new MountError(`${device} does not exist`, "UNKNOWN_DEVICE");
    if (kernel.inUse) {
      const by = kernel.pid === null ? "" : ` by pid ${kernel.pid}`;
      throw new MountError(`Cannot mount on ${device}: device busy (attached${by})`, "BUSY");
    }
  }

  async #connect(
    entry: MountEntry,
    request: MountRequest,
    device: string,
    connections: number,
  ): Promise<void> {
    // One context for the sessions' and the attachment's log lines: where the
    // kernel picks the device, it names the placeholder until the pick is known.
    const owner = { device: entry.device, image: request.image };
    await this.#openSessions(entry, { ...request, readOnly: entry.readOnly }, connections, owner);
    try {
      if (this.#closing) throw new MountError("the daemon is shutting down", "SHUTTING_DOWN");
      entry.attachment = await this.#driver.attach(device, entry.sessions.backends, {
        log: this.#deviceLog?.(owner),
      });
    } catch (error) {
      await this.#closeSessions(entry);
      const where = device === "auto" ? "an NBD device" : device;
      throw this.#wrap(error, `Cannot attach ${request.image} to ${where}`);
    }
    if (entry.device !== entry.attachment.device) {
      // The kernel picked the device: the entry moves from its placeholder key.
      this.#entries.delete(entry.device);
      entry.device = entry.attachment.device;
      this.#entries.set(entry.device, entry);
      owner.device = entry.device;
      for (const watch of entry.sessions.watches) watch?.renamed();
    }
    entry.readOnly = entry.sessions.backends[0].readOnly;
    this.#watch(entry, entry.attachment);
  }

  #watch(entry: MountEntry, attachment: DeviceAttachment): void {
    entry.state = "mounted";
    // The device can go away without us asking (nbd-client -d, a protocol error).
    attachment.done.then(
      () => this.#onDetached(entry, attachment, null),
      (error) => this.#onDetached(entry, attachment, error),
    );
  }

  #wrap(error: unknown, what: string): MountError {
    return asRefusal(MOUNT_REFUSAL, error, what, this.#log);
  }

  async #onDetached(
    entry: MountEntry,
    attachment: DeviceAttachment,
    error: unknown,
  ): Promise<void> {
    if (this.#entries.get(entry.device) !== entry || entry.state === "unmounting") return;
    if (entry.attachment !== attachment) return;
    this.#log.warn("device detached without an unmount request", {
      device: entry.device,
      image: entry.image,
      error: error ?? undefined,
    });
    entry.state = "unmounting";
    await this.#closeSessions(entry);
    this.#entries.delete(entry.device);
    if (attachment.persistent) this.#onPersistentChange();
  }

  async #closeSessions(entry: MountEntry): Promise<void> {
    await closeSessions(entry.sessions, (error) => {
      this.#log.warn("closing an IVBS session failed", { device: entry.device, error });
    });
  }

  /** Detaches `device` and closes its session. */
  async unmount(deviceText: string): Promise<void> {
    const device = this.resolveDevice(deviceText);
    const entry = this.#entries.get(device);
    if (!entry) {
      const devices = await this.#kernelDevices();
      const kernel = devices.find((d) => d.device === device);
      if (!kernel) throw new MountError(`${device} does not exist`, "UNKNOWN_DEVICE");
      // Left attached by an earlier daemon and not taken over (its user is gone from the config).
      if (kernel.inUse && await this.#driver.detachOrphan?.(kernel.index).catch(() => false)) {
        this.#log.info("unmounted a device an earlier daemon left", { device });
        return;
      }
      const by = kernel.inUse ? ` (attached by ${kernel.pid ?? "another process"})` : "";
      throw new MountError(`${device} is not mounted by this daemon${by}`, "NOT_MOUNTED");
    }
    if (entry.state !== "mounted") {
      throw new MountError(`${device} is ${entry.state} ${entry.image}; try again`, "BUSY");
    }
    await this.#detach(entry);
  }

  async #detach(entry: MountEntry): Promise<void> {
    entry.state = "unmounting";
    this.#log.info("unmounting", { device: entry.device, image: entry.image });
    try {
      await entry.attachment?.detach();
    } catch (error) {
      entry.state = "mounted";
      throw new MountError(
        `Cannot detach ${entry.device}: ${errorMessage(error)}`,
        "DETACH_FAILED",
      );
    }
    await this.#closeSessions(entry);
    this.#entries.delete(entry.device);
    if (entry.attachment?.persistent) this.#onPersistentChange();
    this.#log.info("unmounted", { device: entry.device, image: entry.image });
  }

  /**
   * Refuses new mounts, waits for mounts in progress, then detaches every
   * device, or with `keepDevices` releases those that can outlive the daemon
   * (they stay attached, their state records stay saved) and detaches the rest.
   * Never throws: failures are logged (this runs on the way out).
   */
  async closeAll(options: { keepDevices?: boolean } = {}): Promise<void> {
    this.#closing = true;
    await Promise.allSettled([...this.#entries.values()].map((e) => e.settled));
    await Promise.allSettled([...this.#entries.values()].map(async (entry) => {
      if (entry.state === "unmounting") {
        await entry.attachment?.done.catch(() => {});
        return;
      }
      const persistent = entry.attachment?.persistent;
      if (options.keepDevices && persistent) {
        entry.state = "unmounting";
        await persistent.release().catch((error) => {
          this.#log.error("releasing a device at shutdown failed", { device: entry.device, error });
        });
        await this.#closeSessions(entry);
        this.#log.info("left attached for the next daemon", {
          device: entry.device,
          image: entry.image,
        });
        return;
      }
      try {
        await this.#detach(entry);
      } catch (error) {
        this.#log.error("detach at shutdown failed", { device: entry.device, error });
      }
    }));
  }

  /** Mounts, ordered by device number. */
  list(): MountInfo[] {
    return this.#sorted().map((entry) => mountInfo(entry));
  }

  /** Mounts with their live objects, for metrics. */
  snapshots(): MountSnapshot[] {
    return this.#sorted().map((entry) => ({
      info: mountInfo(entry),
      attachment: entry.attachment,
      backend: combinedBackend(entry.sessions.backends),
    }));
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Every managed kernel device, free or used, with what this daemon has on it. */
  async devices(): Promise<DeviceInfo[]> {
    const devices = await this.#kernelDevices();
    return devices.map((d) => deviceInfo(d, this.#entries.get(d.device)));
  }

  #sorted(): MountEntry[] {
    const index = (e: MountEntry) => parseDeviceName(e.device)?.index ?? 0;
    return [...this.#entries.values()].sort((a, b) => index(a) - index(b));
  }
}
