/**
 * Writes a fetch Response as an HTTP/1.1 answer. A body that is complete in
 * hand (what Hono's c.json and c.html give) goes out with a Content-Length in
 * one write; a body that is still being produced (a stream, Server-Sent
 * Events) goes out chunk by chunk with chunked encoding, each write awaited,
 * so a slow reader slows the producer instead of filling memory. Every answer
 * has a Date; HEAD gets the GET's headers without a body; 1xx, 204 and 304
 * have neither body nor Content-Length.
 * @module
 */
import { writeAll } from "../io/stream.ts";

export interface WriteTarget {
  write(data: Uint8Array): Promise<number>;
}

export interface ResponseContext {
  /** The request's method ("HEAD": headers only). */
  method: string;
  /** HTTP/1.0 clients get no chunked encoding: an open-ended body ends with the connection. */
  minor: 0 | 1;
  /** Whether the connection stays open after this answer (may be turned off here). */
  keepAlive: boolean;
  /** Aborted when the client has gone: the body stream is cancelled, nothing more is written. */
  gone?: AbortSignal;
  /** Called when the body turns out to be open-ended and is streamed. */
  onStream?: () => void;
  /** Wall time for the Date header (tests pass a fixed one). */
  now?: () => Date;
}

/** Reason phrases for the statuses the daemon answers with. */
export const REASONS: Record<number, string> = {
  100: "Continue",
  200: "OK",
  201: "Created",
  202: "Accepted",
  204: "No Content",
  304: "Not Modified",
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
  505: "HTTP Version Not Supported",
};

/** A body up to this size that is already complete is sent with a Content-Length. */
const COLLECT_LIMIT = 64 * 1024;
/** Headers the server sets itself (framing, connection, date). */
const OWN_HEADERS = new Set([
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "date",
]);
const NOT_READY = Symbol("not ready");
const encoder = new TextEncoder();

/** Resolves with the result of `read` if it is settled already, else NOT_READY. */
function ifReady<T>(read: Promise<T>): Promise<T | typeof NOT_READY> {
  return Promise.race([read, Promise.resolve(NOT_READY)]);
}

/** What writeResponse did, for the caller's connection handling. */
export interface Written {
  /** False when the connection must close now (an HTTP/1.0 open-ended body, a client gone). */
  keepAlive: boolean;
}

export async function writeResponse(
  out: WriteTarget,
  response: Response,
  context: ResponseContext,
): Promise<Written> {
  const status = response.status;
  const lines = [`HTTP/1.1 ${status} ${REASONS[status] ?? "Status"}`];
  lines.push(`date: ${(context.now?.() ?? new Date()).toUTCString()}`);
  for (const [name, value] of response.headers) {
    if (!OWN_HEADERS.has(name)) lines.push(`${name}: ${value.replace(/[\r\n]/g, " ")}`);
  }
  let keepAlive = context.keepAlive;
  const head = (framing: string[]) => {
    lines.push(...framing, `connection: ${keepAlive ? "keep-alive" : "close"}`);
    return encoder.encode(lines.join("\r\n") + "\r\n\r\n");
  };

  const body = response.body;
  if (status < 200 || status === 204 || status === 304) {
    await body?.cancel();
    await writeAll(out, head([]));
    return { keepAlive };
  }
  if (body === null) {
    // HEAD with no body from the app: the GET's length is unknown, so none is claimed.
    await writeAll(out, head(context.method === "HEAD" ? [] : ["content-length: 0"]));
    return { keepAlive };
  }

  const reader = body.getReader();
  const cancel = () => reader.cancel().catch(() => {});
  context.gone?.addEventListener("abort", cancel, { once: true });
  try {
    // Take what is already there; a body that ends within it has a known length.
    const collected: Uint8Array[] = [];
    let size = 0;
    let pending = reader.read();
    let complete = false;
    // The first chunk is awaited (even a fixed body takes a tick); after it, a
    // body whose end is already there is complete, one that must wait is a stream.
    // A stream's head goes out with its first chunk, so a producer sends one at once.
    for (let first = true; size < COLLECT_LIMIT; first = false) {
      const result = first ? await pending : await ifReady(pending);
      if (result === NOT_READY) break;
      if (result.done) {
        complete = true;
        break;
      }
      // An empty chunk would read as the chunked terminator: it is dropped.
      if (result.value.length > 0) collected.push(result.value);
      size += result.value.length;
      pending = reader.read();
    }
    if (complete) {
      const headBytes = head([`content-length: ${size}`]);
      if (context.method === "HEAD") return await sendAll(out, [headBytes], keepAlive);
      return await sendAll(out, [headBytes, ...collected], keepAlive);
    }
    // Still being produced: chunked to HTTP/1.1, close-delimited to HTTP/1.0.
    context.onStream?.();
    const chunked = context.minor === 1;
    if (!chunked) keepAlive = false;
    const headBytes = head(chunked ? ["transfer-encoding: chunked"] : []);
    if (context.method === "HEAD") {
      await cancel();
      return await sendAll(out, [headBytes], keepAlive);
    }
    await writeAll(out, concat([headBytes, ...collected.map((c) => frame(c, chunked))]));
    for (;;) {
      const result = await pending;
      if (context.gone?.aborted) return { keepAlive: false };
      if (result.done) break;
      if (result.value.length > 0) await writeAll(out, frame(result.value, chunked));
      pending = reader.read();
    }
    if (chunked) await writeAll(out, encoder.encode("0\r\n\r\n"));
    return { keepAlive };
  } catch (error) {
    await cancel();
    throw error;
  } finally {
    context.gone?.removeEventListener("abort", cancel);
  }
}

function frame(data: Uint8Array, chunked: boolean): Uint8Array {
  if (!chunked) return data;
  return concat([encoder.encode(`${data.length.toString(16)}\r\n`), data, encoder.encode("\r\n")]);
}

async function sendAll(out: WriteTarget, parts: Uint8Array[], keepAlive: boolean) {
  await writeAll(out, concat(parts));
  return { keepAlive };
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
