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
 * @module
 */
import { close } from "../../ffi/libc.ts";
import { ConnStream } from "../io/conn_stream.ts";
import { type Logger, logger } from "../log.ts";
import type { Backend } from "../block/backend.ts";
import {
  type AttachedDevice,
  type AttachOptions,
  connectedPair,
  deviceSizeBytes,
  growSendBuffer,
  NbdAttachError,
  setMaxRequestKb,
} from "./kernel.ts";
import { type NbdNetlink, NetlinkError } from "./netlink.ts";
import { transmissionFlags } from "./flags.ts";
import { type ServeEnd, serveTransmission } from "./serve.ts";
import { IoStats } from "./stats.ts";
import { transmissionFlagNames } from "./wire.ts";

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
  /**
   * Stops taking requests, answers what is in flight, closes our socket and
   * leaves the device configured: its requests wait up to D for a new daemon.
   */
  release(): Promise<void>;
}

const DEFAULT_BLOCK_SIZE = 4096;
const DEFAULT_MAX_REQUEST_KB = 1024;
const DEFAULT_DETACH_TIMEOUT_MS = 60_000;
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

/** NBD_CMD_CONNECT a new device for `backend` and serve it. */
export async function attachNetlink(
  netlink: NbdNetlink,
  backend: Backend,
  options: NetlinkAttachOptions,
): Promise<NetlinkAttachedDevice> {
  const log = options.log ?? logger("nbd");
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
  const timeoutS = options.timeoutS ?? 0;
  const sizeBytes = deviceSizeBytes(backend, blockSize, timeoutS);
  const target = options.index === undefined ? "an NBD device" : `/dev/nbd${options.index}`;
  const pair = await connectedPair().catch((error) => {
    throw netlinkAttachError(`Cannot attach ${target}`, error);
  });
  growSendBuffer(pair.kernelEnd, log);
  const flags = transmissionFlags(backend);
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
      sockets: [pair.kernelEnd],
    });
  } catch (error) {
    pair.ours.close();
    throw netlinkAttachError(`Cannot attach ${target}`, error);
  } finally {
    // The kernel holds its own reference now; ours would only keep a dead peer alive.
    close(pair.kernelEnd);
  }
  const device = `/dev/nbd${index}`;
  log.info("NBD device attached through netlink", {
    device,
    size: sizeBytes,
    blockSize,
    flags: transmissionFlagNames(flags),
    timeoutS,
    deadConnTimeoutS: options.deadConnTimeoutS,
    backendId: options.backendId,
  });
  await tuneQueue(index, options, log);
  return new NetlinkAttachment(netlink, index, backend, options, log, pair.ours);
}

/**
 * Takes over a device a previous daemon attached (found by its backend
 * identifier): hands the kernel a new socket with RECONFIGURE and serves it.
 * Throws NO_DEVICE when the device no longer carries `backendId`.
 */
export async function reattachNetlink(
  netlink: NbdNetlink,
  index: number,
  backend: Backend,
  options: NetlinkAttachOptions,
): Promise<NetlinkAttachedDevice> {
  const log = options.log ?? logger("nbd");
  const device = `/dev/nbd${index}`;
  if (await readBackendId(index) !== options.backendId) {
    throw new NbdAttachError(
      `Cannot take over ${device}: it is no longer connected to ${options.backendId}`,
      "NO_DEVICE",
    );
  }
  const attachment = new NetlinkAttachment(netlink, index, backend, options, log, null);
  log.info("taking over NBD device", { device, backendId: options.backendId });
  await tuneQueue(index, options, log);
  return attachment;
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
  readonly stats: IoStats;
  readonly done: Promise<void>;
  readonly #netlink: NbdNetlink;
  readonly #backend: Backend;
  readonly #options: NetlinkAttachOptions;
  readonly #log: Logger;
  readonly #stop = new AbortController();
  #stream: ConnStream | null = null;
  /** Why we stop: null while serving. */
  #ending: "detach" | "release" | null = null;
  #disconnecting: Promise<void> | null = null;
  #wake: (() => void) | null = null;

  constructor(
    netlink: NbdNetlink,
    index: number,
    backend: Backend,
    options: NetlinkAttachOptions,
    log: Logger,
    first: Deno.Conn | null,
  ) {
    this.#netlink = netlink;
    this.index = index;
    this.device = `/dev/nbd${index}`;
    this.backendId = options.backendId;
    this.#backend = backend;
    this.#options = options;
    this.#log = log;
    this.stats = options.stats ?? new IoStats();
    this.done = this.#run(first);
  }

  async #run(first: Deno.Conn | null): Promise<void> {
    let conn = first;
    let retryMs = RETRY_FIRST_MS;
    for (;;) {
      if (conn === null) {
        conn = await this.#newSocket();
        if (conn === null) break;
      }
      const stream = this.#stream = new ConnStream(conn, `${this.device} socket`);
      conn = null;
      const before = this.stats.latencyCount;
      const end = await this.#serve(stream);
      stream.close();
      this.#stream = null;
      if (this.#ending !== null || end === "disc" || end === "stopped") break;
      if (!await this.#stillOurs()) {
        this.#log.warn("NBD device disconnected without an unmount request", {
          device: this.device,
        });
        break;
      }
      if (this.stats.latencyCount === before) {
        // Nothing served: the kernel dropped the socket (RECONFIGURE with none dead yet).
        await this.#sleep(retryMs);
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      } else {
        retryMs = RETRY_FIRST_MS;
        this.#log.warn("the kernel closed our NBD socket; handing it a new one", {
          device: this.device,
        });
      }
    }
    await this.#disconnecting;
    this.#log.info(
      this.#ending === "release" ? "NBD device left to the next daemon" : "NBD device detached",
      { device: this.device, requests: this.stats.latencyCount },
    );
  }

  async #serve(stream: ConnStream): Promise<ServeEnd | "error"> {
    try {
      return await serveTransmission(stream, this.#backend, {
        maxInFlight: this.#options.maxInFlight,
        stats: this.stats,
        log: this.#log,
        stop: this.#stop.signal,
      });
    } catch (error) {
      if (this.#ending === null) {
        this.#log.warn("NBD serve loop ended with an error", { device: this.device, error });
      }
      return "error";
    }
  }

  /** A socket the kernel took through RECONFIGURE (as far as the call tells), or null. */
  async #newSocket(): Promise<Deno.Conn | null> {
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
            device: this.device,
            error,
          });
          return null;
        }
        this.#log.warn("RECONFIGURE failed; retrying", { device: this.device, error });
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

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = null;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async detach(): Promise<void> {
    if (this.#ending === null) {
      this.#ending = "detach";
      this.#log.info("detaching NBD device", { device: this.device });
      this.#wake?.();
      const timer = setTimeout(() => {
        this.#log.warn("requests still in flight after the detach timeout; closing the socket", {
          device: this.device,
          inFlight: this.stats.inFlight,
        });
        this.#stream?.close();
      }, this.#options.detachTimeoutMs ?? DEFAULT_DETACH_TIMEOUT_MS);
      this.done.finally(() => clearTimeout(timer));
      // The kernel sends NBD_CMD_DISC (our loop ends on it), shuts the socket
      // down and fails whatever it still has queued.
      this.#disconnecting = this.#netlink.disconnect(this.index).catch((error) => {
        this.#log.warn("NBD DISCONNECT failed; closing the socket instead", {
          device: this.device,
          error,
        });
        this.#stream?.close();
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
      this.#wake?.();
      const deadline = Date.now() + (this.#options.detachTimeoutMs ?? DEFAULT_DETACH_TIMEOUT_MS);
      while (this.stats.inFlight > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      this.#stream?.close();
    }
    await this.done;
  }
}
