/**
 * IvbsSession: one mounted IVBS image as a Backend for the NBD side. It keeps
 * one connection to one proxy at a time and makes proxy faults invisible to
 * the caller: on a TCP error, EOF, dead peer, USE_ANOTHER_PROXY or EXPIRED it
 * connects to the next proxy (newest LIST_PROXIES first, then configured),
 * logs in, attaches the same image and re-sends every request still in flight
 * exactly once. A proxy that hangs is found by probing it with KEEPALIVE when
 * requests wait suspiciously long (liveness.ts), well before the dead-peer
 * timeout. NOT_LOGGEDIN logs in again; NOT_READY and TEMPORARY_ERROR are
 * retried with backoff; other failures fail that one request with an errno.
 * A request no proxy could serve within the I/O timeout fails with EIO while
 * the session keeps trying to reconnect.
 *
 * This module is the Backend face and the per-request policy (retry, relogin,
 * fail over, time out); attach.ts opens and attaches a connection, failover.ts
 * chooses the next proxy and paces reconnects, request_table.ts keeps the
 * requests until answered and in replay order, session_timers.ts paces
 * retries and times requests out.
 *
 * @example Mount an image on the IVBS test server, write and read back
 * ```ts
 * import { startIvbsServer } from "./server/mod.ts";
 * import { IvbsSession } from "./session.ts";
 * const server = await startIvbsServer({
 *   users: [{ username: "alice", password: "secret" }],
 *   images: [{ name: "disk0", size: 1 << 20 }],
 *   listProxiesIntervalMs: 0,
 * });
 * const session = await IvbsSession.open({
 *   proxies: server.addresses(),
 *   image: "disk0",
 *   username: "alice",
 *   password: "secret",
 * });
 * await session.write(0, new Uint8Array(512).fill(7));
 * const block = await session.read(0, 512);
 * if (block[511] !== 7 || session.size !== 1 << 20) throw new Error("unexpected data");
 * await session.close();
 * await server.close();
 * ```
 * @module
 */
import { type Backend, BackendError } from "../block/backend.ts";
import { errorMessage } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import { type Clock, SYSTEM_CLOCK } from "../clock.ts";
import { Admission } from "../io/admission.ts";
import type { IvbsConnection, Reply } from "./connection.ts";
import { ConnectionLostError, IvbsMountError, statusAction, statusErrno } from "./errors.ts";
import { DEFAULT_LIVENESS, LatencyWindow } from "./liveness.ts";
import { type Backoff, DEFAULT_BACKOFF, proxyLabel, type ProxyList } from "./proxy_list.ts";
import { checkNames, ImageAttacher } from "./attach.ts";
import { SessionTimers } from "./session_timers.ts";
import { Failover } from "./failover.ts";
import { type Chunk, inPieces, type Kind, RequestTable } from "./request_table.ts";
import {
  emptySessionStats,
  type FailoverCause,
  type IvbsSessionEvent,
  type IvbsSessionStats,
} from "./session_events.ts";
import {
  DEFAULT_MAX_IN_FLIGHT_BYTES,
  DEFAULT_MAX_RETRIES,
  definedOnly,
  type IvbsSessionOptions,
} from "./session_options.ts";
import { type AttachReply, statusName } from "./wire.ts";

export {
  FAILOVER_CAUSES,
  type FailoverCause,
  type IvbsSessionEvent,
  type IvbsSessionStats,
} from "./session_events.ts";
export type { IvbsSessionOptions } from "./session_options.ts";

export class IvbsSession implements Backend {
  readonly image: string;

  readonly #forceReadOnly: boolean;
  readonly #ioTimeoutMs: number;
  readonly #backoff: Backoff;
  readonly #onEvent: ((event: IvbsSessionEvent) => void) | undefined;
  readonly #log: Logger;
  /** Bytes of READ/WRITE in flight (one request over the bound goes alone). */
  readonly #budget: Admission;
  readonly #abort = new AbortController();
  readonly #attacher: ImageAttacher;
  readonly #failover: Failover;
  /** Which proxy to use next (the failover's list). */
  readonly #proxies: ProxyList;

  #size = 0;
  #readOnly = false;
  #conn: IvbsConnection | null = null;
  /** Connections being set up or torn down, so close() can wait for them. */
  readonly #settling = new Set<Promise<unknown>>();

  /** Every accepted chunk until answered; those waiting for a connection, in replay order. */
  readonly #requests = new RequestTable();
  readonly #clock: Clock;
  /** Retry pacing (count, back off, log in again) and the I/O timeout. */
  readonly #timers: SessionTimers;

  #closed = false;
  #closing: Promise<void> | null = null;
  #fatal: string | null = null;

  readonly #stats: IvbsSessionStats = emptySessionStats();

  private constructor(options: IvbsSessionOptions) {
    this.image = options.image;
    this.#forceReadOnly = options.readOnly ?? false;
    this.#ioTimeoutMs = options.ioTimeoutMs ?? 120_000;
    this.#backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.#onEvent = options.onEvent;
    this.#log = options.log ?? logger("ivbs");
    this.#clock = options.clock ?? SYSTEM_CLOCK;
    this.#budget = new Admission(
      Infinity,
      options.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES,
    );
    this.#attacher = new ImageAttacher({
      image: options.image,
      username: options.username,
      password: options.password,
      connectTimeoutMs: options.connectTimeoutMs ?? 5_000,
      deadPeerTimeoutMs: options.deadPeerTimeoutMs ?? 15_000,
      liveness: { ...DEFAULT_LIVENESS, ...definedOnly(options.liveness) },
      // Reply latencies over successive connections, for the liveness threshold.
      latencies: new LatencyWindow(),
      onProxyList: (proxies) => {
        this.#proxies.updateListed(proxies);
        this.#emit({ type: "proxies-listed", proxies: proxies.map(proxyLabel) });
      },
      onKeepalive: (event) => {
        if (event === "sent") this.#stats.keepalivesSent++;
        else this.#stats.keepalivesAnswered++;
      },
      onProbe: (event) => {
        if (event === "sent") this.#stats.probesSent++;
        else this.#stats.probesAnswered++;
      },
      signal: this.#abort.signal,
      clock: this.#clock,
      track: (promise) => this.#track(promise),
      log: this.#log,
    });
    this.#timers = new SessionTimers({
      image: options.image,
      clock: this.#clock,
      backoff: this.#backoff,
      maxRetries: options.maxRetries ?? DEFAULT_MAX_RETRIES,
      ioTimeoutMs: this.#ioTimeoutMs,
      requests: this.#requests,
      login: (conn) => this.#attacher.login(conn),
      connectionLost: (conn, reason, cause) => this.#connectionLost(conn, reason, cause),
      finish: (chunk, error) => this.#finish(chunk, error),
      emit: (event) => this.#emit(event),
      countRetry: () => this.#stats.retries++,
      proxy: () => this.proxy,
      log: this.#log,
    });
    this.#failover = new Failover(options.proxies, {
      image: options.image,
      isClosed: () => this.#closed,
      isStopped: () => this.#closed || this.#fatal !== null,
      waitingCount: () => this.#requests.waitingCount,
      establish: (address) => this.#attacher.establish(address),
      reattach: (conn, reply) => this.#reattach(conn, reply),
      emit: (event) => this.#emit(event),
    }, {
      backoff: this.#backoff,
      failureMemoryMs: options.failureMemoryMs,
      clock: this.#clock,
      signal: this.#abort.signal,
      log: this.#log,
    });
    this.#proxies = this.#failover.proxies;
  }

  /**
   * Connects to the first proxy that answers, logs in and attaches the image.
   * Throws IvbsMountError: LOGIN_DENIED, IMAGE_NOT_FOUND, ACCESS_DENIED (from any
   * proxy), NO_PROXY (none reachable) or PROTOCOL (every proxy sent bad bytes).
   */
  static async open(options: IvbsSessionOptions): Promise<IvbsSession> {
    checkNames(options);
    const session = new IvbsSession(options);
    if (session.#proxies.candidates().length === 0) {
      const given = options.proxies.map(proxyLabel).join(", ") || "none";
      throw new IvbsMountError(
        "NO_PROXY",
        `no usable IVBS proxy configured for image "${options.image}" (given: ${given})`,
      );
    }
    try {
      await session.#mount();
    } catch (error) {
      await session.close();
      throw error;
    }
    return session;
  }

  get size(): number {
    return this.#size;
  }

  get readOnly(): boolean {
    return this.#readOnly;
  }

  /** "host:port" of the proxy in use; null while reconnecting. */
  get proxy(): string | null {
    return this.#conn?.isOpen ? this.#conn.label : null;
  }

  /** Proxies in the order the next failover would try them ("host:port"). */
  knownProxies(): string[] {
    return this.#proxies.candidates().map(proxyLabel);
  }

  /** Why the session stopped for good, or null while it works. */
  get failure(): string | null {
    return this.#fatal;
  }

  get stats(): IvbsSessionStats {
    return {
      ...this.#stats,
      inFlight: this.#requests.size,
      failoverCauses: { ...this.#stats.failoverCauses },
    };
  }

  /** Reads `length` bytes at `offset` into a new buffer. */
  async read(offset: number, length: number): Promise<Uint8Array> {
    let result = new Uint8Array(0);
    // Budget first, buffer second: waiting reads hold no memory.
    await this.#read(offset, length, () => result = new Uint8Array(length));
    return result;
  }

  /**
   * Reads `target.length` bytes at `offset` straight into `target` (the serve
   * loop's pooled buffer): the data is copied from the socket once and the
   * session allocates none. Pieces of a read over 32 MiB and requests replayed
   * after a failover land in the same target. Once this settles the session no
   * longer writes to `target`, even if a late reply arrives.
   */
  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.#read(offset, target.length, () => target);
  }

  async #read(offset: number, length: number, target: () => Uint8Array): Promise<void> {
    this.#checkUsable();
    this.#checkRange("read", offset, length);
    if (length === 0) return;
    if (!this.#budget.tryAcquire(0, length)) await this.#waitBudget(length);
    try {
      await inPieces(offset, target(), (at, piece) => this.#submit("READ", at, piece));
      this.#stats.reads++;
      this.#stats.bytesRead += length;
    } finally {
      this.#budget.release(0, length);
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#checkUsable();
    if (this.#readOnly) {
      throw new BackendError(`IVBS image "${this.image}" is mounted read-only`, "EPERM");
    }
    this.#checkRange("write", offset, data.length);
    if (data.length === 0) return;
    if (!this.#budget.tryAcquire(0, data.length)) await this.#waitBudget(data.length);
    try {
      await inPieces(offset, data, (at, piece) => this.#submit("WRITE", at, piece));
      this.#stats.writes++;
      this.#stats.bytesWritten += data.length;
    } finally {
      this.#budget.release(0, data.length);
    }
  }

  /** Stops the session: pending and later calls fail with ESHUTDOWN. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#shutdown();
    return this.#closing;
  }

  // ---- mounting and failover ----

  async #mount(): Promise<void> {
    const { conn, reply } = await this.#failover.mount();
    this.#size = reply.size;
    this.#readOnly = this.#forceReadOnly || reply.readOnly;
    this.#adopt(conn, 0);
  }

  /** A reconnect succeeded: adopt the connection unless the session closed or the image changed. */
  #reattach(conn: IvbsConnection, reply: AttachReply): Promise<void> | void {
    if (this.#closed) return conn.close("session closed");
    if (reply.size !== this.#size) {
      return conn.close("image size changed").then(() =>
        this.#failSession(
          `IVBS image "${this.image}" is ${reply.size} bytes on proxy ${conn.label}, ` +
            `was ${this.#size} bytes when mounted`,
        )
      );
    }
    this.#stats.reconnects++;
    this.#adopt(conn, this.#requests.waitingCount);
  }

  /** Makes `conn` the connection in use and replays every waiting request on it, once. */
  #adopt(conn: IvbsConnection, replayed: number): void {
    this.#conn = conn;
    this.#failover.adopted(conn);
    this.#log.info("IVBS image attached", {
      image: this.image,
      proxy: conn.label,
      proxyName: conn.proxyName,
      size: this.#size,
      readOnly: this.#readOnly,
      replayed,
    });
    this.#emit({ type: "connected", proxy: conn.label, proxyName: conn.proxyName, replayed });
    conn.ended.then((reason) => this.#connectionLost(conn, reason, conn.endCause));
    for (const chunk of this.#requests.takeWaiting()) this.#dispatch(chunk);
  }

  /** The connection in use failed: count it, log it once, start reconnecting. */
  #connectionLost(conn: IvbsConnection, reason: string, cause: FailoverCause): void {
    if (conn !== this.#conn) return;
    this.#conn = null;
    this.#track(conn.close(reason));
    if (this.#closed || this.#fatal !== null) return;
    this.#stats.failovers++;
    this.#stats.failoverCauses[cause]++;
    this.#failover.lost(conn, reason, cause, this.#requests.size);
  }

  /** Stops for good: the image changed under us. Every request fails with EIO. */
  #failSession(reason: string): void {
    if (this.#fatal !== null) return;
    this.#fatal = reason;
    this.#log.error("IVBS session stopped; every request now fails with EIO", {
      image: this.image,
      reason,
    });
    this.#emit({ type: "failed", reason });
    const error = new BackendError(reason, "EIO");
    this.#requests.failAll(error);
    this.#budget.rejectAll(error);
  }

  // ---- requests ----

  /** Waits for room in the byte budget; rejects if the session closes or fails meanwhile. */
  async #waitBudget(length: number): Promise<void> {
    await this.#budget.acquire(0, length);
    if (this.#closed || this.#fatal !== null) {
      this.#budget.release(0, length);
      this.#checkUsable();
    }
  }

  /** Tracks one piece until it is answered, times out or the session closes. */
  #submit(kind: Kind, offset: number, buffer: Uint8Array): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const deadline = this.#ioTimeoutMs > 0 ? this.#clock.now() + this.#ioTimeoutMs : Infinity;
      const chunk = this.#requests.add(kind, offset, buffer, deadline, resolve, reject);
      this.#timers.armIoTimeout();
      this.#dispatch(chunk);
    });
  }

  /** Sends `chunk` on the connection in use, or parks it until one is up. */
  #dispatch(chunk: Chunk): void {
    if (chunk.done) return;
    if (this.#closed) return this.#finish(chunk, this.#shutdownError());
    if (this.#fatal !== null) return this.#finish(chunk, new BackendError(this.#fatal, "EIO"));
    const conn = this.#conn;
    if (conn === null || !conn.isOpen) {
      this.#requests.park(chunk);
      if (conn !== null) {
        this.#connectionLost(conn, conn.endReason ?? "connection closed", conn.endCause);
      } else this.#failover.startReconnect();
      return;
    }
    conn.request(chunk.packet, { target: chunk.target, body: chunk.body, owner: chunk }).then(
      (reply) => this.#onReply(chunk, conn, reply),
      (error) => this.#onRequestError(chunk, conn, error),
    );
  }

  #onReply(chunk: Chunk, conn: IvbsConnection, reply: Reply): void {
    if (chunk.done) return;
    switch (statusAction(reply.status)) {
      case "ok":
        if (conn === this.#conn) this.#failover.served();
        return this.#finish(chunk);
      case "relogin":
        if (!this.#timers.countRetry(chunk, conn, reply.status)) return;
        this.#timers.relogin(conn).then(() => this.#dispatch(chunk), () => this.#dispatch(chunk));
        return;
      case "retry":
        if (!this.#timers.countRetry(chunk, conn, reply.status)) return;
        return this.#timers.later(chunk, () => this.#dispatch(chunk));
      case "failover":
        this.#connectionLost(conn, `${chunk.kind} answered ${statusName(reply.status)}`, "status");
        return this.#dispatch(chunk);
      case "fail":
        return this.#finish(
          chunk,
          new BackendError(
            `IVBS ${chunk.kind} ${chunk.offset}+${chunk.length} of image "${this.image}" ` +
              `failed on proxy ${conn.label}: ${statusName(reply.status)}`,
            statusErrno(reply.status),
          ),
        );
    }
  }

  #onRequestError(chunk: Chunk, conn: IvbsConnection, error: unknown): void {
    if (chunk.done) return;
    if (error instanceof ConnectionLostError) {
      this.#connectionLost(conn, error.reason, conn.endCause);
      return this.#dispatch(chunk);
    }
    this.#finish(
      chunk,
      new BackendError(`IVBS ${chunk.kind} could not be sent: ${errorMessage(error)}`, "EIO"),
    );
  }

  #finish(chunk: Chunk, error?: Error): void {
    this.#requests.finish(chunk, error);
  }

  // ---- helpers ----

  #checkUsable(): void {
    if (this.#closed) throw this.#shutdownError();
    if (this.#fatal !== null) throw new BackendError(this.#fatal, "EIO");
  }

  #checkRange(what: string, offset: number, length: number): void {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 ||
      length < 0 || offset + length > this.#size
    ) {
      throw new BackendError(
        `${what} ${offset}+${length} is outside IVBS image "${this.image}" (${this.#size} bytes)`,
        "EINVAL",
      );
    }
  }

  #shutdownError(): BackendError {
    return new BackendError(`IVBS session for image "${this.image}" is closed`, "ESHUTDOWN");
  }

  #emit(event: IvbsSessionEvent): void {
    try {
      this.#onEvent?.(event);
    } catch (error) {
      this.#log.warn("IVBS session event listener threw", { event: event.type, error });
    }
  }

  /** A promise close() must wait for (a connection being set up or torn down). */
  #track(promise: Promise<unknown>): void {
    const settled = promise.then(() => {}, () => {});
    this.#settling.add(settled);
    settled.then(() => this.#settling.delete(settled));
  }

  async #shutdown(): Promise<void> {
    this.#closed = true;
    this.#abort.abort();
    this.#timers.stop();
    const error = this.#shutdownError();
    this.#requests.failAll(error);
    this.#budget.rejectAll(error);
    const conn = this.#conn;
    this.#conn = null;
    if (conn !== null) await conn.close("session closed");
    await this.#failover.reconnectDone;
    while (this.#settling.size > 0) await Promise.all(this.#settling);
  }
}
