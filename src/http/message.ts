/**
 * HTTP/1.1 request heads and chunk lines, parsed strictly after RFC 9112: a
 * parser at a security boundary answers anything doubtful with a 4xx instead
 * of guessing, because two parsers that guess differently (ours and a proxy's
 * in front) are how requests are smuggled.
 *
 * - Whitespace is only SP and HTAB (OWS); no `.trim()`, which would also take
 *   VT, FF, NBSP or U+3000 around Content-Length and Transfer-Encoding.
 * - Lines end in CRLF: a bare LF or CR, obs-fold and whitespace before a colon
 *   are refused; field values carry no control characters but HTAB.
 * - Framing: Content-Length is one run of digits, at most once; Transfer-
 *   Encoding is `chunked` alone; both together are refused. HTTP/1.0 with
 *   Transfer-Encoding is read as chunked and the connection closes afterwards
 *   (§6.1). The asterisk form is for OPTIONS only.
 * - The absolute form (`GET http://host:port/path`) is accepted, as §3.2.2
 *   requires of a server: its authority replaces the Host field (the guard
 *   then checks the host the request really names), its path is the target.
 *   Only `http:` (nothing else is served here), and no userinfo.
 *
 * Every function here works on bytes already received and throws only
 * HttpError; the reader (message_reader.ts) bounds how many bytes it gives.
 * @module
 */

/** A request refused before the app sees it; `status` is the answer's status. */
export class HttpError extends Error {
  readonly code = "HTTP_REQUEST";
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = "HttpError";
  }
}

export interface RequestHead {
  method: string;
  /** The origin-form target (path and query; an absolute form's path); "*" only for OPTIONS. */
  target: string;
  /** HTTP/1.x minor version: 0 or 1. */
  minor: 0 | 1;
  /** Header fields in order, names as sent, values without OWS around them. */
  headers: [string, string][];
  /** The Host header, when it is a plain authority. */
  host: string | null;
  contentLength: number | null;
  chunked: boolean;
  /** `Expect: 100-continue` from an HTTP/1.1 client. */
  expectContinue: boolean;
  /** False when the connection must close after the answer. */
  keepAlive: boolean;
}

export const CR = 0x0d;
export const LF = 0x0a;
const SP = 0x20;
const HTAB = 0x09;

const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** A field value: visible ASCII, obs-text, SP and HTAB inside; no other controls. */
const FIELD_VALUE = /^[\x21-\x7e\x80-\xff]([\x20\x21-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?$/;
/** An origin-form target: "/" then visible ASCII (no whitespace, controls or non-ASCII). */
const ORIGIN_FORM = /^\/[\x21-\x7e]*$/;
/** An absolute-form target of scheme http: the authority, then an optional origin-form part. */
const ABSOLUTE_FORM = /^http:\/\/([A-Za-z0-9.:[\]_-]{1,255})((?:[/?][\x21-\x7e]*)?)$/i;
const METHOD = /^[A-Z]{1,16}$/;
const AUTHORITY = /^[A-Za-z0-9.:[\]_-]{1,255}$/;
/** Content-Length digits; 15 keep the number exact in a double. */
const DIGITS = /^[0-9]{1,15}$/;
/** The chunk-size: hex digits, at most 8 (4 GiB; bodies are far smaller). */
const CHUNK_SIZE = /^[0-9A-Fa-f]{1,8}$/;
/** A chunk extension after the size: `;name[=value]` with BWS, visible characters only. */
const CHUNK_EXT =
  /^([ \t]*;[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+([ \t]*=[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+|"([\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*$/;
/** Headers that may appear once only; a second copy is an ambiguity to refuse. */
const SINGLE = new Set(["host", "content-length", "transfer-encoding"]);

/** Bytes as a string of the same code units (ISO-8859-1), so every byte survives. */
export function latin1(bytes: Uint8Array): string {
  let text = "";
  for (let at = 0; at < bytes.length; at += 8192) {
    text += String.fromCharCode(...bytes.subarray(at, at + 8192));
  }
  return text;
}

/** Removes leading and trailing SP and HTAB only (RFC 9110 OWS). */
export function trimOws(text: string): string {
  let start = 0;
  let end = text.length;
  while (start < end && isOws(text.charCodeAt(start))) start++;
  while (end > start && isOws(text.charCodeAt(end - 1))) end--;
  return text.slice(start, end);
}

function isOws(code: number): boolean {
  return code === SP || code === HTAB;
}

/** Splits a head or trailer section into its lines; a CR or LF not in a CRLF is refused. */
function splitLines(text: string): string[] {
  const lines = text.split("\r\n");
  for (const line of lines) {
    if (line.includes("\r") || line.includes("\n")) throw new HttpError(400, "bare CR or LF");
  }
  return lines;
}

/**
 * Parses header field lines into [name, value] pairs (also trailers):
 * `name ":" OWS value OWS`, no obs-fold, no whitespace before the colon.
 */
export function parseFieldLines(lines: string[]): [string, string][] {
  const fields: [string, string][] = [];
  for (const line of lines) {
    if (line.length > 0 && isOws(line.charCodeAt(0))) {
      throw new HttpError(400, "obsolete line folding");
    }
    const colon = line.indexOf(":");
    const name = colon > 0 ? line.slice(0, colon) : "";
    if (!TOKEN.test(name)) throw new HttpError(400, "malformed header line");
    const value = trimOws(line.slice(colon + 1));
    if (value !== "" && !FIELD_VALUE.test(value)) throw new HttpError(400, "bad header value");
    fields.push([name, value]);
  }
  return fields;
}

/** Parses a request head (the bytes before its final CRLF CRLF). */
export function parseRequestHead(bytes: Uint8Array): RequestHead {
  const lines = splitLines(latin1(bytes));
  const parts = lines[0].split(" ");
  if (parts.length !== 3) throw new HttpError(400, "malformed request line");
  const [method, target, version] = parts;
  if (!METHOD.test(method)) throw new HttpError(400, "malformed request line");
  const versionMatch = /^HTTP\/([0-9])\.([0-9])$/.exec(version);
  if (!versionMatch) throw new HttpError(400, "malformed request line");
  if (versionMatch[1] !== "1") throw new HttpError(505, `HTTP/${versionMatch[1]} not supported`);
  const minor = versionMatch[2] === "0" ? 0 : 1;
  let path = target;
  let targetAuthority: string | null = null;
  if (target === "*") {
    if (method !== "OPTIONS") throw new HttpError(400, "asterisk-form is for OPTIONS only");
  } else if (!ORIGIN_FORM.test(target)) {
    const absolute = ABSOLUTE_FORM.exec(target);
    if (!absolute) throw new HttpError(400, "request target must be a path or an http: URL");
    targetAuthority = absolute[1];
    path = absolute[2] === "" ? "/" : absolute[2].startsWith("?") ? `/${absolute[2]}` : absolute[2];
  }

  const headers = parseFieldLines(lines.slice(1));
  const single = new Map<string, string>();
  const lists = new Map<string, string>();
  for (const [name, value] of headers) {
    const lower = name.toLowerCase();
    if (SINGLE.has(lower) && single.has(lower)) {
      throw new HttpError(400, `repeated ${lower} header`);
    }
    single.set(lower, value);
    lists.set(lower, lists.has(lower) ? `${lists.get(lower)},${value}` : value);
  }

  const transferEncoding = single.get("transfer-encoding");
  const lengthText = single.get("content-length");
  if (transferEncoding !== undefined && lengthText !== undefined) {
    throw new HttpError(400, "both Content-Length and Transfer-Encoding");
  }
  if (transferEncoding !== undefined && transferEncoding.toLowerCase() !== "chunked") {
    throw new HttpError(501, "only chunked transfer coding is supported");
  }
  if (lengthText !== undefined && !DIGITS.test(lengthText)) {
    throw new HttpError(400, "bad Content-Length");
  }
  const sentHost = single.get("host");
  if (minor === 1 && sentHost === undefined) {
    throw new HttpError(400, "HTTP/1.1 request without Host");
  }
  if (sentHost !== undefined && sentHost !== "" && !AUTHORITY.test(sentHost)) {
    throw new HttpError(400, "bad Host");
  }
  // §3.2.2: the absolute form's authority overrides Host, in the fields the app sees too.
  const host = targetAuthority ?? sentHost;
  if (targetAuthority !== null) {
    const at = headers.findIndex(([name]) => name.toLowerCase() === "host");
    if (at >= 0) headers[at] = [headers[at][0], targetAuthority];
    else headers.push(["Host", targetAuthority]);
  }

  const connection = (lists.get("connection") ?? "").toLowerCase().split(",").map(trimOws);
  const keepAlive = transferEncoding !== undefined && minor === 0
    ? false // RFC 9112 §6.1: the framing of an HTTP/1.0 message with TE is faulty; close after it
    : minor === 1
    ? !connection.includes("close")
    : connection.includes("keep-alive");
  return {
    method,
    target: path,
    minor,
    headers,
    host: host || null,
    contentLength: lengthText === undefined ? null : Number(lengthText),
    chunked: transferEncoding !== undefined,
    expectContinue: minor === 1 && (single.get("expect") ?? "").toLowerCase() === "100-continue",
    keepAlive,
  };
}

/** Parses a chunk-size line (without CRLF): the size; extensions are checked and dropped. */
export function parseChunkSizeLine(bytes: Uint8Array): number {
  const line = latin1(bytes);
  let end = 0;
  while (end < line.length && /[0-9A-Fa-f]/.test(line[end])) end++;
  const size = line.slice(0, end);
  if (!CHUNK_SIZE.test(size)) throw new HttpError(400, "bad chunk size");
  if (!CHUNK_EXT.test(line.slice(end))) throw new HttpError(400, "bad chunk extension");
  return parseInt(size, 16);
}

/** Parses a trailer section (lines without their CRLF): checked like headers, then dropped. */
export function checkTrailers(bytes: Uint8Array): void {
  if (bytes.length === 0) return;
  parseFieldLines(splitLines(latin1(bytes)));
}
