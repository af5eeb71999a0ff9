/**
 * One client connection of a test proxy: GREETING first, then a reader loop
 * that admits requests within a byte budget (src/io/admission.ts), serves
 * READ/WRITE concurrently (replies leave in completion order) and one
 * serialized writer (src/io/frame_writer.ts). State moves one way: greeted →
 * logged in → attached → closed.
 * @module
 */
import { BufferPool } from "../../io/buffer_pool.ts";
import { FrameReader } from "../../io/frame_reader.ts";
import type { ByteStream } from "../../io/stream.ts";
import { Admission } from "../../io/admission.ts";
import { type Frame, FrameWriter } from "../../io/frame_writer.ts";
import { errorMessage } from "../../error_info.ts";
import type { Logger } from "../../log.ts";
import {
  decodeAttachRequest,
  decodeHeader,
  decodeLogin,
  decodeReadRequest,
  decodeWriteRequest,
  encodeAttachReply,
  encodeEmpty,
  encodeGreeting,
  encodeProxyList,
  encodeReadReplyHeader,
  HEADER_SIZE,
  type IoRange,
  Op,
  type OpCode,
  opName,
  type ProxyAddress,
  READ_REQUEST_SIZE,
  SESSION_ID_SIZE,
  Status,
  statusName,
} from "../wire.ts";
import type { InjectedStatuses } from "./faults.ts";
import type { ImageStore, StoredImage } from "./store.ts";
import type { UserTable } from "./users.ts";

/** Counters shared by every proxy of a server. */
export interface ServerStats {
  connectionsAccepted: number;
  /** Requests received, by op name. */
  requests: Record<string, number>;
  /** Requests answered with an injected status. */
  injected: number;
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
  /** True while the proxy answers nothing and reads nothing. */
  stalled(): boolean;
  /** Resolves when the proxy is no longer stalled. */
  whenUnstalled(): Promise<void>;
  /** True while READ/WRITE replies are held back (KEEPALIVE still answered). */
  holding(): boolean;
  /** Resolves when held replies may go. */
  whenReleased(): Promise<void>;
}

/** A reply: its packet, then optionally data written from where it lies (not copied). */
interface Outgoing {
  packet: Uint8Array;
  /** Sent right after `packet`, counted in its data_len. */
  data?: readonly Uint8Array[];
  /** Called once the reply is written or dropped (gives pooled buffers back). */
  dispose?: () => void;
}

/** A reply in the writer's queue; once written or dropped it gives back what it holds. */
class QueuedReply implements Frame {
  readonly head: Uint8Array;
  readonly body: readonly Uint8Array[] | undefined;
  constructor(
    reply: Outgoing,
    /** Budget held for the request this replies to; 0 for packets the proxy sends on its own. */
    readonly cost: number,
    /** A LIST_PROXIES push (at most one waits at a time). */
    readonly push: boolean,
    readonly dispose: (() => void) | undefined,
    readonly settle: (reply: QueuedReply) => void,
  ) {
    this.head = reply.packet;
    this.body = reply.data;
  }

  written(): void {
    this.settle(this);
  }
}

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
  #username: string | null = null;
  #image: StoredImage | null = null;

  /** Requests and bytes held between reading a request and writing its reply. */
  readonly #admission: Admission;

  // Handlers still running (store I/O, reply delays).
  #handlers = 0;
  #handlersIdle: (() => void) | null = null;
  readonly #timers = new Map<ReturnType<typeof setTimeout>, () => void>();

  readonly #writer: FrameWriter<QueuedReply>;
  #pushQueued = false;
  readonly #pool = new BufferPool(POOLED_BYTES);

  // Idle timeout: time of the last packet from the client; the check re-arms itself.
  #lastActivity = performance.now();
  #readerPaused = false;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(conn: Deno.Conn, ctx: ConnectionContext) {
    this.#conn = conn;
    this.#ctx = ctx;
    // Replies are written whole: a tail segment must not wait for the client's delayed ACK.
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    const addr = conn.remoteAddr as Deno.NetAddr;
    this.peer = `${addr.hostname}:${addr.port}`;
    this.#admission = new Admission(ctx.limits.maxInFlight, ctx.limits.maxBufferedBytes);
    this.#writer = new FrameWriter(conn as ByteStream, {
      onError: (error) => {
        if (!this.#closed) {
          ctx.log.debug("write failed", { peer: this.peer, reason: errorMessage(error) });
        }
        this.close();
      },
      // A stalled proxy writes nothing until it is unstalled or closed.
      gate: () =>
        ctx.stalled() && !this.#closed
          ? Promise.race([ctx.whenUnstalled(), this.#closedPromise])
          : undefined,
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
    clearTimeout(this.#idleTimer);
    for (const [id, resolve] of this.#timers) {
      clearTimeout(id);
      resolve();
    }
    this.#timers.clear();
    this.#signalClosed();
    this.#writer.close(); // queued replies give back what they hold
    this.#admission.rejectAll(new Error("connection closed"));
  }

  /** Queues a LIST_PROXIES push (sequence 0) unless one is still waiting to be sent. */
  pushProxyList(proxies: readonly ProxyAddress[]): void {
    if (this.#closed || this.#pushQueued) return;
    this.#pushQueued = true;
    const packet = encodeProxyList(this.sessionId, 0, proxies);
    this.#writer.send(new QueuedReply({ packet }, 0, true, undefined, this.#settle));
  }

  async #run(): Promise<void> {
    const ctx = this.#ctx;
    ctx.log.debug("connection opened", { proxy: ctx.proxyName, peer: this.peer });
    this.#enqueue(
      encodeGreeting(this.sessionId, {
        proxyName: ctx.proxyName,
        idleTimeoutS: Math.ceil(ctx.idleTimeoutMs / 1000),
      }),
      0,
    );
    this.#armIdle(ctx.idleTimeoutMs);
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
    clearTimeout(this.#idleTimer);
    // On a clean EOF answer what is in flight (the client may have half-closed).
    if (cleanEof && !this.#closed) await this.#handlersFinished();
    if (cleanEof && !this.#closed) await this.#writer.flushed();
    this.close();
    await this.#handlersFinished();
    await this.#writer.flushed();
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
        this.#readerPaused = true;
        await Promise.race([ctx.whenUnstalled(), this.#closedPromise]);
        this.#resumeReading();
        continue;
      }
      if (!await reader.readFull(headerBytes, "IVBS header", true)) return true;
      this.#lastActivity = performance.now();
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
          // WRITE payloads go back to the pool once stored (see #dispatch).
          payload = op === Op.WRITE ? this.#pool.take(dataLen) : new Uint8Array(dataLen);
          await reader.readFull(payload, `${opName(op)} payload`);
        }
      }
      if (this.#closed) {
        this.#release(cost);
        break;
      }
      this.#lastActivity = performance.now();

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
        this.#enqueue(encodeEmpty(this.sessionId, op, sequence, Status.INVALID_REQUEST), cost);
        continue;
      }
      const injected = ctx.injected.take(ctx.proxyIndex, op);
      if (injected !== undefined) {
        ctx.stats.injected++;
        ctx.log.debug("injected status", { op: name, status: statusName(injected) });
        const packet = encodeEmpty(this.sessionId, op, sequence, injected);
        this.#spawn(op, sequence, cost, () => Promise.resolve({ packet }));
        continue;
      }
      const inline = this.#dispatch(op, sequence, payload, range, cost);
      if (inline) await inline;
    }
    return false;
  }

  #dispatch(
    op: OpCode,
    sequence: number,
    payload: Uint8Array,
    range: IoRange | null,
    cost: number,
  ): Promise<void> | void {
    const sid = this.sessionId;
    const fail = (status: number, why: string) => {
      this.#ctx.log.debug("request refused", {
        peer: this.peer,
        op: opName(op),
        status: statusName(status),
        why,
      });
      this.#enqueue(encodeEmpty(sid, op, sequence, status), cost);
    };
    switch (op) {
      case Op.LOGIN:
        // Inline, so a client may pipeline LOGIN, ATTACH and I/O without waiting.
        return this.#enqueue(this.#login(sequence, payload), cost);
      case Op.ATTACH_TO_IMAGE:
        // Awaited by the reader, so requests after it see the attached image.
        return this.#attach(sequence, payload).then((packet) => this.#enqueue(packet, cost));
      case Op.KEEPALIVE:
        return this.#spawn(
          op,
          sequence,
          cost,
          () => Promise.resolve({ packet: encodeEmpty(sid, op, sequence) }),
        );
      case Op.LIST_PROXIES:
        return this.#spawn(
          op,
          sequence,
          cost,
          () => Promise.resolve({ packet: encodeProxyList(sid, sequence, this.listProxies()) }),
        );
      case Op.READ: {
        const image = this.#image;
        if (!image) return fail(Status.NOT_READY, "no image attached");
        if (!range) return fail(Status.INVALID_REQUEST, `READ payload of ${payload.length} bytes`);
        if (range.offset + range.length > image.size) {
          return fail(
            Status.INVALID_REQUEST,
            `READ ${range.offset}+${range.length} past ${image.size}`,
          );
        }
        const { offset, length } = range;
        return this.#spawn(op, sequence, cost, () => this.#read(image, sequence, offset, length));
      }
      case Op.WRITE: {
        const image = this.#image;
        if (!image) return fail(Status.NOT_READY, "no image attached");
        let write: { offset: number; data: Uint8Array };
        try {
          write = decodeWriteRequest(payload);
        } catch (error) {
          return fail(Status.INVALID_REQUEST, errorMessage(error));
        }
        if (write.offset + write.data.length > image.size) {
          return fail(
            Status.INVALID_REQUEST,
            `WRITE ${write.offset}+${write.data.length} past ${image.size}`,
          );
        }
        if (image.readOnly) return fail(Status.READ_ONLY, `image ${image.name} is read-only`);
        return this.#spawn(op, sequence, cost, async () => {
          try {
            await image.write(write.offset, write.data);
          } finally {
            // Stored (copied or written out): the buffer can take the next payload.
            this.#pool.give(payload);
          }
          return { packet: encodeEmpty(sid, op, sequence) };
        });
      }
      default:
        return fail(Status.INVALID_REQUEST, `${opName(op)} is not a request`);
    }
  }

  #login(sequence: number, payload: Uint8Array): Uint8Array {
    const ctx = this.#ctx;
    let status: number = Status.PERMISSION_DENIED;
    try {
      const login = decodeLogin(payload);
      if (ctx.users.verify(login.username, login.passwordHash)) {
        if (this.#username !== login.username) this.#image = null;
        this.#username = login.username;
        status = Status.OK;
        ctx.log.debug("login", { peer: this.peer, username: login.username });
      } else {
        this.#username = null;
        this.#image = null;
        ctx.log.info("login denied", { peer: this.peer, username: login.username });
      }
    } catch (error) {
      status = Status.INVALID_REQUEST;
      ctx.log.warn("bad LOGIN request", { peer: this.peer, reason: errorMessage(error) });
    }
    return encodeEmpty(this.sessionId, Op.LOGIN, sequence, status);
  }

  async #attach(sequence: number, payload: Uint8Array): Promise<Uint8Array> {
    const ctx = this.#ctx;
    const reply = (status: number) =>
      encodeEmpty(this.sessionId, Op.ATTACH_TO_IMAGE, sequence, status);
    let name: string;
    try {
      name = decodeAttachRequest(payload);
    } catch (error) {
      ctx.log.warn("bad ATTACH_TO_IMAGE request", { peer: this.peer, reason: errorMessage(error) });
      return reply(Status.INVALID_REQUEST);
    }
    const username = this.#username;
    if (username === null) return reply(Status.NOT_LOGGEDIN);
    if (this.#image && this.#image.name !== name) {
      ctx.log.info("second image refused", { peer: this.peer, attached: this.#image.name, name });
      return reply(Status.INVALID_REQUEST); // one connection, at most one image
    }
    let image: StoredImage | undefined;
    try {
      image = await ctx.store.get(name);
    } catch (error) {
      ctx.log.error("cannot open image", { image: name, reason: errorMessage(error) });
      return reply(Status.PERMANENT_ERROR);
    }
    if (!image) {
      ctx.log.info("attach to unknown image", { peer: this.peer, image: name });
      return reply(Status.NOT_FOUND);
    }
    if (image.users && !image.users.has(username)) {
      ctx.log.info("attach denied", { peer: this.peer, image: name, username });
      return reply(Status.PERMISSION_DENIED);
    }
    this.#image = image;
    ctx.log.debug("attached", { peer: this.peer, image: name, username });
    return encodeAttachReply(this.sessionId, sequence, {
      imageName: image.name,
      size: image.size,
      readOnly: image.readOnly,
    });
  }

  /**
   * A READ reply without a fresh buffer: the header, then the data straight from
   * a memory store's chunks, or read into a pooled buffer given back once written.
   */
  async #read(
    image: StoredImage,
    sequence: number,
    offset: number,
    length: number,
  ): Promise<Outgoing> {
    const packet = encodeReadReplyHeader(this.sessionId, sequence, length);
    if (image.views) return { packet, data: image.views(offset, length) };
    const data = this.#pool.take(length);
    try {
      await image.readInto(offset, data);
    } catch (error) {
      this.#pool.give(data);
      throw error;
    }
    return { packet, data: [data], dispose: () => this.#pool.give(data) };
  }

  /** Set by the proxy: the running proxies, for LIST_PROXIES. */
  listProxies: () => ProxyAddress[] = () => [];

  // ---- handlers ----

  /** Runs a handler concurrently; its reply (after the optional delay) goes to the writer. */
  #spawn(op: OpCode, sequence: number, cost: number, work: () => Promise<Outgoing>): void {
    this.#handlers++;
    this.#handle(op, sequence, cost, work).finally(() => {
      if (--this.#handlers === 0) this.#handlersIdle?.();
    });
  }

  async #handle(
    op: OpCode,
    sequence: number,
    cost: number,
    work: () => Promise<Outgoing>,
  ): Promise<void> {
    let reply: Outgoing;
    try {
      reply = await work();
    } catch (error) {
      // A store failure (disk full, I/O error) fails this request, not the connection.
      this.#ctx.log.error("request failed in the store", {
        peer: this.peer,
        op: opName(op),
        reason: errorMessage(error),
      });
      reply = { packet: encodeEmpty(this.sessionId, op, sequence, Status.PERMANENT_ERROR) };
    }
    const delay = this.#ctx.replyDelayMs;
    if (delay && delay.max > 0 && !this.#closed) {
      await this.#sleep(delay.min + Math.random() * (delay.max - delay.min));
    }
    if ((op === Op.READ || op === Op.WRITE) && this.#ctx.holding()) {
      await Promise.race([this.#ctx.whenReleased(), this.#closedPromise]);
    }
    this.#enqueue(reply, cost);
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const id = setTimeout(() => {
        this.#timers.delete(id);
        resolve();
      }, ms);
      this.#timers.set(id, resolve);
    });
  }

  #handlersFinished(): Promise<void> {
    if (this.#handlers === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.#handlersIdle = () => {
        this.#handlersIdle = null;
        resolve();
      };
    });
  }

  // ---- admission ----

  /** Waits for a request slot and `cost` bytes; a reader waiting for them counts as paused. */
  async #waitForRoom(cost: number): Promise<void> {
    this.#readerPaused = true;
    await this.#admission.acquire(1, cost); // rejects once the connection closes
    this.#resumeReading();
  }

  #release(cost: number): void {
    this.#admission.release(1, cost);
  }

  #resumeReading(): void {
    this.#readerPaused = false;
    this.#lastActivity = performance.now();
  }

  // ---- writer ----

  /** `cost` > 0: a reply to an admitted request; 0: a packet the proxy sends on its own. */
  #enqueue(reply: Uint8Array | Outgoing, cost: number): void {
    const item: Outgoing = reply instanceof Uint8Array ? { packet: reply } : reply;
    // A closed writer drops it at once, which gives back what it holds.
    this.#writer.send(new QueuedReply(item, cost, false, item.dispose, this.#settle));
  }

  /** A reply written or dropped: its buffers and its budget go back. */
  readonly #settle = (reply: QueuedReply): void => {
    reply.dispose?.();
    if (reply.cost > 0) this.#release(reply.cost);
    if (reply.push) this.#pushQueued = false;
  };

  // ---- idle timeout ----

  #armIdle(delayMs: number): void {
    this.#idleTimer = setTimeout(() => this.#checkIdle(), Math.max(1, delayMs));
  }

  #checkIdle(): void {
    if (this.#closed) return;
    const now = performance.now();
    const timeout = this.#ctx.idleTimeoutMs;
    // A paused reader cannot see the client's packets: that time is not idleness.
    if (this.#readerPaused || this.#ctx.stalled()) {
      this.#lastActivity = now;
      return this.#armIdle(timeout);
    }
    const idle = now - this.#lastActivity;
    if (idle >= timeout) {
      this.#ctx.log.info("closing idle connection", {
        proxy: this.#ctx.proxyName,
        peer: this.peer,
        idleMs: Math.round(idle),
      });
      this.close();
      return;
    }
    this.#armIdle(timeout - idle);
  }
}
