/**
 * One client connection of a test proxy: GREETING first, then a reader loop
 * that admits requests within a byte budget (src/io/admission.ts) and hands
 * them on; the connection owns the socket, the admission and the lifetime.
 * State moves one way: greeted → logged in → attached → closed.
 *
 * The other jobs live beside it: client_session.ts (LOGIN, ATTACH: who is
 * served), dispatch.ts (what a request does with the store), reply_path.ts
 * (handlers, injected reply faults, the one serialized writer) and
 * idle_timeout.ts (closing a silent client).
 * @module
 */
import { BufferPool } from "../../io/buffer_pool.ts";
import { FrameReader } from "../../io/frame_reader.ts";
import type { ByteStream } from "../../io/stream.ts";
import { Admission } from "../../io/admission.ts";
import { errorMessage } from "../../error_info.ts";
import {
  decodeHeader,
  decodeReadRequest,
  encodeEmpty,
  encodeGreeting,
  encodeProxyList,
  HEADER_SIZE,
  type IoRange,
  Op,
  opName,
  type ProxyAddress,
  READ_REQUEST_SIZE,
  SESSION_ID_SIZE,
  Status,
  statusName,
} from "../wire.ts";
import { ClientSession } from "./client_session.ts";
import type { ConnectionContext } from "./context.ts";
import { RequestDispatcher } from "./dispatch.ts";
import { IdleTimeout } from "./idle_timeout.ts";
import { ReplyPath } from "./reply_path.ts";

const EMPTY = new Uint8Array(0);
/** Payload and reply buffers a connection keeps for reuse (fresh 1 MiB buffers fault in page by page). */
const POOLED_BYTES = 16 * 1024 * 1024;

function sameSessionId(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < SESSION_ID_SIZE; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class ServerConnection {
  readonly sessionId = crypto.getRandomValues(new Uint8Array(SESSION_ID_SIZE));
  readonly peer: string;
  /** Settles when the reader, the writer and every request handler have finished. */
  readonly done: Promise<void>;

  readonly #conn: Deno.Conn;
  readonly #ctx: ConnectionContext;
  #closed = false;
  #signalClosed!: () => void;
  readonly #closedPromise = new Promise<void>((resolve) => this.#signalClosed = resolve);

  #warnedSessionId = false;

  /** Requests and bytes held between reading a request and writing its reply. */
  readonly #admission: Admission;
  readonly #replies: ReplyPath;
  readonly #dispatcher: RequestDispatcher;
  readonly #idle: IdleTimeout;
  readonly #pool = new BufferPool(POOLED_BYTES);

  constructor(conn: Deno.Conn, ctx: ConnectionContext) {
    this.#conn = conn;
    this.#ctx = ctx;
    // Replies are written whole: a tail segment must not wait for the client's delayed ACK.
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    const addr = conn.remoteAddr as Deno.NetAddr;
    this.peer = `${addr.hostname}:${addr.port}`;
    this.#admission = new Admission(ctx.limits.maxInFlight, ctx.limits.maxBufferedBytes);
    this.#replies = new ReplyPath(conn as ByteStream, {
      sessionId: this.sessionId,
      peer: this.peer,
      ctx,
      isClosed: () => this.#closed,
      closed: this.#closedPromise,
      release: (cost) => this.#release(cost),
      close: () => this.close(),
    });
    this.#dispatcher = new RequestDispatcher({
      sessionId: this.sessionId,
      peer: this.peer,
      log: ctx.log,
      client: new ClientSession(this.sessionId, this.peer, ctx),
      replies: this.#replies,
      pool: this.#pool,
      listProxies: () => this.listProxies(),
    });
    this.#idle = new IdleTimeout(ctx.idleTimeoutMs, ctx.clock, () => ctx.stalled(), (idleMs) => {
      ctx.log.info("closing idle connection", {
        proxy: ctx.proxyName,
        peer: this.peer,
        idleMs: Math.round(idleMs),
      });
      this.close();
    });
    this.done = this.#run();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Closes the socket at once (the client sees EOF or a reset); pending replies are dropped. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // Already closed by the peer side of the runtime.
    }
    this.#idle.stop();
    this.#signalClosed();
    this.#replies.close(); // reply delays end; queued replies give back what they hold
    this.#admission.rejectAll(new Error("connection closed"));
  }

  /** Queues a LIST_PROXIES push (sequence 0) unless one is still waiting to be sent. */
  pushProxyList(proxies: readonly ProxyAddress[]): void {
    if (this.#closed) return;
    this.#replies.push(() => encodeProxyList(this.sessionId, 0, proxies));
  }

  /** Set by the proxy: the running proxies, for LIST_PROXIES. */
  listProxies: () => ProxyAddress[] = () => [];

  async #run(): Promise<void> {
    const ctx = this.#ctx;
    ctx.log.debug("connection opened", { proxy: ctx.proxyName, peer: this.peer });
    this.#replies.enqueue(
      encodeGreeting(this.sessionId, {
        proxyName: ctx.proxyName,
        idleTimeoutS: Math.ceil(ctx.idleTimeoutMs / 1000),
      }),
      0,
    );
    this.#idle.start();
    let cleanEof = false;
    try {
      cleanEof = await this.#readLoop();
    } catch (error) {
      if (!this.#closed) {
        // A reset is how clients often leave; a bad packet or a cut frame is worth a warning.
        const gone = error instanceof Deno.errors.ConnectionReset ||
          error instanceof Deno.errors.BrokenPipe;
        ctx.log[gone ? "debug" : "warn"]("closing connection", {
          proxy: ctx.proxyName,
          peer: this.peer,
          reason: errorMessage(error),
        });
      }
    }
    this.#idle.stop();
    // On a clean EOF answer what is in flight (the client may have half-closed).
    if (cleanEof && !this.#closed) await this.#replies.handlersFinished();
    if (cleanEof && !this.#closed) await this.#replies.flushed();
    this.close();
    await this.#replies.handlersFinished();
    await this.#replies.flushed();
    ctx.log.debug("connection closed", { proxy: ctx.proxyName, peer: this.peer });
  }

  // ---- reader ----

  /** Returns true on a clean EOF at a packet boundary. */
  async #readLoop(): Promise<boolean> {
    const ctx = this.#ctx;
    const reader = new FrameReader(this.#conn as ByteStream);
    const headerBytes = new Uint8Array(HEADER_SIZE);
    const readRange = new Uint8Array(READ_REQUEST_SIZE);
    while (!this.#closed) {
      if (ctx.stalled()) {
        this.#idle.readerPaused();
        await Promise.race([ctx.whenUnstalled(), this.#closedPromise]);
        this.#idle.readerResumed();
        continue;
      }
      if (!await reader.readFull(headerBytes, "IVBS header", true)) return true;
      this.#idle.activity();
      // Unknown op or oversized data_len: the stream cannot be trusted, so the caller closes.
      const header = decodeHeader(headerBytes);
      const { op, dataLen, sequence } = header;
      const sessionOk = sameSessionId(header.sessionId, this.sessionId);

      let payload: Uint8Array = EMPTY;
      let range: IoRange | null = null;
      let cost = HEADER_SIZE + dataLen;
      if (op === Op.READ && dataLen === READ_REQUEST_SIZE) {
        // The reply size is known only from the payload: read it first, then admit.
        await reader.readFull(readRange, "READ request");
        payload = readRange;
        try {
          range = decodeReadRequest(readRange);
          cost = HEADER_SIZE + range.length;
        } catch {
          range = null; // answered INVALID_REQUEST below
        }
        if (!this.#admission.tryAcquire(1, cost)) await this.#waitForRoom(cost);
      } else {
        if (!this.#admission.tryAcquire(1, cost)) await this.#waitForRoom(cost);
        if (dataLen > 0) {
          // WRITE payloads go back to the pool once stored (see dispatch.ts).
          payload = op === Op.WRITE ? this.#pool.take(dataLen) : new Uint8Array(dataLen);
          await reader.readFull(payload, `${opName(op)} payload`);
        }
      }
      if (this.#closed) {
        this.#release(cost);
        break;
      }
      this.#idle.activity();

      const name = opName(op);
      ctx.stats.requests[name] = (ctx.stats.requests[name] ?? 0) + 1;
      if (!sessionOk) {
        // Once per connection at warn: a confused client must not flood the log.
        ctx.log[this.#warnedSessionId ? "debug" : "warn"]("request with a foreign session id", {
          proxy: ctx.proxyName,
          peer: this.peer,
          op: name,
        });
        this.#warnedSessionId = true;
        this.#replies.enqueue(
          encodeEmpty(this.sessionId, op, sequence, Status.INVALID_REQUEST),
          cost,
        );
        continue;
      }
      const injected = ctx.injected.take(ctx.proxyIndex, op);
      if (injected !== undefined) {
        ctx.stats.injected++;
        ctx.log.debug("injected status", { op: name, status: statusName(injected) });
        const packet = encodeEmpty(this.sessionId, op, sequence, injected);
        this.#replies.spawn(op, sequence, cost, () => Promise.resolve({ packet }));
        continue;
      }
      const inline = this.#dispatcher.dispatch(op, sequence, payload, range, cost);
      if (inline) await inline;
    }
    return false;
  }

  // ---- admission ----

  /** Waits for a request slot and `cost` bytes; a reader waiting for them counts as paused. */
  async #waitForRoom(cost: number): Promise<void> {
    this.#ctx.stats.readerWaits++;
    this.#idle.readerPaused();
    await this.#admission.acquire(1, cost); // rejects once the connection closes
    this.#idle.readerResumed();
  }

  #release(cost: number): void {
    this.#admission.release(1, cost);
  }
}
