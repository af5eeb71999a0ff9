/**
 * What a test-server connection is given by its proxy and server: the shared
 * store, users, fault switches, counters and bounds.
 * @module
 */
import type { Logger } from "../../log.ts";
import type { Clock } from "../../clock.ts";
import type { InjectedStatuses } from "./faults.ts";
import type { ImageStore } from "./store.ts";
import type { UserTable } from "./users.ts";

/** Counters shared by every proxy of a server. */
export interface ServerStats {
  connectionsAccepted: number;
  /** Requests received, by op name. */
  requests: Record<string, number>;
  /** Requests answered with an injected status. */
  injected: number;
  /** Times a connection's reader stopped for want of room: backpressure reached a client. */
  readerWaits: number;
  /** Replies waiting out `replyDelayMs` right now (a gauge). */
  delayedReplies: number;
}

/** Bounds that keep one connection's memory finite. */
export interface ConnectionLimits {
  /** Requests admitted and not yet answered (default 256). */
  maxInFlight: number;
  /** Bytes of request payloads and replies held (default 64 MiB; one request may exceed it alone). */
  maxBufferedBytes: number;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  maxInFlight: 256,
  maxBufferedBytes: 64 * 1024 * 1024,
};

/** What a connection needs from its proxy and server. */
export interface ConnectionContext {
  proxyIndex: number;
  proxyName: string;
  idleTimeoutMs: number;
  store: ImageStore;
  users: UserTable;
  injected: InjectedStatuses;
  stats: ServerStats;
  replyDelayMs?: { min: number; max: number };
  limits: ConnectionLimits;
  log: Logger;
  /** The idle timeout runs on it. */
  clock: Clock;
  /** True while the proxy answers nothing and reads nothing. */
  stalled(): boolean;
  /** Resolves when the proxy is no longer stalled. */
  whenUnstalled(): Promise<void>;
  /** True while READ/WRITE replies are held back (KEEPALIVE still answered). */
  holding(): boolean;
  /** Resolves when held replies may go. */
  whenReleased(): Promise<void>;
}
