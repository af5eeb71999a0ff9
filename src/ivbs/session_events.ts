/**
 * What an IVBS session reports: its events (for logs, metrics and the events
 * view), its counters, and why it left a proxy.
 * @module
 */
import type { ConnectionEndCause } from "./connection.ts";
import type { IoCounters } from "../block/counters.ts";

/**
 * Why the session left a proxy: the connection's end (closed by the proxy, an
 * I/O or protocol error, dead-peer timeout, liveness probe unanswered) or a
 * status that asks for another proxy (USE_ANOTHER_PROXY, EXPIRED, login refused).
 */
export type FailoverCause = ConnectionEndCause | "status";

export const FAILOVER_CAUSES: readonly FailoverCause[] = [
  "closed",
  "error",
  "status",
  "dead-peer",
  "probe-timeout",
];

export type IvbsSessionEvent =
  /** `replayed`: requests re-sent on this connection (waiting since the previous one failed). */
  | { type: "connected"; proxy: string; proxyName: string; replayed: number }
  /** `cause` classifies `reason` for metrics and the events view. */
  | { type: "failover"; from: string; reason: string; cause: FailoverCause }
  /** Connecting, logging in or attaching on `proxy` failed (it goes to the back of the list). */
  | { type: "proxy-failed"; proxy: string; reason: string }
  /** A LIST_PROXIES arrived ("host:port" each). */
  | { type: "proxies-listed"; proxies: string[] }
  | { type: "retry"; op: string; status: string; attempt: number }
  | { type: "io-timeout"; op: string }
  /** The session stopped for good (e.g. the image changed size); every request fails with EIO. */
  | { type: "failed"; reason: string };

/** A session's counters; `inFlight` counts ≤ 32 MiB pieces, those awaiting a proxy included. */
export interface IvbsSessionStats extends IoCounters {
  /** Connections lost while mounted. */
  failovers: number;
  /** Connections re-established after a loss. */
  reconnects: number;
  /** Requests re-sent after NOT_READY / TEMPORARY_ERROR / NOT_LOGGEDIN. */
  retries: number;
  /** Every KEEPALIVE, probes included, and those the proxy answered. */
  keepalivesSent: number;
  keepalivesAnswered: number;
  /** KEEPALIVEs sent because a proxy looked hung, and those it answered. */
  probesSent: number;
  probesAnswered: number;
  /** `failovers` split by cause. */
  failoverCauses: Record<FailoverCause, number>;
}

/** Counters of a session that has done nothing yet. */
export function emptySessionStats(): IvbsSessionStats {
  return {
    inFlight: 0,
    reads: 0,
    writes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    failovers: 0,
    reconnects: 0,
    retries: 0,
    keepalivesSent: 0,
    keepalivesAnswered: 0,
    probesSent: 0,
    probesAnswered: 0,
    failoverCauses: { closed: 0, error: 0, status: 0, "dead-peer": 0, "probe-timeout": 0 },
  };
}
