/**
 * The control API's HTTP/1.1 server: our own accept loop over Deno.listen, so
 * the daemon decides what a connection may cost. Deno.serve has no connection
 * cap or timeouts and, out of descriptors, rejects inside its accept loop and
 * takes the process down; here:
 *
 * - at most `maxConnections` connections; at the cap a new one replaces the
 *   longest-idle connection (no request in progress), else waits in the kernel's
 *   backlog (which costs the daemon no descriptor);
 * - a connection waits `idleTimeoutMs` for a request's first byte, then gets
 *   `requestTimeoutMs` to deliver its head and body (slow senders are cut);
 *   writing the answer has the same bound;
 * - heads are at most `maxHeadBytes` (431), bodies `maxBodyBytes` (413);
 * - accept errors (EMFILE, ENFILE) are logged once per episode: the server
 *   closes its longest-idle connection to free a descriptor, backs off and retries;
 * - nothing here throws into the process: a broken client is one short log line.
 *
 * Requests are read whole (they are small JSON bodies) and answered with a
 * Content-Length; keep-alive and pipelining work, `Expect: 100-continue` too.
 * @module
 */
import { errorMessage } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import { writeAll } from "../io/stream.ts";

export interface HttpServerOptions {
  hostname: string;
  port: number;
  handler(request: Request): Response | Promise<Response>;
  /** Connections open at once. Default 64. */
  maxConnections?: number;
  /** Wait for the first byte of a request (keep-alive idle). Default 30 000 ms. */
  idleTimeoutMs?: number;
  /** From a request's first byte to its last, and for writing the answer. Default 10 000 ms. */
  requestTimeoutMs?: number;
  /** Request line and headers. Default 16 KiB. */
  maxHeadBytes?: number;
  /** Request body. Default 1 MiB (the app sets its own, smaller limit). */
  maxBodyBytes?: number;
  log?: Logger;
}

type Phase = "idle" | "reading" | "busy";

interface Connection {
  readonly id: number;
  readonly conn: Deno.Conn;
  phase: Phase;
  /** When the connection last became idle (ms, performance.now()). */
  idleSince: number;
  timer: ReturnType<typeof setTimeout> | undefined;
  closed: boolean;
  task?: Promise<void>;
}

/** A request we refuse before the app sees it; `close` = the stream cannot be trusted after it. */
class BadRequest extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The client went away or was cut (timeout, eviction, shutdown): nothing to answer. */
class Gone extends Error {}

/** How long close() lets requests in progress finish before cutting their connections. */
const SHUTDOWN_GRACE_MS = 5_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const REASONS: Record<number, string> = {
  100: "Continue",
  200: "OK",
  201: "Created",
  202: "Accepted",
  204: "No Content",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  409: "Conflict",
  413: "Content Too Large",
  415: "Unsupported Media Type",
  421: "Misdirected Request",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
};

export function startHttpServer(options: HttpServerOptions): HttpServer {
  return new HttpServer(options);
}

export class HttpServer {
  readonly addr: Deno.NetAddr;
  /** Resolves when the accept loop has ended (after close()). Never rejects. */
  readonly finished: Promise<void>;
  readonly #listener: Deno.Listener;
  readonly #handler: HttpServerOptions["handler"];
  #maxConnections: number;
  readonly #idleTimeoutMs: number;
  readonly #requestTimeoutMs: number;
  readonly #maxHeadBytes: number;
  readonly #maxBodyBytes: number;
  readonly #log: Logger;
  readonly #connections = new Map<number, Connection>();
  #nextId = 1;
  #closing = false;
  #closed: Promise<void> | null = null;
  #slotFreed: (() => void) | null = null;
  /** Accept failures not yet reported (the first is logged, the rest summed per minute). */
  #acceptFailures = 0;
  #acceptFailuresLoggedAt: number | null = null;

  /** Listens at once (throws AddrInUse etc. like Deno.listen). */
  constructor(options: HttpServerOptions) {
    this.#handler = options.handler;
    this.#maxConnections = Math.max(1, options.maxConnections ?? 64);
    this.#idleTimeoutMs = options.idleTimeoutMs ?? 30_000;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.#maxHeadBytes = options.maxHeadBytes ?? 16 * 1024;
    this.#maxBodyBytes = options.maxBodyBytes ?? 1024 * 1024;
    this.#log = options.log ?? logger("http");
    this.#listener = Deno.listen({ hostname: options.hostname, port: options.port });
    this.addr = this.#listener.addr as Deno.NetAddr;
    this.finished = this.#acceptLoop();
  }

  /** Connections open now (for tests and metrics). */
  get connections(): number {
    return this.#connections.size;
  }

  /**
   * Stops accepting, closes idle connections, lets requests in progress finish
   * (their connections close after the answer) and resolves. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= this.#shutdown();
    return this.#closed;
  }

  async #shutdown(): Promise<void> {
    this.#closing = true;
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    this.#slotFreed?.();
    for (const c of this.#connections.values()) if (c.phase !== "busy") this.#cut(c);
    await this.finished;
    // Requests in progress get a bounded grace period, then their connections are cut.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const grace = new Promise<void>((resolve) => timer = setTimeout(resolve, SHUTDOWN_GRACE_MS));
    const tasks = Promise.all([...this.#connections.values()].map((c) => c.task));
    await Promise.race([tasks, grace]);
    clearTimeout(timer);
    // A handler that never returns keeps its task, not the shutdown.
    for (const c of this.#connections.values()) this.#cut(c);
  }

  async #acceptLoop(): Promise<void> {
    let backoffMs = 50;
    while (!this.#closing) {
      if (this.#connections.size >= this.#maxConnections && this.#idlest() === null) {
        // Every connection is answering a request: leave new ones in the backlog.
        await new Promise<void>((resolve) => this.#slotFreed = resolve);
        this.#slotFreed = null;
        continue;
      }
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (error) {
        if (this.#closing || error instanceof Deno.errors.BadResource) break;
        this.#acceptFailed(error);
        // Out of descriptors: give one back, then retry after a pause.
        this.#evictIdlest();
        await new Promise((resolve) => setTimeout(resolve, backoffMs));
        backoffMs = Math.min(backoffMs * 2, 1000);
        continue;
      }
      backoffMs = 50;
      if (this.#closing) {
        closeQuietly(conn);
        break;
      }
      // Over the cap: the newcomer replaces the connection idle the longest.
      if (this.#connections.size >= this.#maxConnections) this.#evictIdlest();
      this.#start(conn);
    }
  }

  /**
   * Logs the first accept failure, then at most one line a minute with how
   * many followed; out of descriptors, the cap drops to what the process has
   * room for, so later connections replace idle ones instead of failing.
   */
  #acceptFailed(error: unknown): void {
    this.#acceptFailures++;
    const now = performance.now();
    const lowered = this.#connections.size > 1 && this.#connections.size <= this.#maxConnections;
    if (lowered) this.#maxConnections = this.#connections.size - 1;
    if (this.#acceptFailuresLoggedAt !== null && now - this.#acceptFailuresLoggedAt < 60_000) {
      return;
    }
    this.#log.error("accepting an HTTP connection failed; closing idle ones and retrying", {
      error: errorMessage(error),
      failures: this.#acceptFailures,
      connections: this.#connections.size,
      maxConnections: this.#maxConnections,
    });
    this.#acceptFailures = 0;
    this.#acceptFailuresLoggedAt = now;
  }

  /** The connection idle the longest, else the slowest sender of a request; never one being answered. */
  #idlest(): Connection | null {
    let victim: Connection | null = null;
    for (const c of this.#connections.values()) {
      if (c.phase === "idle" && (!victim || c.idleSince < victim.idleSince)) victim = c;
    }
    if (victim) return victim;
    for (const c of this.#connections.values()) {
      if (c.phase === "reading" && (!victim || c.idleSince < victim.idleSince)) victim = c;
    }
    return victim;
  }

  #evictIdlest(): boolean {
    const victim = this.#idlest();
    if (!victim) return false;
    this.#log.debug("closing an idle HTTP connection to make room", { connection: victim.id });
    this.#cut(victim);
    this.#connections.delete(victim.id);
    return true;
  }

  #start(conn: Deno.Conn): void {
    const c: Connection = {
      id: this.#nextId++,
      conn,
      phase: "idle",
      idleSince: performance.now(),
      timer: undefined,
      closed: false,
    };
    this.#connections.set(c.id, c);
    c.task = this.#serve(c).finally(() => {
      clearTimeout(c.timer);
      if (!c.closed) this.#cut(c);
      this.#connections.delete(c.id);
      this.#slotFreed?.();
    });
  }

  #cut(c: Connection): void {
    clearTimeout(c.timer);
    if (c.closed) return;
    c.closed = true;
    closeQuietly(c.conn);
  }

  #arm(c: Connection, ms: number): void {
    clearTimeout(c.timer);
    c.timer = setTimeout(() => this.#cut(c), ms);
  }

  async #serve(c: Connection): Promise<void> {
    const reader = new ConnReader(c.conn);
    let request: ParsedHead | null = null;
    try {
      for (;;) {
        if (this.#closing) return;
        c.phase = "idle";
        c.idleSince = performance.now();
        this.#arm(c, this.#idleTimeoutMs);
        if (!await reader.waitForData()) return; // clean close between requests
        if (this.#closing) return;
        c.phase = "reading";
        this.#arm(c, this.#requestTimeoutMs);
        request = parseHead(await reader.readHead(this.#maxHeadBytes));
        const body = await this.#readBody(c, reader, request);
        c.phase = "busy";
        clearTimeout(c.timer);
        const response = await this.#answer(request, body);
        // After the handler: a request may have started the shutdown itself.
        const keepAlive = request.keepAlive && !this.#closing;
        this.#arm(c, this.#requestTimeoutMs);
        await writeResponse(c.conn, response, request.method === "HEAD", keepAlive);
        if (!keepAlive) return;
        request = null;
      }
    } catch (error) {
      if (error instanceof BadRequest) {
        this.#log.info("HTTP request refused", { status: error.status, reason: error.message });
        this.#arm(c, this.#requestTimeoutMs);
        await writeResponse(c.conn, jsonError(error.status, error.message), false, false)
          .then(() => lingerClose(c.conn))
          .catch(() => {});
      } else if (c.closed || error instanceof Gone || isDisconnect(error)) {
        // Cut by us (timeout, eviction, shutdown) or the client left: one short line if mid-request.
        if (request || c.phase === "reading") {
          this.#log.info("HTTP client left before its request was answered", {
            method: request?.method,
            path: request?.path,
          });
        }
      } else {
        this.#log.warn("HTTP connection failed", { error: errorMessage(error) });
      }
    }
  }

  async #readBody(
    c: Connection,
    reader: ConnReader,
    head: ParsedHead,
  ): Promise<Uint8Array<ArrayBuffer> | null> {
    if (head.chunked) {
      if (head.expectContinue) {
        await writeAll(c.conn, encoder.encode("HTTP/1.1 100 Continue\r\n\r\n"));
      }
      return await reader.readChunked(this.#maxBodyBytes);
    }
    if (head.contentLength === null) return null;
    if (head.contentLength > this.#maxBodyBytes) {
      throw new BadRequest(413, `request body exceeds ${this.#maxBodyBytes} bytes`);
    }
    if (head.expectContinue && head.contentLength > 0) {
      await writeAll(c.conn, encoder.encode("HTTP/1.1 100 Continue\r\n\r\n"));
    }
    return await reader.readExactly(head.contentLength);
  }

  async #answer(head: ParsedHead, body: Uint8Array<ArrayBuffer> | null): Promise<Response> {
    let request: Request;
    try {
      request = new Request(`http://${head.authority}${head.target}`, {
        method: head.method,
        headers: head.headers,
        body: head.method === "GET" || head.method === "HEAD" ? undefined : body,
      });
    } catch (error) {
      return jsonError(400, `malformed request: ${errorMessage(error)}`);
    }
    try {
      return await this.#handler(request);
    } catch (error) {
      this.#log.error("HTTP handler failed", { path: head.path, error: errorMessage(error) });
      return jsonError(500, "internal error");
    }
  }
}

interface ParsedHead {
  method: string;
  target: string;
  path: string;
  authority: string;
  headers: [string, string][];
  contentLength: number | null;
  chunked: boolean;
  expectContinue: boolean;
  keepAlive: boolean;
}

/** Parses a request head (without its final CRLF CRLF); BadRequest on anything doubtful. */
export function parseHead(bytes: Uint8Array): ParsedHead {
  const text = decoder.decode(bytes);
  const lines = text.split("\r\n");
  const match = /^([A-Z]{1,16}) (\/[^\s]*|\*) HTTP\/1\.([01])$/.exec(lines[0]);
  if (!match) throw new BadRequest(400, "malformed request line");
  const [, method, target, minor] = match;
  const headers: [string, string][] = [];
  const single = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    const name = line.slice(0, Math.max(colon, 0));
    if (colon <= 0 || !TOKEN.test(name)) throw new BadRequest(400, "malformed header line");
    const value = line.slice(colon + 1).trim();
    // deno-lint-ignore no-control-regex
    if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) throw new BadRequest(400, "bad header value");
    const lower = name.toLowerCase();
    if (["host", "content-length", "transfer-encoding"].includes(lower) && single.has(lower)) {
      throw new BadRequest(400, `repeated ${lower} header`);
    }
    single.set(lower, value);
    headers.push([name, value]);
  }
  const transferEncoding = single.get("transfer-encoding");
  const lengthText = single.get("content-length");
  if (transferEncoding !== undefined && lengthText !== undefined) {
    throw new BadRequest(400, "both Content-Length and Transfer-Encoding");
  }
  if (transferEncoding !== undefined && transferEncoding.toLowerCase() !== "chunked") {
    throw new BadRequest(501, "only chunked transfer coding is supported");
  }
  if (lengthText !== undefined && !/^\d{1,15}$/.test(lengthText)) {
    throw new BadRequest(400, "bad Content-Length");
  }
  const connection = (single.get("connection") ?? "").toLowerCase();
  const keepAlive = minor === "1"
    ? !/\bclose\b/.test(connection)
    : /\bkeep-alive\b/.test(connection);
  const host = single.get("host");
  if (minor === "1" && host === undefined) {
    throw new BadRequest(400, "HTTP/1.1 request without Host");
  }
  return {
    method,
    target: target === "*" ? "/" : target,
    path: target.split("?")[0].slice(0, 200),
    // Absent Host (HTTP/1.0): any valid authority; the app's guard only checks headers.
    authority: host && /^[A-Za-z0-9.:[\]_-]+$/.test(host) ? host : "localhost",
    headers,
    contentLength: lengthText === undefined ? null : Number(lengthText),
    chunked: transferEncoding !== undefined,
    expectContinue: (single.get("expect") ?? "").toLowerCase() === "100-continue",
    keepAlive,
  };
}

/** Buffered reads from one connection. */
class ConnReader {
  #buffer = new Uint8Array(4096);
  #start = 0;
  #end = 0;
  constructor(readonly conn: Deno.Conn) {}

  async #fill(): Promise<void> {
    if (this.#start > 0 && this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#end === this.#buffer.length) {
      const grown = new Uint8Array(this.#buffer.length * 2);
      grown.set(this.#buffer.subarray(this.#start, this.#end));
      this.#end -= this.#start;
      this.#start = 0;
      this.#buffer = grown;
    }
    const n = await this.conn.read(this.#buffer.subarray(this.#end));
    if (n === null) throw new Gone("connection closed");
    this.#end += n;
  }

  /** False on a clean EOF before any byte. */
  async waitForData(): Promise<boolean> {
    if (this.#end > this.#start) return true;
    try {
      await this.#fill();
      return true;
    } catch (error) {
      if (error instanceof Gone) return false;
      throw error;
    }
  }

  async readHead(max: number): Promise<Uint8Array> {
    let searched = this.#start;
    for (;;) {
      const view = this.#buffer.subarray(0, this.#end);
      for (let i = Math.max(searched, this.#start); i + 3 < view.length; i++) {
        if (view[i] === 13 && view[i + 1] === 10 && view[i + 2] === 13 && view[i + 3] === 10) {
          if (i - this.#start > max) throw new BadRequest(431, "request head too large");
          const head = this.#buffer.slice(this.#start, i);
          this.#start = i + 4;
          return head;
        }
      }
      searched = Math.max(this.#start, this.#end - 3);
      if (this.#end - this.#start >= max) throw new BadRequest(431, "request head too large");
      await this.#fill();
    }
  }

  async readExactly(length: number): Promise<Uint8Array<ArrayBuffer>> {
    const out = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      if (this.#start === this.#end) await this.#fill();
      const n = Math.min(length - filled, this.#end - this.#start);
      out.set(this.#buffer.subarray(this.#start, this.#start + n), filled);
      this.#start += n;
      filled += n;
    }
    return out;
  }

  async #readLine(max: number): Promise<string> {
    for (;;) {
      const view = this.#buffer.subarray(this.#start, this.#end);
      const at = view.findIndex((b, i) => b === 13 && view[i + 1] === 10);
      if (at >= 0) {
        const line = decoder.decode(view.subarray(0, at));
        this.#start += at + 2;
        return line;
      }
      if (view.length > max) throw new BadRequest(400, "malformed chunked body");
      await this.#fill();
    }
  }

  async readChunked(maxBody: number): Promise<Uint8Array<ArrayBuffer>> {
    const parts: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      const sizeLine = await this.#readLine(1024);
      const match = /^([0-9a-fA-F]{1,8})(?:;.*)?$/.exec(sizeLine);
      if (!match) throw new BadRequest(400, "malformed chunked body");
      const size = parseInt(match[1], 16);
      if (size === 0) break;
      total += size;
      if (total > maxBody) throw new BadRequest(413, `request body exceeds ${maxBody} bytes`);
      parts.push(await this.readExactly(size));
      if (await this.#readLine(2) !== "") throw new BadRequest(400, "malformed chunked body");
    }
    // Trailers (ignored) up to the empty line.
    for (let i = 0; (await this.#readLine(1024)) !== ""; i++) {
      if (i > 32) throw new BadRequest(400, "too many trailers");
    }
    const body = new Uint8Array(total);
    let at = 0;
    for (const part of parts) {
      body.set(part, at);
      at += part.length;
    }
    return body;
  }
}

function jsonError(status: number, message: string): Response {
  return Response.json({ error: message }, { status });
}

/** Writes status line, headers and body as one buffer, with a Content-Length. */
async function writeResponse(
  conn: Deno.Conn,
  response: Response,
  headOnly: boolean,
  keepAlive: boolean,
): Promise<void> {
  const body = new Uint8Array(await response.arrayBuffer());
  const lines = [`HTTP/1.1 ${response.status} ${REASONS[response.status] ?? "Status"}`];
  for (const [name, value] of response.headers) {
    if (name === "content-length" || name === "transfer-encoding" || name === "connection") {
      continue;
    }
    lines.push(`${name}: ${value.replace(/[\r\n]/g, " ")}`);
  }
  lines.push(`content-length: ${body.length}`);
  lines.push(`connection: ${keepAlive ? "keep-alive" : "close"}`);
  const head = encoder.encode(lines.join("\r\n") + "\r\n\r\n");
  const noBody = headOnly || response.status === 204 || response.status === 304;
  const out = new Uint8Array(head.length + (noBody ? 0 : body.length));
  out.set(head);
  if (!noBody) out.set(body, head.length);
  await writeAll(conn, out);
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

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
