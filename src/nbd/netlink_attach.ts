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
import { type Logger, logger } from "../log.ts";
import type { Backend } from "../block/backend.ts";
import { MAX_CONNECTIONS } from "../block/device.ts";
import {
  connectedPair,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_MAX_REQUEST_KB,
  deviceSizeBytes,
  growSendBuffer,
  NbdAttachError,
  setMaxRequestKb,
} from "./device_setup.ts";
import { type NbdNetlink, NetlinkError } from "./netlink.ts";
import {
  DEFAULT_REQUEUE_AFTER_S,
  type NetlinkAttachedDevice,
  NetlinkAttachment,
  type NetlinkAttachOptions,
  readBackendId,
  setRequestTimer,
} from "./netlink_device.ts";
import { transmissionFlags } from "./flags.ts";
import { transmissionFlagNames } from "./wire.ts";

export {
  DEFAULT_REQUEUE_AFTER_S,
  type NetlinkAttachedDevice,
  type NetlinkAttachOptions,
  newBackendId,
  readBackendId,
} from "./netlink_device.ts";

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

/**
 * The transmission flags of a device served by `backends`, one per connection
 * (all sessions on one image, so they describe it alike). CAN_MULTI_CONN is
 * among them for backends without a cache of their own: the argument from
 * IVBS's semantics is written once, at canMultiConn in flags.ts.
 */
function deviceFlags(backends: readonly Backend[]): number {
  return transmissionFlags(backends[0]);
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
