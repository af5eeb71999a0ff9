/**
 * The control API's HTTP/1.1 server: the shared accept loop (io/listener.ts)
 * over Deno.listen, the strict message layer (message.ts, message_reader.ts)
 * and the response writer, so the daemon decides what a connection may cost.
 * Deno.serve has no connection cap or timeouts and, out of descriptors, stops
 * accepting; here:
 *
 * - at most `maxConnections` connections; at the cap newcomers wait in the
 *   kernel's backlog until a connection ends or one idle between requests for
 *   `minIdleMs` can be closed for them; a request in progress or an answer
 *   being written is never cut to make room;
 * - a connection waits `idleTimeoutMs` for a request's first byte, then gets
 *   `requestTimeoutMs` to deliver its head and body (slow senders are cut);
 *   each write of the answer has the same bound;
 * - heads are at most `maxHeadBytes` (431), bodies `maxBodyBytes` (413);
 * - streamed answers (Server-Sent Events) go out chunk by chunk as they are
 *   produced, and stop when the client leaves;
 * - nothing here throws into the process: a broken client is one short log line.
 * @module
 */
import { type Clock, SYSTEM_CLOCK, type TimerHandle } from "../clock.ts";
import { errorMessage } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import { writeAll } from "../io/stream.ts";
import { Listener, type Slot } from "../io/listener.ts";
import { HttpError, type RequestHead } from "./message.ts";
import { ConnectionGone, MessageReader } from "./message_reader.ts";
import { REASONS, writeResponse } from "./response_writer.ts";

export interface HttpServerOptions {
  hostname: string;
  port: number;
  handler(request: Request): Response | Promise<Response>;
  /** Connections open at once. Default 64. */
  maxConnections?: number;
  /** Silence after which an idle connection may make room for a newcomer. Default 2 000 ms. */
  minIdleMs?: number;
  /** Wait for the first byte of a request (keep-alive idle). Default 30 000 ms. */
  idleTimeoutMs?: number;
  /** From a request's first byte to its last, and for each write of the answer. Default 10 000 ms. */
  requestTimeoutMs?: number;
  /** Request line and headers (and, separately, trailers). Default 16 KiB. */
  maxHeadBytes?: number;
  /** Request body. Default 1 MiB (the app sets its own, smaller limit). */
  maxBodyBytes?: number;
  /** Chunk-size lines, extensions and CRLFs of one chunked body. Default 64 KiB. */
  maxChunkFramingBytes?: number;
  log?: Logger;
  clock?: Clock;
}

/** How long close() lets requests in progress finish before cutting their connections. */
const SHUTDOWN_GRACE_MS = 5_000;
/** One chunk-size line with its extensions. */
const MAX_CHUNK_LINE_BYTES = 4096;

const encoder = new TextEncoder();

export function startHttpServer(options: HttpServerOptions): HttpServer {
  return new HttpServer(options);
}

interface Connection {
  readonly conn: Deno.Conn;
  readonly slot: Slot;
  /** idle: between requests; request: reading or answering one; stream: an open-ended answer. */
  phase: "idle" | "request" | "stream";
  timer: TimerHandle | undefined;
}

export class HttpServer {
  readonly addr: Deno.NetAddr;
  /** Resolves when the accept loop has ended (after close()). Never rejects. */
  readonly finished: Promise<void>;
  readonly #options: HttpServerOptions;
  readonly #listener: Listener<Deno.Conn>;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #connections = new Set<Connection>();
  #closing = false;
  #closed: Promise<void> | null = null;

  /** Listens at once (throws AddrInUse etc. like Deno.listen). */
  constructor(options: HttpServerOptions) {
    this.#options = options;
    this.#clock = options.clock ?? SYSTEM_CLOCK;
    this.#log = options.log ?? logger("http");
    const socket = Deno.listen({ hostname: options.hostname, port: options.port });
    this.addr = socket.addr as Deno.NetAddr;
    this.#listener = new Listener({
      sources: [socket],
      serve: (conn, slot) => this.#serve(conn, slot),
      maxConnections: options.maxConnections ?? 64,
      minIdleMs: options.minIdleMs ?? 2_000,
      refuse: (conn) => refuseBusy(conn),
      noun: "HTTP connection",
      log: this.#log,
      clock: this.#clock,
    });
    this.finished = this.#listener.finished;
  }

  /** Connections open now (for tests and metrics). */
  get connections(): number {
    return this.#listener.size;
  }

  /**
   * Stops accepting, closes idle connections and streams, lets requests in
   * progress finish (their connections close after the answer) and resolves.
   * Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= this.#shutdown();
    return this.#closed;
  }

  async #shutdown(): Promise<void> {
    this.#closing = true;
    await this.#listener.stopAccepting();
    for (const c of this.#connections) if (c.phase !== "request") this.#cut(c);
    let timer: TimerHandle | undefined;
    const grace = new Promise<void>((resolve) => {
      timer = this.#clock.setTimeout(resolve, SHUTDOWN_GRACE_MS);
    });
    await Promise.race([this.#listener.settled(), grace]);
    this.#clock.clearTimeout(timer);
    // A handler that never returns keeps its task, not the shutdown.
    this.#listener.cut();
  }

  #cut(c: Connection): void {
    this.#clock.clearTimeout(c.timer);
    this.#listener.cut((slot) => slot === c.slot);
  }

  #arm(c: Connection, ms: number): void {
    this.#clock.clearTimeout(c.timer);
    c.timer = this.#clock.setTimeout(() => this.#cut(c), ms);
  }

  async #serve(conn: Deno.Conn, slot: Slot): Promise<void> {
    const c: Connection = { conn, slot, phase: "idle", timer: undefined };
    this.#connections.add(c);
    const options = this.#options;
    const requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    const reader = new MessageReader(conn, {
      maxHeadBytes: options.maxHeadBytes ?? 16 * 1024,
      maxBodyBytes: options.maxBodyBytes ?? 1024 * 1024,
      maxChunkFramingBytes: options.maxChunkFramingBytes ?? 64 * 1024,
      maxChunkLineBytes: MAX_CHUNK_LINE_BYTES,
    });
    // Each write of an answer gets the request timeout; a stalled reader is cut.
    // Between writes no timer runs: a quiet stream (events) is not a stalled one.
    const timedOut = {
      write: async (data: Uint8Array) => {
        this.#arm(c, requestTimeoutMs);
        const n = await conn.write(data);
        this.#clock.clearTimeout(c.timer);
        slot.touch();
        return n;
      },
    };
    let head: RequestHead | null = null;
    try {
      for (;;) {
        if (this.#closing) return;
        c.phase = "idle";
        slot.setBusy(false);
        this.#arm(c, options.idleTimeoutMs ?? 30_000);
        if (!await reader.waitForData()) return; // clean close between requests
        if (this.#closing) return;
        c.phase = "request";
        slot.setBusy(true);
        this.#arm(c, requestTimeoutMs);
        head = await reader.readHead();
        const body = await this.#readBody(conn, reader, head);
        this.#clock.clearTimeout(c.timer);
        const response = await this.#answer(head, body);
        // After the handler: a request may have started the shutdown itself.
        const gone = new AbortController();
        const { keepAlive } = await writeResponse(timedOut, response, {
          method: head.method,
          minor: head.minor,
          keepAlive: head.keepAlive && !this.#closing,
          gone: gone.signal,
          onStream: () => this.#watchStream(c, reader, gone),
        });
        c.phase = "request";
        this.#clock.clearTimeout(c.timer);
        slot.touch();
        if (!keepAlive || this.#closing) return;
        head = null;
      }
    } catch (error) {
      await this.#failed(c, head, error);
    } finally {
      this.#clock.clearTimeout(c.timer);
      this.#connections.delete(c);
    }
  }

  /**
   * An answer turned out to be a stream: watch the connection, and when the
   * client closes it, abort the stream so its producer stops. Bytes of a
   * pipelined next request stay buffered in the reader.
   */
  #watchStream(c: Connection, reader: MessageReader, gone: AbortController): void {
    c.phase = "stream";
    if (this.#closing) this.#cut(c);
    reader.waitForData().then((data) => {
      if (!data && c.phase === "stream") {
        gone.abort();
        this.#cut(c);
      }
    }, () => gone.abort());
  }

  async #failed(c: Connection, head: RequestHead | null, error: unknown): Promise<void> {
    if (error instanceof HttpError) {
      this.#log.info("HTTP request refused", { status: error.status, reason: error.message });
      this.#arm(c, this.#options.requestTimeoutMs ?? 10_000);
      await writeAll(c.conn, encodeError(error.status, error.message))
        .then(() => lingerClose(c.conn))
        .catch(() => {});
    } else if (
      c.slot.cut || error instanceof ConnectionGone || isDisconnect(error)
    ) {
      // Cut by us (timeout, eviction, shutdown) or the client left: one short line if mid-request.
      if (c.phase === "request") {
        this.#log.info("HTTP client left before its request was answered", {
          method: head?.method,
          path: head?.target.split("?")[0].slice(0, 200),
        });
      }
    } else {
      this.#log.warn("HTTP connection failed", { error: errorMessage(error) });
    }
  }

  async #readBody(
    conn: Deno.Conn,
    reader: MessageReader,
    head: RequestHead,
  ): Promise<Uint8Array<ArrayBuffer> | null> {
    const maxBody = this.#options.maxBodyBytes ?? 1024 * 1024;
    if (head.contentLength !== null && head.contentLength > maxBody) {
      throw new HttpError(413, `request body exceeds ${maxBody} bytes`);
    }
    const expectsBody = head.chunked || (head.contentLength ?? 0) > 0;
    if (head.expectContinue && expectsBody) {
      await writeAll(conn, encoder.encode("HTTP/1.1 100 Continue\r\n\r\n"));
    }
    if (head.chunked) return await reader.readChunked();
    if (head.contentLength === null) return null;
    return await reader.readExactly(head.contentLength);
  }

  async #answer(head: RequestHead, body: Uint8Array<ArrayBuffer> | null): Promise<Response> {
    let request: Request;
    try {
      // The asterisk form (OPTIONS *) is the server itself: "/" to the app.
      const target = head.target === "*" ? "/" : head.target;
      request = new Request(`http://${head.host ?? "localhost"}${target}`, {
        method: head.method,
        headers: head.headers,
        body: head.method === "GET" || head.method === "HEAD" ? undefined : body,
      });
    } catch (error) {
      return Response.json({ error: `malformed request: ${errorMessage(error)}` }, { status: 400 });
    }
    try {
      return await this.#options.handler(request);
    } catch (error) {
      this.#log.error("HTTP handler failed", { path: head.target, error: errorMessage(error) });
      return Response.json({ error: "internal error" }, { status: 500 });
    }
  }
}

/** A short JSON error answer that closes the connection. */
function encodeError(status: number, message: string): Uint8Array {
  const body = JSON.stringify({ error: message });
  return encoder.encode(
    `HTTP/1.1 ${status} ${REASONS[status] ?? "Status"}\r\n` +
      `date: ${new Date().toUTCString()}\r\n` +
      "content-type: application/json\r\n" +
      `content-length: ${encoder.encode(body).length}\r\n` +
      "connection: close\r\n\r\n" + body,
  );
}

/** A newcomer that found every slot busy: one small write to a fresh socket, then close. */
async function refuseBusy(conn: Deno.Conn): Promise<void> {
  await writeAll(conn, encodeError(503, "too many connections; retry shortly"));
}

/**
 * After refusing a request whose rest we did not read: stop writing, then read
 * and drop what the client still sends (bounded), so closing does not reset the
 * connection and destroy the answer before the client reads it.
 */
async function lingerClose(conn: Deno.Conn): Promise<void> {
  await conn.closeWrite();
  const sink = new Uint8Array(16 * 1024);
  for (let total = 0; total < 256 * 1024;) {
    const n = await conn.read(sink);
    if (n === null) return;
    total += n;
  }
}

function isDisconnect(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.BrokenPipe ||
    error instanceof Deno.errors.Interrupted ||
    error instanceof Deno.errors.NotConnected;
}
