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
import { type Backend, BackendError } from "../nbd/backend.ts";
import { errorMessage } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import { Admission } from "../io/admission.ts";
import {
  type ConnectionEndCause,
  IvbsConnection,
  type Reply,
  type RequestOwner,
} from "./connection.ts";
import { ConnectionLostError, IvbsMountError, statusAction, statusErrno } from "./errors.ts";
import { DEFAULT_LIVENESS, LatencyWindow, type LivenessOptions } from "./liveness.ts";
import {
  type Backoff,
  backoffDelay,
  DEFAULT_BACKOFF,
  proxyLabel,
  ProxyList,
} from "./proxy_list.ts";
import {
  type AttachReply,
  decodeAttachReply,
  encodeAttachRequest,
  encodeLogin,
  encodeReadRequest,
  encodeWriteRequestHeader,
  hashPassword,
  IvbsProtocolError,
  MAX_IO_LENGTH,
  type ProxyAddress,
  SESSION_ID_SIZE,
  Status,
  statusName,
} from "./wire.ts";

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
}

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

export interface IvbsSessionStats {
  /** Requests (≤ 32 MiB pieces) accepted and not yet answered, including those awaiting a proxy. */
  inFlight: number;
  /** Completed successfully. */
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  /** Connections lost while mounted. */
  failovers: number;
  /** Connections re-established after a loss. */
  reconnects: number;
  /** Requests re-sent after NOT_READY / TEMPORARY_ERROR / NOT_LOGGEDIN. */
  retries: number;
  /** Every KEEPALIVE, probes included. */
  keepalivesSent: number;
  /** KEEPALIVEs sent because a proxy looked hung, and those it answered. */
  probesSent: number;
  probesAnswered: number;
  /** `failovers` split by cause. */
  failoverCauses: Record<FailoverCause, number>;
}

type Kind = "READ" | "WRITE";

/** One request of at most MAX_IO_LENGTH bytes, as the session tracks it until answered. */
interface Chunk extends RequestOwner {
  id: number;
  kind: Kind;
  offset: number;
  length: number;
  /** Encoded once; each connection stamps its session id and a sequence into it. */
  packet: Uint8Array;
  /** READ: where the data lands (a view into the caller's result). */
  target: Uint8Array | undefined;
  /** Large WRITE: the caller's data, sent after `packet` without a copy. */
  body: Uint8Array | undefined;
  deadline: number;
  attempts: number;
  done: boolean;
  resolve: () => void;
  reject: (error: Error) => void;
}

const DEFAULT_MAX_IN_FLIGHT_BYTES = 256 * 1024 * 1024;
const DEFAULT_MAX_RETRIES = 20;
const NO_SESSION_ID = new Uint8Array(SESSION_ID_SIZE);

/** The keys of `values` that are set (undefined must not override a default). */
function definedOnly<T extends object>(values: T | undefined): Partial<T> {
  return Object.fromEntries(
    Object.entries(values ?? {}).filter(([, value]) => value !== undefined),
  ) as Partial<T>;
}

/** Errors that end a mount attempt on every proxy, not only the one that said so. */
function isDefinitive(error: unknown): error is IvbsMountError {
  return error instanceof IvbsMountError &&
    (error.code === "LOGIN_DENIED" || error.code === "IMAGE_NOT_FOUND" ||
      error.code === "ACCESS_DENIED");
}

/**
 * Names the protocol cannot carry fail here, with the code a proxy would have
 * answered, instead of as an encoding error on every proxy. The codec decides
 * what fits (trial encodings), so no layout is repeated here.
 */
function checkNames(options: IvbsSessionOptions): void {
  const refuse = (code: "IMAGE_NOT_FOUND" | "LOGIN_DENIED", encode: () => void) => {
    try {
      encode();
    } catch (error) {
      if (!(error instanceof IvbsProtocolError)) throw error;
      throw new IvbsMountError(code, `cannot send to IVBS: ${error.message}`);
    }
  };
  refuse("IMAGE_NOT_FOUND", () => encodeAttachRequest(NO_SESSION_ID, 0, options.image));
  refuse(
    "LOGIN_DENIED",
    () =>
      encodeLogin(NO_SESSION_ID, 0, { username: options.username, passwordHash: hashPassword("") }),
  );
}

export class IvbsSession implements Backend {
  readonly image: string;

  readonly #username: string;
  readonly #passwordHash: string;
  readonly #forceReadOnly: boolean;
  readonly #deadPeerMs: number;
  readonly #ioTimeoutMs: number;
  readonly #connectTimeoutMs: number;
  readonly #backoff: Backoff;
  readonly #maxRetries: number;
  readonly #onEvent: ((event: IvbsSessionEvent) => void) | undefined;
  readonly #log: Logger;
  readonly #proxies: ProxyList;
  /** Bytes of READ/WRITE in flight (one request over the bound goes alone). */
  readonly #budget: Admission;
  readonly #abort = new AbortController();
  readonly #liveness: Readonly<LivenessOptions>;
  /** Reply latencies over successive connections, for the liveness threshold. */
  readonly #latencies = new LatencyWindow();

  #size = 0;
  #readOnly = false;
  #conn: IvbsConnection | null = null;
  /** Connections being set up or torn down, so close() can wait for them. */
  readonly #settling = new Set<Promise<unknown>>();
  #reconnectActive = false;
  /** Whether the connection in use answered a request OK; connections lost in a row without. */
  #connServed = false;
  #quickFailures = 0;
  #reconnectDone: Promise<void> = Promise.resolve();
  readonly #relogins = new WeakMap<IvbsConnection, Promise<void>>();

  /** Every accepted chunk until answered, in acceptance order (= deadline order). */
  readonly #outstanding = new Map<number, Chunk>();
  /** Chunks waiting for a connection; replayed in order when one is up. */
  readonly #waiting = new Set<Chunk>();
  readonly #retryTimers = new Set<ReturnType<typeof setTimeout>>();
  #ioTimer: ReturnType<typeof setTimeout> | undefined;
  #nextId = 1;

  #closed = false;
  #closing: Promise<void> | null = null;
  #fatal: string | null = null;

  readonly #stats: IvbsSessionStats = {
    inFlight: 0,
    reads: 0,
    writes: 0,
    bytesRead: 0,
    bytesWritten: 0,
    failovers: 0,
    reconnects: 0,
    retries: 0,
    keepalivesSent: 0,
    probesSent: 0,
    probesAnswered: 0,
    failoverCauses: { closed: 0, error: 0, status: 0, "dead-peer": 0, "probe-timeout": 0 },
  };

  private constructor(options: IvbsSessionOptions) {
    this.image = options.image;
    this.#username = options.username;
    this.#passwordHash = hashPassword(options.password);
    this.#forceReadOnly = options.readOnly ?? false;
    this.#deadPeerMs = options.deadPeerTimeoutMs ?? 15_000;
    this.#ioTimeoutMs = options.ioTimeoutMs ?? 120_000;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 5_000;
    this.#backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.#maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
    this.#onEvent = options.onEvent;
    this.#log = options.log ?? logger("ivbs");
    this.#proxies = new ProxyList(options.proxies, {
      backoff: this.#backoff,
      failureMemoryMs: options.failureMemoryMs,
    });
    this.#budget = new Admission(
      Infinity,
      options.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES,
    );
    this.#liveness = { ...DEFAULT_LIVENESS, ...definedOnly(options.liveness) };
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
      inFlight: this.#outstanding.size,
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
      await this.#runPieces("READ", offset, target());
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
      await this.#runPieces("WRITE", offset, data);
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
    const failures: string[] = [];
    let protocolOnly = true;
    for (const address of this.#proxies.candidates()) {
      try {
        const { conn, reply } = await this.#establish(address);
        this.#size = reply.size;
        this.#readOnly = this.#forceReadOnly || reply.readOnly;
        this.#adopt(conn, 0);
        return;
      } catch (error) {
        if (isDefinitive(error)) throw error;
        this.#proxies.markFailed(address);
        this.#emit({
          type: "proxy-failed",
          proxy: proxyLabel(address),
          reason: errorMessage(error),
        });
        const protocol = error instanceof IvbsProtocolError ||
          (error instanceof ConnectionLostError && error.protocol);
        if (!protocol) protocolOnly = false;
        failures.push(`${proxyLabel(address)}: ${errorMessage(error)}`);
      }
    }
    const code = protocolOnly ? "PROTOCOL" : "NO_PROXY";
    throw new IvbsMountError(
      code,
      `cannot mount IVBS image "${this.image}": no proxy answered (${failures.join("; ")})`,
    );
  }

  /** Connect, GREETING, LOGIN, ATTACH on one proxy. Closes the connection on failure. */
  async #establish(address: ProxyAddress): Promise<{ conn: IvbsConnection; reply: AttachReply }> {
    const conn = await IvbsConnection.open(address, {
      connectTimeoutMs: this.#connectTimeoutMs,
      deadPeerTimeoutMs: this.#deadPeerMs,
      onProxyList: (proxies) => {
        this.#proxies.updateListed(proxies);
        this.#emit({ type: "proxies-listed", proxies: proxies.map(proxyLabel) });
      },
      onKeepalive: () => this.#stats.keepalivesSent++,
      liveness: {
        options: this.#liveness,
        latencies: this.#latencies,
        onProbe: (event) => {
          if (event === "sent") this.#stats.probesSent++;
          else this.#stats.probesAnswered++;
        },
      },
      signal: this.#abort.signal,
      log: this.#log,
    });
    const handshake = this.#handshake(conn);
    this.#track(handshake);
    try {
      return { conn, reply: await handshake };
    } catch (error) {
      await conn.close(`handshake failed: ${errorMessage(error)}`);
      throw error;
    }
  }

  async #handshake(conn: IvbsConnection): Promise<AttachReply> {
    // A session closing mid-handshake must not wait for this proxy.
    const onAbort = () => conn.close("session closed");
    this.#abort.signal.addEventListener("abort", onAbort);
    try {
      await this.#login(conn);
      const attach = await conn.attach(this.image);
      switch (attach.status) {
        case Status.OK:
          break;
        case Status.NOT_FOUND:
          throw new IvbsMountError(
            "IMAGE_NOT_FOUND",
            `IVBS image "${this.image}" not found (proxy ${conn.label})`,
          );
        case Status.PERMISSION_DENIED:
          throw new IvbsMountError(
            "ACCESS_DENIED",
            `IVBS user "${this.#username}" may not use image "${this.image}" (proxy ${conn.label})`,
          );
        default:
          throw new ConnectionLostError(
            conn.label,
            `ATTACH_TO_IMAGE "${this.image}" answered ${statusName(attach.status)}`,
          );
      }
      const reply = decodeAttachReply(attach.payload);
      // Learn the other proxies now rather than at the next periodic push.
      conn.listProxies().catch(() => {});
      return reply;
    } finally {
      this.#abort.signal.removeEventListener("abort", onAbort);
    }
  }

  async #login(conn: IvbsConnection): Promise<void> {
    const reply = await conn.login(this.#username, this.#passwordHash);
    if (reply.status === Status.OK) return;
    if (reply.status === Status.PERMISSION_DENIED) {
      throw new IvbsMountError(
        "LOGIN_DENIED",
        `IVBS proxy ${conn.label} refused login of user "${this.#username}": wrong username or password`,
      );
    }
    throw new ConnectionLostError(conn.label, `LOGIN answered ${statusName(reply.status)}`);
  }

  /** Makes `conn` the connection in use and replays every waiting request on it, once. */
  #adopt(conn: IvbsConnection, replayed: number): void {
    this.#conn = conn;
    this.#connServed = false;
    this.#proxies.markHealthy(conn.address);
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
    const waiting = [...this.#waiting];
    this.#waiting.clear();
    for (const chunk of waiting) this.#dispatch(chunk);
  }

  /** The connection in use failed: count it, log it once, start reconnecting. */
  #connectionLost(conn: IvbsConnection, reason: string, cause: FailoverCause): void {
    if (conn !== this.#conn) return;
    this.#conn = null;
    this.#track(conn.close(reason));
    if (this.#closed || this.#fatal !== null) return;
    this.#proxies.markFailed(conn.address);
    this.#stats.failovers++;
    this.#stats.failoverCauses[cause]++;
    // A proxy that fails us before serving anything (USE_ANOTHER_PROXY to every
    // request, say) must not make us reconnect in a tight loop.
    this.#quickFailures = this.#connServed ? 0 : this.#quickFailures + 1;
    const delayMs = this.#quickFailures >= 2
      ? Math.round(this.#proxies.backoffMs(this.#quickFailures - 1))
      : 0;
    this.#log.warn("IVBS connection failed; failing over", {
      image: this.image,
      from: conn.label,
      reason,
      cause,
      inFlight: this.#outstanding.size,
      candidates: this.#proxies.candidates().map(proxyLabel).join(","),
      delayMs,
    });
    this.#emit({ type: "failover", from: conn.label, reason, cause });
    this.#startReconnect(delayMs);
  }

  #startReconnect(delayMs = 0): void {
    if (this.#reconnectActive || this.#closed || this.#fatal !== null) return;
    this.#reconnectActive = true;
    this.#reconnectDone = this.#reconnect(delayMs);
  }

  async #reconnect(delayMs: number): Promise<void> {
    try {
      if (delayMs > 0) await this.#sleep(delayMs);
      for (let round = 1; !this.#closed && this.#fatal === null; round++) {
        const failures: string[] = [];
        for (const address of this.#proxies.candidates()) {
          if (this.#closed || this.#fatal !== null) return;
          try {
            const { conn, reply } = await this.#establish(address);
            if (this.#closed) {
              await conn.close("session closed");
              return;
            }
            if (reply.size !== this.#size) {
              await conn.close("image size changed");
              this.#failSession(
                `IVBS image "${this.image}" is ${reply.size} bytes on proxy ${conn.label}, ` +
                  `was ${this.#size} bytes when mounted`,
              );
              return;
            }
            this.#stats.reconnects++;
            this.#adopt(conn, this.#waiting.size);
            return;
          } catch (error) {
            this.#proxies.markFailed(address);
            this.#emit({
              type: "proxy-failed",
              proxy: proxyLabel(address),
              reason: errorMessage(error),
            });
            failures.push(`${proxyLabel(address)}: ${errorMessage(error)}`);
          }
        }
        if (this.#closed) return;
        const delayMs = Math.round(this.#proxies.backoffMs(round));
        this.#log.warn("no IVBS proxy usable; retrying", {
          image: this.image,
          round,
          delayMs,
          waiting: this.#waiting.size,
          failures: failures.join("; "),
        });
        await this.#sleep(delayMs);
      }
    } finally {
      // Cleared in the same turn as adopt(), so a loss right after it starts a new loop.
      this.#reconnectActive = false;
    }
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
    for (const chunk of [...this.#outstanding.values()]) this.#finish(chunk, error);
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

  /**
   * Sends `buffer` (READ: the destination) in pieces of at most MAX_IO_LENGTH and
   * settles once every piece has (a failed piece must not return the buffer while
   * its siblings still fill it).
   */
  async #runPieces(kind: Kind, offset: number, buffer: Uint8Array): Promise<void> {
    if (buffer.length <= MAX_IO_LENGTH) return await this.#submit(kind, offset, buffer);
    const pieces: Promise<void>[] = [];
    for (let at = 0; at < buffer.length; at += MAX_IO_LENGTH) {
      const piece = buffer.subarray(at, Math.min(buffer.length, at + MAX_IO_LENGTH));
      pieces.push(this.#submit(kind, offset + at, piece));
    }
    const failed = (await Promise.allSettled(pieces)).find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  /** Tracks one piece until it is answered, times out or the session closes. */
  #submit(kind: Kind, offset: number, buffer: Uint8Array): Promise<void> {
    const length = buffer.length;
    let packet: Uint8Array;
    let body: Uint8Array | undefined;
    if (kind === "READ") {
      packet = encodeReadRequest(NO_SESSION_ID, 0, offset, length);
    } else {
      // Header and offset only, with data_len covering the data sent after it: the data
      // goes from the caller's buffer (the frame writer copies a small one once, into its
      // gathered write, and sends a large one uncopied), never into a fresh packet.
      packet = encodeWriteRequestHeader(NO_SESSION_ID, 0, offset, length);
      body = buffer;
    }
    return new Promise<void>((resolve, reject) => {
      const chunk: Chunk = {
        id: this.#nextId++,
        kind,
        offset,
        length,
        packet,
        target: kind === "READ" ? buffer : undefined,
        body,
        deadline: this.#ioTimeoutMs > 0 ? performance.now() + this.#ioTimeoutMs : Infinity,
        attempts: 0,
        done: false,
        resolve,
        reject,
      };
      this.#outstanding.set(chunk.id, chunk);
      this.#armIoTimer();
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
      this.#waiting.add(chunk);
      if (conn !== null) {
        this.#connectionLost(conn, conn.endReason ?? "connection closed", conn.endCause);
      } else this.#startReconnect();
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
        if (conn === this.#conn) this.#connServed = true;
        return this.#finish(chunk);
      case "relogin":
        if (!this.#countRetry(chunk, conn, reply.status)) return;
        this.#relogin(conn).then(() => this.#dispatch(chunk), () => this.#dispatch(chunk));
        return;
      case "retry": {
        if (!this.#countRetry(chunk, conn, reply.status)) return;
        const timer = setTimeout(() => {
          this.#retryTimers.delete(timer);
          this.#dispatch(chunk);
        }, backoffDelay(this.#backoff, chunk.attempts));
        this.#retryTimers.add(timer);
        return;
      }
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

  /** Counts, logs and reports one retry; false (and the chunk failed) past maxRetries. */
  #countRetry(chunk: Chunk, conn: IvbsConnection, status: number): boolean {
    chunk.attempts++;
    const name = statusName(status);
    if (chunk.attempts > this.#maxRetries) {
      this.#finish(
        chunk,
        new BackendError(
          `IVBS ${chunk.kind} ${chunk.offset}+${chunk.length} of image "${this.image}" still ` +
            `${name} after ${this.#maxRetries} retries (proxy ${conn.label})`,
          "EIO",
        ),
      );
      return false;
    }
    this.#stats.retries++;
    this.#log.warn("IVBS request retried", {
      image: this.image,
      op: chunk.kind,
      offset: chunk.offset,
      length: chunk.length,
      status: name,
      attempt: chunk.attempts,
      proxy: conn.label,
    });
    this.#emit({ type: "retry", op: chunk.kind, status: name, attempt: chunk.attempts });
    return true;
  }

  /** One LOGIN per connection at a time; a refusal ends the connection (→ failover). */
  #relogin(conn: IvbsConnection): Promise<void> {
    let pending = this.#relogins.get(conn);
    if (pending === undefined) {
      pending = this.#login(conn).catch((error) => {
        const cause = conn.isOpen ? "status" : conn.endCause;
        this.#connectionLost(conn, `login again failed: ${errorMessage(error)}`, cause);
        throw error;
      }).finally(() => this.#relogins.delete(conn));
      this.#relogins.set(conn, pending);
    }
    return pending;
  }

  #finish(chunk: Chunk, error?: Error): void {
    if (chunk.done) return;
    chunk.done = true;
    this.#outstanding.delete(chunk.id);
    this.#waiting.delete(chunk);
    if (error) chunk.reject(error);
    else chunk.resolve();
  }

  // ---- I/O timeout: one timer for the oldest request ----

  #armIoTimer(): void {
    if (this.#ioTimer !== undefined || this.#ioTimeoutMs === 0) return;
    const oldest = this.#outstanding.values().next();
    if (oldest.done) return;
    const delay = Math.max(0, oldest.value.deadline - performance.now());
    this.#ioTimer = setTimeout(() => this.#expire(), delay);
  }

  #expire(): void {
    this.#ioTimer = undefined;
    const now = performance.now();
    // Acceptance order is deadline order: stop at the first one still in time.
    for (const chunk of this.#outstanding.values()) {
      if (chunk.deadline > now) break;
      this.#log.warn("IVBS request timed out", {
        image: this.image,
        op: chunk.kind,
        offset: chunk.offset,
        length: chunk.length,
        timeoutMs: this.#ioTimeoutMs,
        proxy: this.proxy ?? "none (reconnecting)",
      });
      this.#emit({ type: "io-timeout", op: chunk.kind });
      this.#finish(
        chunk,
        new BackendError(
          `IVBS ${chunk.kind} ${chunk.offset}+${chunk.length} of image "${this.image}" not ` +
            `served within ${this.#ioTimeoutMs} ms`,
          "EIO",
        ),
      );
    }
    this.#armIoTimer();
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

  /** Backoff sleep that close() cuts short. */
  #sleep(ms: number): Promise<void> {
    const signal = this.#abort.signal;
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal.addEventListener("abort", done);
    });
  }

  async #shutdown(): Promise<void> {
    this.#closed = true;
    this.#abort.abort();
    clearTimeout(this.#ioTimer);
    this.#ioTimer = undefined;
    for (const timer of this.#retryTimers) clearTimeout(timer);
    this.#retryTimers.clear();
    const error = this.#shutdownError();
    for (const chunk of [...this.#outstanding.values()]) this.#finish(chunk, error);
    this.#budget.rejectAll(error);
    const conn = this.#conn;
    this.#conn = null;
    if (conn !== null) await conn.close("session closed");
    await this.#reconnectDone;
    while (this.#settling.size > 0) await Promise.all(this.#settling);
  }
}
