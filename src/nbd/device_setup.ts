/**
 * What both ways of attaching a kernel NBD device share (ioctl_attach.ts and
 * netlink_attach.ts; attach.ts chooses between them): the options, the error
 * type, the device size check, the socket pair handed to the kernel and the
 * sysfs queue tuning.
 * @module
 */
import {
  AF_UNIX,
  close,
  connectUnix,
  setsockoptInt,
  SO_SNDBUF,
  SO_SNDBUFFORCE,
  SOCK_CLOEXEC,
  SOCK_STREAM,
  socket,
  SOL_SOCKET,
} from "../../ffi/libc.ts";
import type { Backend } from "../block/backend.ts";
import type { DeviceAttachment, DeviceIoStats } from "../block/device.ts";
import type { Logger } from "../log.ts";
import { CodedError } from "../error_info.ts";
import type { IoStats } from "./stats.ts";

export interface AttachOptions {
  /** Logical block size: a power of two from 512 to 4096; default 4096. */
  blockSize?: number;
  /** Kernel request timeout (NBD_SET_TIMEOUT) in s; default 0 = none: the IVBS layer owns timeouts. */
  timeoutS?: number;
  /** Requests in flight between the kernel and the backend; default 128. */
  maxInFlight?: number;
  /**
   * Largest request the kernel sends, in KiB (sysfs queue/max_sectors_kb);
   * default 1024. The kernel's own default for nbd is 128: eight requests per
   * MiB, each paying the per-request cost of the serve loop. Capped by the
   * driver at 32 MiB, the IVBS request limit too.
   */
  maxRequestKb?: number;
  stats?: IoStats;
  log?: Logger;
  /**
   * How long detach() lets the serve loop answer what is in flight after the
   * kernel's DISC before it closes the socket anyway; default 60 000 ms.
   */
  detachTimeoutMs?: number;
}

/** An attachment as the NBD side returns it: the block contract, with live counters. */
export interface AttachedDevice extends DeviceAttachment {
  readonly stats: DeviceIoStats;
}

/** Why a device could not be attached; the mount table passes these through as its own. */
export const NBD_ATTACH_ERROR_CODES = [
  "NO_MODULE",
  "NOT_ROOT",
  "BUSY",
  "NO_DEVICE",
  "IOCTL",
] as const;
export type NbdAttachErrorCode = typeof NBD_ATTACH_ERROR_CODES[number];

/** Why a device could not be attached. */
export class NbdAttachError extends CodedError<NbdAttachErrorCode> {
  override readonly name = "NbdAttachError";
}

export const DEFAULT_BLOCK_SIZE = 4096;
export const DEFAULT_DETACH_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_REQUEST_KB = 1024;
/**
 * Send buffer of the kernel's socket end. A unix stream socket queues at most
 * the SENDER's buffer, 208 KiB by default: a 1 MiB WRITE would reach us in
 * pieces with a wait between them.
 */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

/**
 * Checks the block size and timeout an attachment asks for and returns the
 * device size: the backend's, rounded down to whole blocks (ioctl and netlink
 * attachments alike). Throws RangeError on a bad setting or a backend smaller
 * than one block.
 */
export function deviceSizeBytes(backend: Backend, blockSize: number, timeoutS: number): number {
  if (
    !Number.isInteger(blockSize) || blockSize < 512 || blockSize > 4096 ||
    (blockSize & (blockSize - 1)) !== 0
  ) {
    throw new RangeError(`block size must be a power of two from 512 to 4096, got ${blockSize}`);
  }
  if (!Number.isInteger(timeoutS) || timeoutS < 0) {
    throw new RangeError(`timeout must be a whole number of seconds >= 0, got ${timeoutS}`);
  }
  const blocks = Math.floor(backend.size / blockSize);
  if (blocks < 1) {
    throw new RangeError(
      `backend of ${backend.size} bytes is smaller than one ${blockSize}-byte block`,
    );
  }
  return blocks * blockSize;
}

/**
 * A connected unix stream socket pair: the kernel's end as a raw fd for
 * NBD_SET_SOCK, ours as a Deno.Conn. Not socketpair(2): Deno cannot adopt a raw
 * fd, and waiting on one means poll(2) on an FFI worker thread, whose wake-up
 * then has to wake the main thread. A Deno.Conn waits in the main thread's own
 * reactor: one wake instead of two (in the NBD VM under TCG, another thread's
 * send to our read: median 5.2 ms with poll on a worker, 4.0 ms with Deno.Conn;
 * p90 25 ms and 12 ms). The listener lives in a fresh 0700 directory only
 * until our own connection is accepted.
 */
export async function connectedPair(): Promise<{ kernelEnd: number; ours: Deno.Conn }> {
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-nbd-" });
  const path = `${dir}/socket`;
  let kernelEnd: number | null = null;
  try {
    const listener = Deno.listen({ transport: "unix", path });
    try {
      kernelEnd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC);
      connectUnix(kernelEnd, path);
      return { kernelEnd, ours: await listener.accept() };
    } finally {
      listener.close();
    }
  } catch (error) {
    if (kernelEnd !== null) tryClose(kernelEnd);
    throw error;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Best effort: beyond net.core.wmem_max as root (FORCE), else up to it. */
export function growSendBuffer(fd: number, log: Logger): void {
  try {
    setsockoptInt(fd, SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER_BYTES);
  } catch {
    try {
      setsockoptInt(fd, SOL_SOCKET, SO_SNDBUF, SOCKET_BUFFER_BYTES);
    } catch (error) {
      log.debug("cannot grow the socket send buffer", { fd, error });
    }
  }
}

/** Best effort: the device works with the kernel's default, only slower. */
export async function setMaxRequestKb(index: number, kb: number, log: Logger): Promise<void> {
  const path = `/sys/block/nbd${index}/queue/max_sectors_kb`;
  try {
    const hardLimit = Number(
      (await Deno.readTextFile(`/sys/block/nbd${index}/queue/max_hw_sectors_kb`)).trim(),
    );
    await Deno.writeTextFile(path, String(Math.min(kb, hardLimit || kb)));
  } catch (error) {
    log.warn("cannot set the largest NBD request size; keeping the kernel's", {
      path,
      kb,
      error,
    });
  }
}

export function tryClose(fd: number): void {
  try {
    close(fd);
  } catch {
    // Best effort during cleanup.
  }
}
