/**
 * What a caller gives an IvbsConnection and gets back (options, replies, the
 * cause of its end), and the records the connection keeps per request: kept
 * beside connection.ts so that file holds the reader, writer and timers.
 * @module
 */
import type { Clock } from "../clock.ts";
import type { Frame } from "../io/frame_writer.ts";
import { errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";
import type { LatencyWindow, LivenessOptions } from "./liveness.ts";
import { IvbsProtocolError, type OpCode, type ProxyAddress } from "./wire.ts";

export interface ConnectionOptions {
  /** Bound on TCP connect plus the wait for GREETING (default 5 000 ms). */
  connectTimeoutMs?: number;
  /** Replies awaited and none received for this long = dead peer (default 15 000 ms). */
  deadPeerTimeoutMs?: number;
  /** Called with each LIST_PROXIES the proxy sends (push or reply). */
  onProxyList?: (proxies: ProxyAddress[]) => void;
  /** A KEEPALIVE (probes included) was sent, or its answer came back (for the session's counters). */
  onKeepalive?: (event: "sent" | "answered") => void;
  /** Probe a proxy suspected of hanging (none without it: dead-peer timeout only). */
  liveness?: {
    options: Readonly<LivenessOptions>;
    /** Reply latencies, shared by the session's successive connections. */
    latencies: LatencyWindow;
    /** A probe went out, or its answer came back (for the session's counters). */
    onProbe?: (event: "sent" | "answered") => void;
  };
  /** Aborting closes the connection (or abandons the connect). */
  signal?: AbortSignal;
  /** Time for the connect, dead-peer, keepalive and liveness timers (default the real clock). */
  clock?: Clock;
  log?: Logger;
}

/**
 * Why a connection ended: the proxy closed it (EOF, reset) or we did; an I/O
 * or protocol error; no reply within the dead-peer timeout; a liveness probe
 * unanswered.
 */
export type ConnectionEndCause = "closed" | "error" | "dead-peer" | "probe-timeout";

/** A reply: its status and payload (for a READ with a target: that target, filled). */
export interface Reply {
  status: number;
  payload: Uint8Array;
}

/** The session's side of a request: once `done`, an unsent request is dropped, not sent. */
export interface RequestOwner {
  readonly done: boolean;
}

export interface RequestOptions {
  /** READ only: the buffer the data is read into (its length = the requested length). */
  target?: Uint8Array;
  /**
   * Bytes sent right after `packet` and counted in its data_len: a large WRITE's
   * data goes out from the caller's buffer without being copied into the packet.
   * The caller must not change it until the request settles.
   */
  body?: Uint8Array;
  owner?: RequestOwner;
  /** KEEPALIVE sent as a liveness probe: queued ahead of everything else. */
  probe?: boolean;
}

export interface Pending {
  op: OpCode;
  /** The clock's time when queued: a reply's latency, the oldest wait. */
  sentAt: number;
  /** KEEPALIVE sent as a liveness probe. */
  probe: boolean;
  target: Uint8Array | undefined;
  owner: RequestOwner | undefined;
  resolve: (reply: Reply) => void;
  reject: (error: Error) => void;
}

/** A request packet on its way; dropped unsent once its owner is done with it. */
export class Outgoing implements Frame {
  constructor(
    readonly head: Uint8Array,
    readonly body: Uint8Array | undefined,
    readonly sequence: number,
    readonly owner: RequestOwner | undefined,
    readonly dropped: (sequence: number) => void,
  ) {}

  get abandoned(): boolean {
    return this.owner?.done === true;
  }

  written(ok: boolean): void {
    if (!ok) this.dropped(this.sequence);
  }
}

/** Why a connection ended, for its end reason: protocol errors say so. */
export function reasonFor(error: unknown): string {
  const message = errorMessage(error);
  return error instanceof IvbsProtocolError ? `protocol error: ${message}` : message;
}

/** A reset or broken pipe is the proxy going away; anything else is an error. */
export function causeOf(error: unknown): ConnectionEndCause {
  return error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BrokenPipe
    ? "closed"
    : "error";
}

/** Thrown into a request dropped unsent because its owner gave up on it. */
export class AbandonedError extends Error {
  constructor() {
    super("request abandoned before it was sent");
    this.name = "AbandonedError";
  }
}
