/**
 * Attaches a backend to a kernel NBD device through the ioctl interface:
 * open /dev/nbdN, connect a unix socket pair, configure the device (block size, size,
 * flags, timeout) and hand it one end, then run NBD_DO_IT on a worker thread
 * while serveTransmission serves the other end on the event loop. attach.ts
 * uses it where the kernel has no nbd netlink family or the config asks for it.
 *
 * One connection only: several would need one NBD_SET_SOCK per socket before
 * DO_IT, which the kernel allows, but devices attached this way cannot outlive
 * the daemon anyway, and netlink (the default) carries N connections.
 *
 * Hazards this module is built around (drivers/block/nbd.c):
 * - Every NBD_SET_SOCK for a device must come from the task that set it up, so
 *   all short SET_* ioctls run synchronously on the main thread; only DO_IT,
 *   which blocks until disconnect, runs on a worker thread.
 * - After NBD_DISCONNECT the kernel sends NBD_CMD_DISC, but NBD_DO_IT returns
 *   only once its receive side sees the socket close. So after the serve loop
 *   has answered what was in flight we close OUR end first and only then wait
 *   for DO_IT; waiting first hangs forever (the 2013 prototype's "zombie").
 * - A signal delivered to the thread waiting in DO_IT makes the kernel tear the
 *   device down. Process signals normally go to the main thread; the netlink
 *   attachment (netlink_attach.ts) has no such waiting thread at all.
 * - The kernel drops the device's configuration (the `pid` file, the size)
 *   when the last open fd of it closes, so detach closes every fd.
 * @module
 */
import {
  ioctl,
  ioctlOnWorker,
  LibcError,
  NbdIoctl,
  O_CLOEXEC,
  O_RDWR,
  open,
} from "../../ffi/libc.ts";
import { ConnStream } from "../io/conn_stream.ts";
import { type Logger, logger } from "../log.ts";
import type { Backend } from "../block/backend.ts";
import { nbdIndex, readNbdDevice } from "./devices.ts";
import { pathExists } from "../path_exists.ts";
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
  tryClose,
} from "./device_setup.ts";
import { transmissionFlags } from "./flags.ts";
import { serveTransmission } from "./serve.ts";
import { IoStats } from "./stats.ts";
import { transmissionFlagNames } from "./wire.ts";

/** How long attach waits for the kernel to show the device running (its `pid` file). */
const STARTUP_WAIT_MS = 10_000;

/** Attaches `backend` to `device` ("/dev/nbdN") and starts serving it. */
export async function attachDevice(
  device: string,
  backend: Backend,
  options: AttachOptions = {},
): Promise<AttachedDevice> {
  const log = options.log ?? logger("nbd");
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
  const timeoutS = options.timeoutS ?? 0;
  const blocks = deviceSizeBytes(backend, blockSize, timeoutS) / blockSize;
  if (blocks * blockSize !== backend.size) {
    log.warn("backend size is not a multiple of the block size; the tail is not exposed", {
      device,
      size: backend.size,
      blockSize,
    });
  }

  const index = nbdIndex(device);
  if (index === null) {
    throw new NbdAttachError(
      `Cannot attach ${device}: not an NBD device path (/dev/nbdN)`,
      "NO_DEVICE",
    );
  }
  if (!await pathExists("/dev/nbd0") && !await pathExists("/sys/block/nbd0")) {
    throw new NbdAttachError(
      `Cannot attach ${device}: the nbd kernel module is not loaded (run "modprobe nbd")`,
      "NO_MODULE",
    );
  }
  const info = await readNbdDevice(index);
  if (info === null || !await pathExists(device)) {
    throw new NbdAttachError(`Cannot attach ${device}: no such device`, "NO_DEVICE");
  }
  if (info.inUse) {
    const by = info.pid === null ? "" : ` (served by pid ${info.pid})`;
    throw new NbdAttachError(`Cannot attach ${device}: device busy${by}`, "BUSY");
  }

  const fds: number[] = [];
  let ours: Deno.Conn | null = null;
  let socketSet = false;
  try {
    const devFd = openDevice(device);
    fds.push(devFd);
    const pair = await connectedPair().catch((error) => {
      throw attachError(device, "socket", error);
    });
    fds.push(pair.kernelEnd);
    ours = pair.ours;
    const kernelEnd = pair.kernelEnd;
    growSendBuffer(kernelEnd, log);
    const flags = transmissionFlags(backend);
    // Synchronous, on this thread: the kernel ties SET_SOCK to the setup task.
    configure(device, () => {
      ioctl(devFd, NbdIoctl.SET_BLKSIZE, blockSize);
      ioctl(devFd, NbdIoctl.SET_SIZE_BLOCKS, blocks);
      ioctl(devFd, NbdIoctl.SET_FLAGS, flags);
      ioctl(devFd, NbdIoctl.SET_TIMEOUT, timeoutS);
      ioctl(devFd, NbdIoctl.CLEAR_SOCK);
      ioctl(devFd, NbdIoctl.SET_SOCK, kernelEnd);
      socketSet = true;
    });
    log.info("NBD device attached", {
      device,
      size: blocks * blockSize,
      blockSize,
      flags: transmissionFlagNames(flags),
      timeoutS,
    });
    const attachment = new KernelAttachment(
      device,
      devFd,
      kernelEnd,
      new ConnStream(ours, `${device} socket`),
      backend,
      { ...options, log },
    );
    fds.length = 0; // the attachment owns them now
    ours = null;
    await attachment.started(index);
    await setMaxRequestKb(index, options.maxRequestKb ?? DEFAULT_MAX_REQUEST_KB, log);
    return attachment;
  } catch (error) {
    if (socketSet) tryIoctl(fds[0], NbdIoctl.CLEAR_SOCK);
    for (const fd of fds) tryClose(fd);
    ours?.close();
    throw error;
  }
}

function openDevice(device: string): number {
  try {
    return open(device, O_RDWR | O_CLOEXEC);
  } catch (error) {
    throw attachError(device, "open", error);
  }
}

function configure(device: string, steps: () => void): void {
  try {
    steps();
  } catch (error) {
    throw attachError(device, "configure", error);
  }
}

function attachError(device: string, step: string, error: unknown): NbdAttachError {
  if (!(error instanceof LibcError)) {
    return new NbdAttachError(`Cannot attach ${device}: ${error}`, "IOCTL", { cause: error });
  }
  const name = error.errnoName;
  if (name === "EPERM" || name === "EACCES") {
    return new NbdAttachError(
      `Cannot attach ${device}: permission denied (${error.message}); run as root`,
      "NOT_ROOT",
      { cause: error },
    );
  }
  if (name === "EBUSY") {
    return new NbdAttachError(
      `Cannot attach ${device}: device busy (${error.message})`,
      "BUSY",
      { cause: error },
    );
  }
  if (step === "open" && (name === "ENOENT" || name === "ENXIO" || name === "ENODEV")) {
    return new NbdAttachError(`Cannot attach ${device}: ${error.message}`, "NO_DEVICE", {
      cause: error,
    });
  }
  return new NbdAttachError(`Cannot attach ${device}: ${error.message}`, "IOCTL", {
    cause: error,
  });
}

function tryIoctl(fd: number, request: number): void {
  try {
    ioctl(fd, request);
  } catch {
    // Best effort during cleanup: the device may already be gone.
  }
}

class KernelAttachment implements AttachedDevice {
  readonly device: string;
  readonly stats: IoStats;
  readonly connections: readonly IoStats[];
  readonly done: Promise<void>;
  readonly #devFd: number;
  readonly #kernelEnd: number;
  readonly #stream: ConnStream;
  readonly #log: Logger;
  readonly #detachTimeoutMs: number;
  readonly #serving: Promise<void>;
  readonly #doIt: Promise<number>;
  #doItReturned = false;
  /** The NBD_DISCONNECT call, once detach() made it. */
  #disconnecting: Promise<void> | null = null;

  constructor(
    device: string,
    devFd: number,
    kernelEnd: number,
    stream: ConnStream,
    backend: Backend,
    options: AttachOptions & { log: Logger },
  ) {
    this.device = device;
    this.#devFd = devFd;
    this.#kernelEnd = kernelEnd;
    this.#stream = stream;
    this.#log = options.log;
    this.#detachTimeoutMs = options.detachTimeoutMs ?? DEFAULT_DETACH_TIMEOUT_MS;
    this.stats = options.stats ?? new IoStats();
    this.connections = [this.stats];
    this.#doIt = ioctlOnWorker(devFd, NbdIoctl.DO_IT).then((result) => {
      this.#doItReturned = true;
      // The kernel is done with the socket: nothing we still send can matter.
      this.#stream.close();
      return result;
    });
    this.#serving = serveTransmission(stream, backend, {
      maxInFlight: options.maxInFlight,
      stats: this.stats,
      log: this.#log,
    }).then(() => {}, (error) => {
      this.#log.warn("NBD serve loop ended with an error", { device, error });
    });
    this.done = this.#teardown();
  }

  /**
   * Resolves once the kernel runs the device (its `pid` file appears); throws
   * if NBD_DO_IT returned first, after cleaning up.
   */
  async started(index: number): Promise<void> {
    const deadline = Date.now() + STARTUP_WAIT_MS;
    for (let delay = 1; Date.now() < deadline; delay = Math.min(delay * 2, 50)) {
      if (this.#doItReturned) {
        await this.done;
        throw new NbdAttachError(
          `Cannot attach ${this.device}: NBD_DO_IT returned at once (see dmesg)`,
          "IOCTL",
        );
      }
      if ((await readNbdDevice(index))?.pid != null) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
    this.#log.warn("no pid file after NBD_DO_IT started; assuming the device runs", {
      device: this.device,
    });
  }

  async detach(): Promise<void> {
    if (this.#disconnecting === null && !this.#doItReturned) {
      this.#log.info("detaching NBD device", { device: this.device });
      this.#closeAfter(this.#detachTimeoutMs);
      // The kernel answers by sending NBD_CMD_DISC; the serve loop ends on it.
      // On a worker thread: the kernel sends DISC under the socket's send lock,
      // which a request blocked on a full socket may hold until our reader, on
      // this thread, makes room.
      this.#disconnecting = ioctlOnWorker(this.#devFd, NbdIoctl.DISCONNECT).then((result) => {
        if (result < 0) {
          this.#log.warn("NBD_DISCONNECT failed; closing the socket instead", {
            device: this.device,
          });
          this.#stream.close();
        }
      });
    }
    await this.done;
  }

  /** Closes our socket end if the serve loop has not finished within `ms`. */
  #closeAfter(ms: number): void {
    const timer = setTimeout(() => {
      this.#log.warn("requests still in flight after the detach timeout; closing the socket", {
        device: this.device,
        inFlight: this.stats.inFlight,
      });
      this.#stream.close();
    }, ms);
    this.#serving.finally(() => clearTimeout(timer));
  }

  async #teardown(): Promise<void> {
    // 1. The serve loop ends on DISC (detach or `nbd-client -d`), on EOF (DO_IT
    //    returned and we closed the stream), or on a protocol error.
    await this.#serving;
    // 2. Close our end BEFORE waiting for DO_IT: DO_IT returns only after that.
    this.#stream.close();
    const result = await this.#doIt;
    if (result !== 0 && this.#disconnecting === null) {
      this.#log.warn("NBD_DO_IT returned an error (kernel timeout or external disconnect?)", {
        device: this.device,
        result,
      });
    }
    // 3. Release the kernel's socket reference and our fds; the kernel then
    //    drops the configuration (pid file gone, size 0). Not before a pending
    //    NBD_DISCONNECT has used the device fd.
    await this.#disconnecting;
    tryIoctl(this.#devFd, NbdIoctl.CLEAR_SOCK);
    tryClose(this.#kernelEnd);
    tryClose(this.#devFd);
    this.#log.info("NBD device detached", {
      device: this.device,
      requested: this.#disconnecting !== null,
      requests: this.stats.latencyCount,
    });
  }
}
