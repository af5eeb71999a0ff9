/**
 * Serves a netlink-attached NBD device (netlink_attach.ts connects it or
 * takes it over): one serve loop per socket, each with its own backend; a
 * socket the kernel drops or closes without DISC is replaced through
 * RECONFIGURE while the device still carries our backend identifier; detach
 * (DISCONNECT) and release (leave the device to the next daemon) end every
 * loop. The kernel facts behind it are in netlink_attach.ts's comment.
 * @module
 */
import { close } from "../../ffi/libc.ts";
import type { Backend } from "../block/backend.ts";
import type { AttachSettings, DeviceIoStats, PersistentAttachment } from "../block/device.ts";
import { ConnStream } from "../io/conn_stream.ts";
import type { Logger } from "../log.ts";
import {
  type AttachedDevice,
  type AttachOptions,
  connectedPair,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_DETACH_TIMEOUT_MS,
  growSendBuffer,
} from "./device_setup.ts";
import { type NbdNetlink, NetlinkError } from "./netlink.ts";
import { type ServeEnd, serveTransmission } from "./serve.ts";
import { IoStats, sumIoStats } from "./stats.ts";

export interface NetlinkAttachOptions extends AttachOptions {
  /** Identifier shown in /sys/block/nbdN/backend; RECONFIGURE must repeat it. */
  backendId: string;
  /** Device index; absent = the kernel picks a free device. */
  index?: number;
  /** Seconds requests wait for a new socket after ours dies (D). */
  deadConnTimeoutS: number;
  /**
   * With timeoutS 0: the block layer's timer for a request (queue/io_timeout)
   * in s; on expiry the kernel resends a request written to a replaced socket.
   */
  requeueAfterS?: number;
}

/** An attachment that outlives the process: `release()` leaves the device to the next daemon. */
export interface NetlinkAttachedDevice extends AttachedDevice {
  readonly index: number;
  readonly backendId: string;
  readonly persistent: PersistentAttachment;
  /**
   * Stops taking requests, answers what is in flight, closes our sockets and
   * leaves the device configured: its requests wait up to D for a new daemon.
   */
  release(): Promise<void>;
}

export const DEFAULT_REQUEUE_AFTER_S = 5;
/**
 * On release, the request timer for what the kernel sends from then on: the
 * requests we leave unread in the socket are resent this soon after the next
 * daemon's RECONFIGURE instead of after requeueAfterS.
 */
const RELEASE_REQUEUE_MS = 1_000;
/** Time for requests sent before that change to be answered before we stop reading. */
const RELEASE_SETTLE_MS = 100;
/** Backoff between RECONFIGURE attempts that the kernel dropped. */
const RETRY_FIRST_MS = 20;
const RETRY_MAX_MS = 500;

/** A random backend identifier: "ivbsnetd:" and 16 hex digits. */
export function newBackendId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return `ivbsnetd:${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

/** The device's backend identifier from sysfs; null when it has none (not connected). */
export async function readBackendId(index: number): Promise<string | null> {
  try {
    const text = (await Deno.readTextFile(`/sys/block/nbd${index}/backend`)).trim();
    return text === "" ? null : text;
  } catch {
    return null;
  }
}

/** queue/io_timeout: the block layer's timer for each request sent from now on. */
export async function setRequestTimer(index: number, ms: number, log: Logger): Promise<void> {
  const path = `/sys/block/nbd${index}/queue/io_timeout`;
  try {
    await Deno.writeTextFile(path, String(ms));
  } catch (error) {
    log.warn("cannot shorten the request timer; a restart may pause for 30 s", { path, error });
  }
}

export class NetlinkAttachment implements NetlinkAttachedDevice {
  readonly device: string;
  readonly index: number;
  readonly backendId: string;
  readonly stats: DeviceIoStats;
  readonly connections: readonly IoStats[];
  readonly persistent: PersistentAttachment;
  readonly done: Promise<void>;
  readonly #netlink: NbdNetlink;
  readonly #options: NetlinkAttachOptions;
  readonly #log: Logger;
  readonly #stop = new AbortController();
  /** The stream each connection serves now (null between sockets). */
  readonly #streams: (ConnStream | null)[];
  /** Why we stop: null while serving. */
  #ending: "detach" | "release" | null = null;
  #disconnecting: Promise<void> | null = null;
  readonly #wakes = new Set<() => void>();

  constructor(
    netlink: NbdNetlink,
    index: number,
    sizeBytes: number,
    backends: readonly Backend[],
    options: NetlinkAttachOptions,
    log: Logger,
    first: readonly { ours: Deno.Conn }[],
  ) {
    this.#netlink = netlink;
    this.index = index;
    this.device = `/dev/nbd${index}`;
    this.backendId = options.backendId;
    this.#options = options;
    this.#log = log;
    this.connections = backends.map((_, i) =>
      i === 0 && options.stats ? options.stats : new IoStats()
    );
    this.stats = sumIoStats(this.connections);
    this.#streams = backends.map(() => null);
    const settings: AttachSettings = {
      blockSize: options.blockSize ?? DEFAULT_BLOCK_SIZE,
      timeoutS: options.timeoutS ?? 0,
      deadConnTimeoutS: options.deadConnTimeoutS,
    };
    this.persistent = {
      index,
      backendId: options.backendId,
      sizeBytes,
      options: settings,
      connections: backends.length,
      release: () => this.release(),
    };
    const loops = backends.map((backend, i) => this.#run(i, backend, first[i]?.ours ?? null));
    this.done = Promise.all(loops).then(async () => {
      await this.#disconnecting;
      this.#log.info(
        this.#ending === "release" ? "NBD device left to the next daemon" : "NBD device detached",
        { device: this.device, requests: this.stats.reads + this.stats.writes },
      );
    });
  }

  /** Serves connection `i` until the device is detached, released or taken from us. */
  async #run(i: number, backend: Backend, first: Deno.Conn | null): Promise<void> {
    const stats = this.connections[i];
    const name = this.connections.length === 1 ? this.device : `${this.device} connection ${i}`;
    let conn = first;
    let retryMs = RETRY_FIRST_MS;
    for (;;) {
      if (conn === null) {
        conn = await this.#newSocket(name);
        if (conn === null) break;
      }
      const stream = this.#streams[i] = new ConnStream(conn, `${name} socket`);
      conn = null;
      const before = stats.latencyCount;
      const end = await this.#serve(stream, backend, stats, name);
      stream.close();
      this.#streams[i] = null;
      if (this.#ending !== null || end === "disc" || end === "stopped") break;
      if (!await this.#stillOurs()) {
        this.#log.warn("NBD device disconnected without an unmount request", { device: name });
        break;
      }
      if (stats.latencyCount === before) {
        // Nothing served: the kernel dropped the socket (RECONFIGURE with none dead).
        await this.#sleep(retryMs);
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      } else {
        retryMs = RETRY_FIRST_MS;
        this.#log.warn("the kernel closed our NBD socket; handing it a new one", { device: name });
      }
    }
  }

  async #serve(
    stream: ConnStream,
    backend: Backend,
    stats: IoStats,
    name: string,
  ): Promise<ServeEnd | "error"> {
    try {
      return await serveTransmission(stream, backend, {
        maxInFlight: this.#options.maxInFlight,
        stats,
        log: this.#log,
        stop: this.#stop.signal,
      });
    } catch (error) {
      if (this.#ending === null) {
        this.#log.warn("NBD serve loop ended with an error", { device: name, error });
      }
      return "error";
    }
  }

  /** A socket the kernel took through RECONFIGURE (as far as the call tells), or null. */
  async #newSocket(name: string): Promise<Deno.Conn | null> {
    for (let delay = RETRY_FIRST_MS;; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
      if (this.#ending !== null) return null;
      const pair = await connectedPair();
      growSendBuffer(pair.kernelEnd, this.#log);
      try {
        await this.#netlink.reconfigure({
          index: this.index,
          backendId: this.backendId,
          sockets: [pair.kernelEnd],
        });
        return pair.ours;
      } catch (error) {
        pair.ours.close();
        if (error instanceof NetlinkError && error.errnoName === "EINVAL") {
          // Not configured any more, or configured for another backend.
          this.#log.warn("the kernel refused a new socket for the device", {
            device: name,
            error,
          });
          return null;
        }
        this.#log.warn("RECONFIGURE failed; retrying", { device: name, error });
      } finally {
        close(pair.kernelEnd);
      }
      await this.#sleep(delay);
    }
  }

  async #stillOurs(): Promise<boolean> {
    if (await readBackendId(this.index) !== this.backendId) return false;
    try {
      const [status] = await this.#netlink.status(this.index);
      return status?.connected ?? false;
    } catch {
      return true; // sysfs said so; a failed STATUS proves nothing
    }
  }

  /** Waits `ms`, or less when detach or release wakes every sleeper. */
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#wakes.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      this.#wakes.add(wake);
    });
  }

  #wakeAll(): void {
    for (const wake of [...this.#wakes]) wake();
  }

  #closeStreams(): void {
    for (const stream of this.#streams) stream?.close();
  }

  async detach(): Promise<void> {
    if (this.#ending === null) {
      this.#ending = "detach";
      this.#log.info("detaching NBD device", { device: this.device });
      this.#wakeAll();
      const timer = setTimeout(() => {
        this.#log.warn("requests still in flight after the detach timeout; closing the sockets", {
          device: this.device,
          inFlight: this.stats.inFlight,
        });
        this.#closeStreams();
      }, this.#options.detachTimeoutMs ?? DEFAULT_DETACH_TIMEOUT_MS);
      this.done.finally(() => clearTimeout(timer));
      // The kernel sends NBD_CMD_DISC on every socket (each loop ends on it),
      // shuts them down and fails whatever it still has queued.
      this.#disconnecting = this.#netlink.disconnect(this.index).catch((error) => {
        this.#log.warn("NBD DISCONNECT failed; closing the sockets instead", {
          device: this.device,
          error,
        });
        this.#closeStreams();
      });
    }
    await this.done;
  }

  async release(): Promise<void> {
    if (this.#ending === null) {
      this.#ending = "release";
      if ((this.#options.timeoutS ?? 0) === 0) {
        // Requests the kernel sends from now on get a short timer; those sent
        // before get a moment to be answered. What we then leave unread is
        // resent soon after the next daemon's RECONFIGURE (which restores the timer).
        await setRequestTimer(this.index, RELEASE_REQUEUE_MS, this.#log);
        await new Promise((resolve) => setTimeout(resolve, RELEASE_SETTLE_MS));
      }
      this.#stop.abort();
      this.#wakeAll();
      const deadline = Date.now() + (this.#options.detachTimeoutMs ?? DEFAULT_DETACH_TIMEOUT_MS);
      while (this.stats.inFlight > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      this.#closeStreams();
    }
    await this.done;
  }
}
