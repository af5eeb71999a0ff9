/**
 * THE mount table: which image is on which /dev/nbdX, and the lifecycle of each
 * mount (mounting → mounted → unmounting → gone). The HTTP API, the status page,
 * the config loader and the CLI are thin views of this one table.
 * @module
 */
import { errorCode, errorMessage } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import { parseDeviceName } from "./device_name.ts";
import type { DeviceAttachment, MountBackend, MountDriver, NbdDevice } from "./driver.ts";
import type { SessionWatch, WatchSession } from "./proxy_registry.ts";
import { RateSampler, type Throughput } from "./rate.ts";
import type { MountRecord } from "./state_file.ts";
import type { MountCredential } from "./credential_store.ts";

/** Why a mount or unmount was refused; `code` is stable (the HTTP layer maps it to a status). */
export type MountErrorCode =
  | "INVALID_DEVICE" // not an NBD device name
  | "UNKNOWN_DEVICE" // no such device (or beyond nbd.devices)
  | "NO_MODULE" // the kernel has no NBD devices at all
  | "BUSY" // device mounted, being mounted, or used by another process
  | "NO_FREE_DEVICE"
  | "NOT_MOUNTED"
  | "SHUTTING_DOWN"
  | "DETACH_FAILED"
  // Passed through from IvbsSession.open (IvbsMountError) and attachDevice (NbdAttachError):
  | "LOGIN_DENIED"
  | "IMAGE_NOT_FOUND"
  | "ACCESS_DENIED"
  | "NO_PROXY"
  | "PROTOCOL"
  | "NOT_ROOT"
  | "NO_DEVICE"
  | "IOCTL"
  | "MOUNT_FAILED"; // anything else

const PASSTHROUGH_CODES = new Set<string>([
  "LOGIN_DENIED",
  "IMAGE_NOT_FOUND",
  "ACCESS_DENIED",
  "NO_PROXY",
  "PROTOCOL",
  "NO_MODULE",
  "NOT_ROOT",
  "BUSY",
  "NO_DEVICE",
  "IOCTL",
]);

export class MountError extends Error {
  constructor(message: string, readonly code: MountErrorCode) {
    super(message);
    this.name = "MountError";
  }
}

export type MountState = "mounting" | "mounted" | "reconnecting" | "unmounting";

export interface MountRequest {
  /** "/dev/nbdN", "nbdN", "auto" or absent (= auto). */
  device?: string;
  image: string;
  username: string;
  password: string;
  readOnly?: boolean;
}

/** What views show of a mount. Never carries the password. */
export interface MountInfo {
  device: string;
  image: string;
  username: string;
  state: MountState;
  sizeBytes: number;
  readOnly: boolean;
  /** IVBS proxy in use, "host:port"; null while reconnecting or before the session is open. */
  proxy: string | null;
  /** Kernel requests being served right now. */
  inFlight: number;
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  errors: number;
  failovers: number;
  reconnects: number;
  retries: number;
  mountedAt: string;
  /** Average over the last sampling window (≥ 1 s, taken when the table is read). */
  throughput: Throughput;
}

/** A device as `lista` shows it: the kernel's view joined with the table's. */
export interface DeviceInfo {
  device: string;
  index: number;
  /** Attached (by us or by another process). */
  inUse: boolean;
  sizeBytes: number;
  pid: number | null;
  /** The image this daemon has on it, if any. */
  image: string | null;
  state: MountState | "free" | "foreign";
}

/**
 * A take-over made ready (`MountTable.prepareAdopt`): the IVBS session is open,
 * the device not yet handed over. Exactly one of the two is called, once.
 */
export interface PreparedAdoption {
  readonly record: MountRecord;
  /** Hands the kernel the new socket (RECONFIGURE) and serves the device. */
  takeOver(): Promise<MountInfo>;
  /** Closes the session and frees the entry; the device stays as it is. */
  abandon(): Promise<void>;
}

/** Everything metrics need about one mount (live objects, read at scrape time). */
export interface MountSnapshot {
  info: MountInfo;
  attachment: DeviceAttachment | null;
  backend: MountBackend | null;
}

interface Entry {
  device: string;
  image: string;
  username: string;
  /** Kept for the credential store (the next daemon logs in with it); never shown. */
  password: string;
  readOnly: boolean;
  state: "mounting" | "mounted" | "unmounting";
  mountedAt: Date;
  backend: MountBackend | null;
  attachment: DeviceAttachment | null;
  /** Settles when the mount attempt has finished either way. */
  settled: Promise<unknown>;
  rate: RateSampler;
  /** The proxy registry's view of this mount's session. */
  watch?: SessionWatch;
}

export interface MountTableOptions {
  /** Devices the daemon manages: /dev/nbd0 … /dev/nbd{deviceCount-1}. */
  deviceCount: number;
  log?: Logger;
  /** Clock for throughput sampling (tests pass a fake one). */
  now?: () => number;
  /** Follows each mount's IVBS session (proxy registry, session log lines). */
  watchSession?: WatchSession;
  /** The kernel attachment's logger for `device` (its lines name the device). */
  deviceLog?: (context: { device: string }) => Logger;
  /** Called whenever the set of mounts that outlive the daemon changes (to save the state). */
  onPersistentChange?: () => void;
}

export class MountTable {
  readonly #driver: MountDriver;
  readonly #deviceCount: number;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #watchSession: WatchSession | undefined;
  readonly #deviceLog: ((context: { device: string }) => Logger) | undefined;
  readonly #entries = new Map<string, Entry>();
  readonly #onPersistentChange: () => void;
  /** Keys of mounts waiting for the kernel to pick their device. */
  #pendingSeq = 0;
  #closing = false;

  constructor(driver: MountDriver, options: MountTableOptions) {
    this.#watchSession = options.watchSession;
    this.#deviceLog = options.deviceLog;
    this.#driver = driver;
    this.#deviceCount = options.deviceCount;
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
   */
  async mount(request: MountRequest): Promise<MountInfo> {
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
    const { entry, finish } = this.#newEntry(
      device,
      request.image,
      request.username,
      request.password,
      request.readOnly ?? false,
    );
    this.#entries.set(device, entry);
    this.#log.info("mounting", { device, image: request.image, user: request.username });
    try {
      await this.#connect(entry, request, kernelPicks ? "auto" : device);
    } catch (error) {
      this.#entries.delete(entry.device);
      throw error;
    } finally {
      finish();
    }
    this.#log.info("mounted", {
      device: entry.device,
      image: entry.image,
      size: entry.backend?.size,
    });
    if (entry.attachment?.persistent) this.#onPersistentChange();
    return this.#info(entry);
  }

  /**
   * Takes over a device a previous daemon left attached (its state record):
   * logs in, attaches the image, and hands the kernel a new socket. Throws
   * NO_DEVICE when the device no longer carries the record's backend id and
   * MOUNT_FAILED when the image's size differs from the device's.
   */
  async adopt(record: MountRecord, password: string): Promise<MountInfo> {
    return await (await this.prepareAdopt(record, password)).takeOver();
  }

  /**
   * The slow half of `adopt`, safe while the previous daemon still serves the
   * device: reserves the entry, logs in and attaches the image, checks its
   * size. The device is untouched until `takeOver()` hands the kernel the new
   * socket (RECONFIGURE); `abandon()` closes the session and frees the entry.
   */
  async prepareAdopt(record: MountRecord, password: string): Promise<PreparedAdoption> {
    if (this.#closing) throw new MountError("the daemon is shutting down", "SHUTTING_DOWN");
    const driver = this.#driver;
    const reattach = driver.reattach;
    if (!reattach) {
      throw new MountError(`Cannot take over ${record.device}: no netlink here`, "NO_DEVICE");
    }
    const existing = this.#entries.get(record.device);
    if (existing) {
      throw new MountError(`Cannot take over ${record.device}: already ${existing.state}`, "BUSY");
    }
    const { entry, finish } = this.#newEntry(
      record.device,
      record.image,
      record.username,
      password,
      record.readOnly,
    );
    this.#entries.set(record.device, entry);
    const fail = async (error: unknown, what: string): Promise<never> => {
      await this.#closeBackend(entry);
      this.#entries.delete(record.device);
      finish();
      throw this.#wrap(error, what);
    };
    this.#log.info("taking over", { device: record.device, image: record.image });
    let backend: MountBackend;
    try {
      backend = await driver.openBackend({
        image: record.image,
        username: record.username,
        password,
        readOnly: record.readOnly,
      });
      entry.backend = backend;
    } catch (error) {
      return await fail(error, `Cannot open IVBS image ${record.image}`);
    }
    const blockSize = record.options.blockSize;
    const size = Math.floor(backend.size / blockSize) * blockSize;
    if (size !== record.sizeBytes) {
      return await fail(
        new MountError(
          `Cannot take over ${record.device}: image ${record.image} is ${backend.size} bytes, the device ${record.sizeBytes}`,
          "MOUNT_FAILED",
        ),
        "",
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
          entry.attachment = await reattach.call(driver, record, backend);
        } catch (error) {
          return await fail(error, `Cannot take over ${record.device}`);
        }
        this.#watch(entry, entry.attachment);
        finish();
        this.#log.info("taken over", { device: record.device, image: record.image });
        return this.#info(entry);
      },
      abandon: async () => {
        once();
        await this.#closeBackend(entry);
        this.#entries.delete(record.device);
        finish();
      },
    };
  }

  /** A mount being made; `finish` settles it once the attempt is over, either way. */
  #newEntry(
    device: string,
    image: string,
    username: string,
    password: string,
    readOnly: boolean,
  ): { entry: Entry; finish: () => void } {
    let finish!: () => void;
    const entry: Entry = {
      device,
      image,
      username,
      password,
      readOnly,
      state: "mounting",
      mountedAt: new Date(),
      backend: null,
      attachment: null,
      settled: new Promise<void>((resolve) => finish = resolve),
      rate: new RateSampler(this.#now),
    };
    return { entry, finish };
  }

  /** State records of the mounts that outlive the daemon. */
  persistentRecords(): MountRecord[] {
    const records: MountRecord[] = [];
    for (const entry of this.#sorted()) {
      const persistent = entry.attachment?.persistent;
      if (!persistent || entry.state === "unmounting") continue;
      records.push({
        device: entry.device,
        index: persistent.index,
        backendId: persistent.backendId,
        image: entry.image,
        username: entry.username,
        readOnly: entry.readOnly,
        sizeBytes: persistent.sizeBytes,
        options: { ...persistent.options },
        connections: persistent.connections ?? 1,
      });
    }
    return records;
  }

  /** What each mount that outlives the daemon needs to log in again (credential_store.ts). */
  persistentCredentials(): MountCredential[] {
    return this.#sorted().flatMap((entry) => {
      const persistent = entry.attachment?.persistent;
      if (!persistent || entry.state === "unmounting") return [];
      return [{
        backendId: persistent.backendId,
        username: entry.username,
        password: entry.password,
      }];
    });
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

  async #connect(entry: Entry, request: MountRequest, device: string): Promise<void> {
    // One context for the session's and the attachment's log lines: where the
    // kernel picks the device, it names the placeholder until the pick is known.
    const owner = { device: entry.device, image: request.image };
    entry.watch = this.#watchSession?.(owner);
    try {
      entry.backend = await this.#driver.openBackend({
        image: request.image,
        username: request.username,
        password: request.password,
        readOnly: entry.readOnly,
        onEvent: entry.watch?.onEvent,
        log: entry.watch?.log,
      });
    } catch (error) {
      entry.watch?.closed();
      throw this.#wrap(error, `Cannot open IVBS image ${request.image}`);
    }
    try {
      if (this.#closing) throw new MountError("the daemon is shutting down", "SHUTTING_DOWN");
      entry.attachment = await this.#driver.attach(device, entry.backend, {
        log: this.#deviceLog?.(owner),
      });
    } catch (error) {
      await this.#closeBackend(entry);
      const where = device === "auto" ? "an NBD device" : device;
      throw this.#wrap(error, `Cannot attach ${request.image} to ${where}`);
    }
    if (entry.device !== entry.attachment.device) {
      // The kernel picked the device: the entry moves from its placeholder key.
      this.#entries.delete(entry.device);
      entry.device = entry.attachment.device;
      this.#entries.set(entry.device, entry);
      owner.device = entry.device;
      entry.watch?.renamed();
    }
    entry.readOnly = entry.backend.readOnly;
    this.#watch(entry, entry.attachment);
  }

  #watch(entry: Entry, attachment: DeviceAttachment): void {
    entry.state = "mounted";
    // The device can go away without us asking (nbd-client -d, a protocol error).
    attachment.done.then(
      () => this.#onDetached(entry, attachment, null),
      (error) => this.#onDetached(entry, attachment, error),
    );
  }

  #wrap(error: unknown, what: string): MountError {
    if (error instanceof MountError) return error;
    const code = errorCode(error);
    const message = `${what}: ${errorMessage(error)}`;
    if (code !== undefined && PASSTHROUGH_CODES.has(code)) {
      return new MountError(message, code as MountErrorCode);
    }
    this.#log.error("mount failed for an unexpected reason", { error, code });
    return new MountError(message, "MOUNT_FAILED");
  }

  async #onDetached(entry: Entry, attachment: DeviceAttachment, error: unknown): Promise<void> {
    if (this.#entries.get(entry.device) !== entry || entry.state === "unmounting") return;
    if (entry.attachment !== attachment) return;
    this.#log.warn("device detached without an unmount request", {
      device: entry.device,
      image: entry.image,
      error: error ?? undefined,
    });
    entry.state = "unmounting";
    await this.#closeBackend(entry);
    this.#entries.delete(entry.device);
    if (attachment.persistent) this.#onPersistentChange();
  }

  async #closeBackend(entry: Entry): Promise<void> {
    try {
      await entry.backend?.close();
    } catch (error) {
      this.#log.warn("closing the IVBS session failed", { device: entry.device, error });
    }
    entry.watch?.closed();
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

  async #detach(entry: Entry): Promise<void> {
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
    await this.#closeBackend(entry);
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
        await this.#closeBackend(entry);
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
    return this.#sorted().map((entry) => this.#info(entry));
  }

  /** Mounts with their live objects, for metrics. */
  snapshots(): MountSnapshot[] {
    return this.#sorted().map((entry) => ({
      info: this.#info(entry),
      attachment: entry.attachment,
      backend: entry.backend,
    }));
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Every managed kernel device, free or used, with what this daemon has on it. */
  async devices(): Promise<DeviceInfo[]> {
    const devices = await this.#kernelDevices();
    return devices.map((d) => {
      const entry = this.#entries.get(d.device);
      return {
        device: d.device,
        index: d.index,
        inUse: d.inUse || entry !== undefined,
        sizeBytes: d.sizeBytes,
        pid: d.pid,
        image: entry?.image ?? null,
        state: entry ? this.#state(entry) : d.inUse ? "foreign" : "free",
      };
    });
  }

  #sorted(): Entry[] {
    const index = (e: Entry) => parseDeviceName(e.device)?.index ?? 0;
    return [...this.#entries.values()].sort((a, b) => index(a) - index(b));
  }

  #state(entry: Entry): MountState {
    if (entry.state === "mounted" && entry.backend?.proxy === null) return "reconnecting";
    return entry.state;
  }

  #info(entry: Entry): MountInfo {
    const io = entry.attachment?.stats;
    const session = entry.backend?.stats;
    const bytesRead = io?.bytesRead ?? session?.bytesRead ?? 0;
    const bytesWritten = io?.bytesWritten ?? session?.bytesWritten ?? 0;
    const throughput = entry.rate.update(bytesRead, bytesWritten);
    return {
      device: entry.device,
      image: entry.image,
      username: entry.username,
      state: this.#state(entry),
      sizeBytes: entry.backend?.size ?? 0,
      readOnly: entry.readOnly,
      proxy: entry.backend?.proxy ?? null,
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
    };
  }
}
