/**
 * What an IvbsSession is opened with: the image, credentials and proxies, and
 * the timeouts and bounds of its data path, with their defaults.
 * @module
 */
import type { Backoff } from "./proxy_list.ts";
import type { IvbsSessionEvent } from "./session_events.ts";
import type { LivenessOptions } from "./liveness.ts";
import type { Logger } from "../log.ts";
import type { Clock } from "../clock.ts";
import type { ProxyAddress } from "./wire.ts";

export interface IvbsSessionOptions {
  /** Configured fallback list; LIST_PROXIES from the proxies is tried first. */
  proxies: ProxyAddress[];
  image: string;
  username: string;
  password: string;
  /** Mount read-only even if the image is writable. */
  readOnly?: boolean;
  /** No reply to anything in flight (or a keepalive) for this long = failed (default 15 000). */
  deadPeerTimeoutMs?: number;
  /** A request no proxy could serve within it fails with EIO (default 120 000; 0 = forever). */
  ioTimeoutMs?: number;
  /** TCP connect + GREETING bound per proxy (default 5 000). */
  connectTimeoutMs?: number;
  /** Between rounds over the proxy list and between status retries (default 100 / 5 000, jittered). */
  backoff?: Backoff;
  /** Bytes outstanding to IVBS before callers wait (default 256 MiB). */
  maxInFlightBytes?: number;
  /** NOT_READY / TEMPORARY_ERROR / NOT_LOGGEDIN retries per request before EIO (default 20). */
  maxRetries?: number;
  /** How long a failed proxy goes to the back of the list (default 30 000). */
  failureMemoryMs?: number;
  /** When to probe a proxy suspected of hanging, and how long it has to answer (DEFAULT_LIVENESS). */
  liveness?: Partial<LivenessOptions>;
  onEvent?: (event: IvbsSessionEvent) => void;
  log?: Logger;
  /**
   * Time for every timer of the session: its own (I/O timeout, retry and
   * reconnect backoff, failure memory) and its connections' (connect, dead
   * peer, keepalive, liveness); default the real clock.
   */
  clock?: Clock;
}

export const DEFAULT_MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024;
export const DEFAULT_MAX_RETRIES = 20;

/** The keys of `values` that are set (undefined must not override a default). */
export function definedOnly<T extends object>(values: T | undefined): Partial<T> {
  return Object.fromEntries(
    Object.entries(values ?? {}).filter(([, value]) => value !== undefined),
  ) as Partial<T>;
}
