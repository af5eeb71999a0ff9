/**
 * The daemon's file descriptor budget: at start-up the soft RLIMIT_NOFILE is
 * raised to the hard limit (every NBD device, export client and IVBS
 * connection is a descriptor), and the HTTP front-end gets a share of it small
 * enough that idle connections can never take the descriptors the data path needs.
 * @module
 */
import { getrlimit, RLIM_INFINITY, RLIMIT_NOFILE, setrlimit } from "../../ffi/rlimit.ts";
import { errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";
import { openDescriptors } from "./process_metrics.ts";

/** Descriptors the HTTP API may hold at most, whatever the limit. */
export const MAX_HTTP_CONNECTIONS = 256;
/** ... and at least (a tiny limit still lets the operator in). */
export const MIN_HTTP_CONNECTIONS = 4;

/**
 * Raises the soft descriptor limit to the hard one; returns the soft limit in
 * force afterwards, or null when it cannot be read (no FFI permission).
 */
export function raiseDescriptorLimit(log: Logger): number | null {
  let limit;
  try {
    limit = getrlimit(RLIMIT_NOFILE);
  } catch (error) {
    log.warn("cannot read the descriptor limit", { error: errorMessage(error) });
    return null;
  }
  if (limit.soft < limit.hard && limit.hard !== RLIM_INFINITY) {
    try {
      setrlimit(RLIMIT_NOFILE, { soft: limit.hard, hard: limit.hard });
      log.info("raised the descriptor limit", { from: limit.soft, to: limit.hard });
      limit = { soft: limit.hard, hard: limit.hard };
    } catch (error) {
      log.warn("cannot raise the descriptor limit", {
        soft: limit.soft,
        hard: limit.hard,
        error: errorMessage(error),
      });
    }
  }
  return limit.soft > BigInt(Number.MAX_SAFE_INTEGER)
    ? Number.MAX_SAFE_INTEGER
    : Number(limit.soft);
}

/**
 * HTTP connections allowed at once: a quarter of the descriptors still free
 * (`softLimit` minus those open now), within bounds.
 */
export function httpConnectionCap(softLimit: number | null, openNow = openDescriptors()): number {
  if (softLimit === null) return 64;
  const free = Math.max(0, softLimit - (openNow ?? 0));
  return Math.max(MIN_HTTP_CONNECTIONS, Math.min(MAX_HTTP_CONNECTIONS, Math.floor(free / 4)));
}
