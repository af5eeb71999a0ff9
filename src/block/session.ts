/**
 * What a remote backend session (the IVBS client is one) tells the daemon
 * beyond the Backend contract: the server in use and its counters. Below both
 * sides: src/ivbs/session.ts fills it in, the daemon's status, metrics and
 * mount views read it.
 * @module
 */
import type { Backend } from "./backend.ts";

/** Counters of a session. */
export interface SessionStats {
  /** Requests accepted and not yet answered, including those awaiting a server. */
  readonly inFlight: number;
  /** Connections lost while open, and re-established. */
  readonly failovers: number;
  readonly reconnects: number;
  /** Requests re-sent after a retryable status. */
  readonly retries: number;
  readonly keepalivesSent: number;
  /** Liveness probes (KEEPALIVE to a server that looked hung) and answers to them. */
  readonly probesSent?: number;
  readonly probesAnswered?: number;
  /** Failovers by cause ("closed", "error", "status", "dead-peer", "probe-timeout"). */
  readonly failoverCauses?: Readonly<Record<string, number>>;
  readonly bytesRead: number;
  readonly bytesWritten: number;
}

/** A backend with session details for status and metrics (both optional). */
export interface SessionBackend extends Backend {
  /** "host:port" of the server in use; null while reconnecting. */
  readonly proxy?: string | null;
  readonly stats?: SessionStats;
}
