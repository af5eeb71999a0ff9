/**
 * A mount driver with no kernel and no IVBS: images and devices live in memory.
 * For tests of the mount table, HTTP API and CLI, and for showing the status
 * page on a machine without nbd.
 * @module
 */
import { BackendError } from "../block/backend.ts";
import { CodedError } from "../error_info.ts";
import { IoStats } from "../nbd/stats.ts";
import { MAX_CONNECTIONS } from "../block/device.ts";
import type {
  DeviceAttachment,
  MountBackend,
  MountDriver,
  NbdDevice,
  OpenBackendRequest,
  SessionStats,
} from "./driver.ts";

/** Errors shaped like IvbsMountError / NbdAttachError: a message and a stable code. */
export class FakeDriverError extends CodedError<string> {
  override readonly name = "FakeDriverError";
}

export interface FakeImage {
  size: number;
  readOnly?: boolean;
}

export interface FakeDriverOptions {
  /** Number of /dev/nbdN devices; 0 = "no nbd module". */
  devices: number;
  images: Record<string, FakeImage>;
  /** username → password. */
  users: Record<string, string>;
}

/** A sparse image: reads return zeroes, writes are counted and dropped. */
export class FakeBackend implements MountBackend {
  proxy: string | null = "127.0.0.1:11417";
  closed = false;
  readonly stats: SessionStats & {
    failovers: number;
    reconnects: number;
    bytesRead: number;
    bytesWritten: number;
  } = {
    inFlight: 0,
    failovers: 0,
    reconnects: 0,
    retries: 0,
    keepalivesSent: 0,
    bytesRead: 0,
    bytesWritten: 0,
  };

  constructor(readonly image: string, readonly size: number, readonly readOnly: boolean) {}

  read(offset: number, length: number): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(new BackendError("session closed", "ESHUTDOWN"));
    if (offset + length > this.size) {
      return Promise.reject(new BackendError(`read past the end of ${this.image}`, "EINVAL"));
    }
    return Promise.resolve(new Uint8Array(length));
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    if (this.closed) return Promise.reject(new BackendError("session closed", "ESHUTDOWN"));
    if (this.readOnly) {
      return Promise.reject(new BackendError(`${this.image} is read-only`, "EPERM"));
    }
    if (offset + data.length > this.size) {
      return Promise.reject(new BackendError(`write past the end of ${this.image}`, "EINVAL"));
    }
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

export class FakeAttachment implements DeviceAttachment {
  /** One per connection (backend), like a kernel device's sockets; tests set them. */
  readonly connections: IoStats[];
  /** The device's counters (tests set them; with one connection, that connection's). */
  readonly stats = new IoStats();
  /** The first connection's backend. */
  readonly backend: FakeBackend;
  detachCalls = 0;
  /** Set to make the next detach() fail once. */
  failDetach: string | null = null;
  readonly done: Promise<void>;
  #finish!: () => void;

  constructor(
    readonly device: string,
    readonly backends: readonly FakeBackend[],
    onGone: () => void,
  ) {
    this.backend = backends[0];
    this.connections = backends.length === 1 ? [this.stats] : backends.map(() => new IoStats());
    this.done = new Promise<void>((resolve) => this.#finish = resolve).then(onGone);
  }

  detach(): Promise<void> {
    this.detachCalls++;
    if (this.failDetach !== null) {
      const why = this.failDetach;
      this.failDetach = null;
      return Promise.reject(new FakeDriverError(why, "IOCTL"));
    }
    this.#finish();
    return this.done;
  }

  /** The kernel dropped the device on its own (as `nbd-client -d` would). */
  vanish(): void {
    this.#finish();
  }
}

export class FakeMountDriver implements MountDriver {
  readonly options: FakeDriverOptions;
  readonly attached = new Map<string, FakeAttachment>();
  readonly backends: FakeBackend[] = [];
  /** Devices attached by "another process". */
  readonly foreign = new Set<string>();
  /** Codes the next attach() calls fail with, in order. */
  readonly attachFailures: string[] = [];
  /** While set, openBackend waits for it (to observe the "mounting" state). */
  openGate: Promise<void> | null = null;
  openCalls = 0;
  /** The connection index of every openBackend request, in call order. */
  readonly openedConnections: number[] = [];
  /** The session of this connection index fails to open (NO_PROXY). */
  failConnection: number | null = null;

  constructor(options: FakeDriverOptions) {
    this.options = options;
  }

  async openBackend(request: OpenBackendRequest): Promise<MountBackend> {
    this.openCalls++;
    const connection = request.connection ?? 0;
    this.openedConnections.push(connection);
    if (this.openGate) await this.openGate;
    if (connection === this.failConnection) {
      throw new FakeDriverError(`no proxy for connection ${connection}`, "NO_PROXY");
    }
    if (this.options.users[request.username] !== request.password) {
      throw new FakeDriverError(`login as ${request.username} refused`, "LOGIN_DENIED");
    }
    const image = this.options.images[request.image];
    if (!image) throw new FakeDriverError(`image ${request.image} not found`, "IMAGE_NOT_FOUND");
    const backend = new FakeBackend(
      request.image,
      image.size,
      request.readOnly || (image.readOnly ?? false),
    );
    this.backends.push(backend);
    // As a session reports its proxy, so the proxy registry has something to show.
    request.onEvent?.({
      type: "connected",
      proxy: backend.proxy ?? "",
      proxyName: "fake-proxy",
      replayed: 0,
    });
    return backend;
  }

  /** Connections a device may have (netlink's bound; the ioctl path has 1). */
  readonly maxConnections: number = MAX_CONNECTIONS;

  attach(device: string, backends: readonly MountBackend[]): Promise<DeviceAttachment> {
    const failure = this.attachFailures.shift();
    if (failure !== undefined) {
      return Promise.reject(new FakeDriverError(`Cannot attach ${device}: ${failure}`, failure));
    }
    if (this.attached.has(device) || this.foreign.has(device)) {
      return Promise.reject(new FakeDriverError(`Cannot attach ${device}: device busy`, "BUSY"));
    }
    const attachment = new FakeAttachment(
      device,
      backends as FakeBackend[],
      () => this.attached.delete(device),
    );
    this.attached.set(device, attachment);
    return Promise.resolve(attachment);
  }

  listDevices(): Promise<NbdDevice[]> {
    const devices: NbdDevice[] = [];
    for (let index = 0; index < this.options.devices; index++) {
      const device = `/dev/nbd${index}`;
      const attachment = this.attached.get(device);
      const foreign = this.foreign.has(device);
      devices.push({
        device,
        index,
        inUse: attachment !== undefined || foreign,
        sizeBytes: attachment?.backend.size ?? 0,
        pid: attachment ? Deno.pid : foreign ? 4242 : null,
      });
    }
    return Promise.resolve(devices);
  }
}
