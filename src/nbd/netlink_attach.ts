/**
 * Attaches a backend to a kernel NBD device through generic netlink, so the
 * device outlives the daemon: no thread waits in the kernel for the device's
 * lifetime, and a later daemon can hand the device a new socket.
 *
 * How a device survives (drivers/block/nbd.c, 6.1):
 * - CONNECT without DISCONNECT_ON_CLOSE / DESTROY_ON_DISCONNECT, with a
 *   backend identifier the kernel shows in /sys/block/nbdN/backend and checks
 *   on RECONFIGURE, and a dead-connection timeout D.
 * - When our socket closes (daemon killed, or the kernel shuts it itself) the
 *   kernel marks it dead; new requests wait up to D for a socket from
 *   RECONFIGURE, then fail with EIO. Requests it had already written to the dead
 *   socket are resent only when the block layer's timer for them fires and
 *   the socket has been replaced (TIMEOUT 0: "Possible stuck request", then a
 *   requeue). So with TIMEOUT 0 we shorten that timer through
 *   /sys/block/nbdN/queue/io_timeout: it bounds the pause after a restart and
 *   never kills a live socket (a non-zero TIMEOUT would, on any slow request).
 * - RECONFIGURE puts a socket only in place of a dead one and otherwise drops
 *   it and still answers success. We close our copy of the kernel's end right
 *   after the call, so a dropped socket is one whose peer is gone: our serve
 *   loop reads EOF at once, having served nothing, and we try again.
 * - Whenever our socket ends without our asking (EOF, not NBD_CMD_DISC) and
 *   the device still carries our backend identifier, we hand it a new one.
 *
 * Several connections (one socket per backend, each NBD_SOCK_ITEM of CONNECT
 * one hardware queue of the device; the block layer maps CPUs to queues):
 * - Each socket has its own serve loop and its own backend (an IVBS session
 *   of its own, on its own proxy where there are enough). An IVBS failover
 *   happens inside one session and leaves its kernel socket open: requests
 *   queued to that connection wait in the session (they are replayed on the
 *   next proxy), the other connections keep flowing.
 * - The kernel's find_fallback (drivers/block/nbd.c, 6.1) acts only on a
 *   socket it has marked DEAD (ours closed, or a send/receive failed): a
 *   request for a dead socket goes to the socket's remembered fallback if
 *   that is alive, else to the first live socket; with none alive it waits
 *   up to D for RECONFIGURE ("Dead connection, failed to find a fallback").
 *   Requests the dead socket had in flight are resent when their timer fires.
 * - With more than one connection the block layer's timer (queue/io_timeout,
 *   requeueAfterS with TIMEOUT 0) ends a LIVE socket too: a request slower
 *   than it makes the kernel mark its socket dead and requeue it elsewhere
 *   ("Connection timed out, retrying"). Our loop then hands the kernel a new
 *   socket for that connection. An IVBS failover (about 1.4 s for a hung
 *   proxy, at once for a closed one) stays well inside the default 5 s.
 * - RECONFIGURE with N sockets fills the dead sockets in order and drops the
 *   rest (the loop of a dropped one reads EOF and tries again): a takeover
 *   after a restart hands all N at once.
 * @module
 */
import { close } from "../../ffi/libc.ts";
import { ConnStream } from "../io/conn_stream.ts";
import { type Logger, logger } from "../log.ts";
import type { Backend } from "../block/backend.ts";
import {
  type AttachSettings,
  type DeviceIoStats,
  MAX_CONNECTIONS,
  type PersistentAttachment,
} from "../block/device.ts";
import {
  type AttachedDevice,
  type AttachOptions,
  connectedPair,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_DETACH_TIMEOUT_MS,
  DEFAULT_MAX_REQUEST_KB,
  deviceSizeBytes,
  growSendBuffer,
  NbdAttachError,
  setMaxRequestKb,
} from "./device_setup.ts";
import { type NbdNetlink, NetlinkError } from "./netlink.ts";
import { multiConnSafe, transmissionFlags } from "./flags.ts";
import { type ServeEnd, serveTransmission } from "./serve.ts";
import { IoStats, sumIoStats } from "./stats.ts";
import { TransmissionFlag, transmissionFlagNames } from "./wire.ts";

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

function netlinkAttachError(what: string, error: unknown): NbdAttachError {
  if (error instanceof NetlinkError) {
    if (error.errnoName === "EPERM") {
      return new NbdAttachError(
        `${what}: permission denied (${error.message}); run as root`,
        "NOT_ROOT",
        {
          cause: error,
        },
      );
    }
    if (error.errnoName === "EBUSY") {
      return new NbdAttachError(`${what}: device busy (${error.message})`, "BUSY", {
        cause: error,
      });
    }
  }
  return new NbdAttachError(`${what}: ${error instanceof Error ? error.message : error}`, "IOCTL", {
    cause: error,
  });
}

/** The transmission flags of a device served by `backends`, one per connection. */
function deviceFlags(backends: readonly Backend[]): number {
  const flags = transmissionFlags(backends[0]);
  return multiConnSafe(backends[0]) ? flags | TransmissionFlag.CAN_MULTI_CONN : flags;
}

/** The device size all `backends` (sessions on one image) agree on; throws otherwise. */
function checkBackends(backends: readonly Backend[], blockSize: number, timeoutS: number): number {
  if (backends.length < 1 || backends.length > MAX_CONNECTIONS) {
    throw new RangeError(
      `a device has 1 to ${MAX_CONNECTIONS} connections, got ${backends.length}`,
    );
  }
  const sizeBytes = deviceSizeBytes(backends[0], blockSize, timeoutS);
  if (backends.some((b) => b.size !== backends[0].size || b.readOnly !== backends[0].readOnly)) {
    throw new RangeError("the backends of one device differ in size or read-only mode");
  }
  return sizeBytes;
}

/** `count` socket pairs; on failure the ones made so far are closed. */
async function socketPairs(
  count: number,
  log: Logger,
): Promise<{ kernelEnd: number; ours: Deno.Conn }[]> {
  const pairs: { kernelEnd: number; ours: Deno.Conn }[] = [];
  try {
    while (pairs.length < count) {
      const pair = await connectedPair();
      pairs.push(pair);
      growSendBuffer(pair.kernelEnd, log);
    }
    return pairs;
  } catch (error) {
    for (const pair of pairs) {
      pair.ours.close();
      close(pair.kernelEnd);
    }
    throw error;
  }
}

/**
 * NBD_CMD_CONNECT a new device with one socket per backend (each backend its
 * own session on the same image) and serve each.
 */
export async function attachNetlink(
  netlink: NbdNetlink,
  backends: readonly Backend[],
  options: NetlinkAttachOptions,
): Promise<NetlinkAttachedDevice> {
  const log = options.log ?? logger("nbd");
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
  const timeoutS = options.timeoutS ?? 0;
  const sizeBytes = checkBackends(backends, blockSize, timeoutS);
  const target = options.index === undefined ? "an NBD device" : `/dev/nbd${options.index}`;
  const pairs = await socketPairs(backends.length, log).catch((error) => {
    throw netlinkAttachError(`Cannot attach ${target}`, error);
  });
  const flags = deviceFlags(backends);
  let index: number;
  try {
    index = await netlink.connect({
      index: options.index,
      sizeBytes,
      blockSize,
      timeoutS,
      serverFlags: flags,
      clientFlags: 0,
      deadConnTimeoutS: options.deadConnTimeoutS,
      backendId: options.backendId,
      sockets: pairs.map((pair) => pair.kernelEnd),
    });
  } catch (error) {
    for (const pair of pairs) pair.ours.close();
    throw netlinkAttachError(`Cannot attach ${target}`, error);
  } finally {
    // The kernel holds its own references now; ours would only keep a dead peer alive.
    for (const pair of pairs) close(pair.kernelEnd);
  }
  const device = `/dev/nbd${index}`;
  log.info("NBD device attached through netlink", {
    device,
    size: sizeBytes,
    blockSize,
    connections: backends.length,
    flags: transmissionFlagNames(flags),
    timeoutS,
    deadConnTimeoutS: options.deadConnTimeoutS,
    backendId: options.backendId,
  });
  await tuneQueue(index, options, log);
  return new NetlinkAttachment(netlink, index, sizeBytes, backends, options, log, pairs);
}

/**
 * Takes over a device a previous daemon attached (found by its backend
 * identifier): hands the kernel one new socket per backend in one RECONFIGURE
 * and serves them. Throws NO_DEVICE when the device no longer carries `backendId`.
 */
export async function reattachNetlink(
  netlink: NbdNetlink,
  index: number,
  backends: readonly Backend[],
  options: NetlinkAttachOptions,
): Promise<NetlinkAttachedDevice> {
  const log = options.log ?? logger("nbd");
  const device = `/dev/nbd${index}`;
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
  const sizeBytes = checkBackends(backends, blockSize, options.timeoutS ?? 0);
  if (await readBackendId(index) !== options.backendId) {
    throw new NbdAttachError(
      `Cannot take over ${device}: it is no longer connected to ${options.backendId}`,
      "NO_DEVICE",
    );
  }
  const pairs = await socketPairs(backends.length, log).catch((error) => {
    throw netlinkAttachError(`Cannot take over ${device}`, error);
  });
  try {
    await netlink.reconfigure({
      index,
      backendId: options.backendId,
      sockets: pairs.map((pair) => pair.kernelEnd),
    });
  } catch (error) {
    for (const pair of pairs) pair.ours.close();
    throw netlinkAttachError(`Cannot take over ${device}`, error);
  } finally {
    for (const pair of pairs) close(pair.kernelEnd);
  }
  log.info("taking over NBD device", {
    device,
    backendId: options.backendId,
    connections: backends.length,
  });
  await tuneQueue(index, options, log);
  return new NetlinkAttachment(netlink, index, sizeBytes, backends, options, log, pairs);
}

async function tuneQueue(index: number, options: NetlinkAttachOptions, log: Logger) {
  await setMaxRequestKb(index, options.maxRequestKb ?? DEFAULT_MAX_REQUEST_KB, log);
  if ((options.timeoutS ?? 0) !== 0) return;
  const seconds = options.requeueAfterS ?? DEFAULT_REQUEUE_AFTER_S;
  await setRequestTimer(index, seconds * 1000, log);
}

/** queue/io_timeout: the block layer's timer for each request sent from now on. */
async function setRequestTimer(index: number, ms: number, log: Logger): Promise<void> {
  const path = `/sys/block/nbd${index}/queue/io_timeout`;
  try {
    await Deno.writeTextFile(path, String(ms));
  } catch (error) {
    log.warn("cannot shorten the request timer; a restart may pause for 30 s", { path, error });
  }
}

class NetlinkAttachment implements NetlinkAttachedDevice {
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
