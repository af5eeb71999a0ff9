/**
 * The strict HTTP/1.1 message layer without sockets: a case table from RFC
 * 9112 and the known request-smuggling vectors, pipelined heads split at every
 * byte, the reader's memory bound under a body of long chunk extensions, and a
 * seeded fuzz test (mutated valid requests only ever raise HttpError or wait
 * for more bytes, and are never read past what was given).
 */
import assert from "node:assert/strict";
import { HttpError, type RequestHead } from "../src/http/message.ts";
import { ConnectionGone, type MessageLimits, MessageReader } from "../src/http/message_reader.ts";

const encoder = new TextEncoder();
const LIMITS: MessageLimits = {
  maxHeadBytes: 1024,
  maxBodyBytes: 4096,
  maxChunkFramingBytes: 2048,
  maxChunkLineBytes: 256,
};

/** A source that hands out `parts` one read at a time, then EOF; counts what was taken. */
class ScriptedSource {
  taken = 0;
  #parts: Uint8Array[];
  constructor(parts: Uint8Array[]) {
    this.#parts = parts.filter((p) => p.length > 0);
  }
  read(target: Uint8Array): Promise<number | null> {
    const next = this.#parts.shift();
    if (!next) return Promise.resolve(null);
    const n = Math.min(target.length, next.length);
    target.set(next.subarray(0, n));
    if (n < next.length) this.#parts.unshift(next.subarray(n));
    this.taken += n;
    return Promise.resolve(n);
  }
}

/** Reads one request (head and body) from `text`, bytes given in one piece. */
async function readRequest(
  text: string | Uint8Array,
  limits = LIMITS,
): Promise<{ head: RequestHead; body: Uint8Array | null }> {
  const bytes = typeof text === "string" ? latin1Bytes(text) : text;
  const reader = new MessageReader(new ScriptedSource([bytes]), limits);
  const head = await reader.readHead();
  const body = head.chunked
    ? await reader.readChunked()
    : head.contentLength === null
    ? null
    : await reader.readExactly(head.contentLength);
  return { head, body };
}

/** A string of code points 0–255 as those bytes (so a case can hold any byte). */
function latin1Bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

/** Status of the refusal, or "ok". */
async function outcome(text: string | Uint8Array): Promise<number | "ok"> {
  try {
    await readRequest(text);
    return "ok";
  } catch (error) {
    if (error instanceof HttpError) return error.status;
    throw error;
  }
}

const H = "Host: a\r\n";
const utf8 = (text: string) => String.fromCharCode(...encoder.encode(text));

/** [what, request, expected]: each leniency and smuggling vector is refused. */
const CASES: [string, string, number | "ok"][] = [
  ["a plain GET", `GET / HTTP/1.1\r\n${H}\r\n`, "ok"],
  ["OWS of SP and HTAB around a value", `GET / HTTP/1.1\r\nHost: \t a \t\r\n\r\n`, "ok"],
  ["CRLF before the request line", `\r\n\r\nGET / HTTP/1.1\r\n${H}\r\n`, "ok"],
  ["Content-Length with its body", `POST / HTTP/1.1\r\n${H}Content-Length: 2\r\n\r\nhi`, "ok"],
  [
    "chunked with extensions",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n2;a=b;c="d e"\r\nhi\r\n0\r\n\r\n`,
    "ok",
  ],
  [
    "trailers",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n`,
    "ok",
  ],
  ["OPTIONS *", `OPTIONS * HTTP/1.1\r\n${H}\r\n`, "ok"],
  // Framing ambiguities (request smuggling)
  [
    "CL + TE",
    `POST / HTTP/1.1\r\n${H}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n`,
    400,
  ],
  ["duplicate CL", `POST / HTTP/1.1\r\n${H}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc`, 400],
  ["CL list", `POST / HTTP/1.1\r\n${H}Content-Length: 3, 3\r\n\r\nabc`, 400],
  ["CL sign", `POST / HTTP/1.1\r\n${H}Content-Length: +3\r\n\r\nabc`, 400],
  ["CL negative", `POST / HTTP/1.1\r\n${H}Content-Length: -1\r\n\r\n`, 400],
  ["CL hex", `POST / HTTP/1.1\r\n${H}Content-Length: 0x3\r\n\r\n`, 400],
  ["CL 16 digits", `POST / HTTP/1.1\r\n${H}Content-Length: 1000000000000000\r\n\r\n`, 400],
  ["CL with VT before", `POST / HTTP/1.1\r\n${H}Content-Length:\x0b3\r\n\r\nabc`, 400],
  ["CL with FF after", `POST / HTTP/1.1\r\n${H}Content-Length: 3\x0c\r\n\r\nabc`, 400],
  [
    "CL with NBSP (UTF-8)",
    `POST / HTTP/1.1\r\n${H}Content-Length: 3${utf8("\u00a0")}\r\n\r\nabc`,
    400,
  ],
  ["CL with NBSP (latin1)", `POST / HTTP/1.1\r\n${H}Content-Length: \xa03\r\n\r\nabc`, 400],
  ["CL with U+3000", `POST / HTTP/1.1\r\n${H}Content-Length: ${utf8("\u3000")}3\r\n\r\nabc`, 400],
  ["CL with CR inside", `POST / HTTP/1.1\r\n${H}Content-Length: 3\r\r\n\r\nabc`, 400],
  ["space before the colon", `POST / HTTP/1.1\r\n${H}Content-Length : 3\r\n\r\nabc`, 400],
  ["TE gzip", `POST / HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\n\r\n`, 501],
  [
    "TE chunked twice in a list",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked, chunked\r\n\r\n`,
    501,
  ],
  ["TE gzip, chunked", `POST / HTTP/1.1\r\n${H}Transfer-Encoding: gzip, chunked\r\n\r\n`, 501],
  [
    "TE repeated",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n`,
    400,
  ],
  ["TE with VT", `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n`, 400],
  [
    "TE with FF before",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding:\x0cchunked\r\n\r\n0\r\n\r\n`,
    400,
  ],
  [
    "TE with NBSP",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked${utf8("\u00a0")}\r\n\r\n0\r\n\r\n`,
    501,
  ],
  [
    "TE with U+3000",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: ${utf8("\u3000")}chunked\r\n\r\n0\r\n\r\n`,
    501,
  ],
  ["TE xchunked", `POST / HTTP/1.1\r\n${H}Transfer-Encoding: xchunked\r\n\r\n`, 501],
  ["TE in quotes", `POST / HTTP/1.1\r\n${H}Transfer-Encoding: "chunked"\r\n\r\n`, 501],
  [
    "TE space before colon",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n`,
    400,
  ],
  ["TE obs-fold", `POST / HTTP/1.1\r\n${H}Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n`, 400],
  // Line endings and folding
  ["bare LF ending a header", `GET / HTTP/1.1\n${H}\r\n`, 400],
  ["bare LF ending the head", `GET / HTTP/1.1\r\n${H}\n`, 400],
  ["bare CR in a value", `GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n`, 400],
  ["obs-fold", `GET / HTTP/1.1\r\n${H}X: a\r\n b\r\n\r\n`, 400],
  ["NUL in a value", `GET / HTTP/1.1\r\n${H}X: a\x00b\r\n\r\n`, 400],
  ["DEL in a value", `GET / HTTP/1.1\r\n${H}X: a\x7fb\r\n\r\n`, 400],
  ["empty header name", `GET / HTTP/1.1\r\n${H}: a\r\n\r\n`, 400],
  // Request line
  ["two spaces in the request line", `GET  / HTTP/1.1\r\n${H}\r\n`, 400],
  ["a tab in the request line", `GET\t/ HTTP/1.1\r\n${H}\r\n`, 400],
  ["lower-case method", `get / HTTP/1.1\r\n${H}\r\n`, 400],
  ["HTTP/2.0", `GET / HTTP/2.0\r\n${H}\r\n`, 505],
  ["HTTP/1.10", `GET / HTTP/1.10\r\n${H}\r\n`, 400],
  ["asterisk-form on GET", `GET * HTTP/1.1\r\n${H}\r\n`, 400],
  ["absolute-form of https", `GET https://a/ HTTP/1.1\r\n${H}\r\n`, 400],
  ["absolute-form with userinfo", `GET http://u@a/ HTTP/1.1\r\n${H}\r\n`, 400],
  ["absolute-form without authority", `GET http:/// HTTP/1.1\r\n${H}\r\n`, 400],
  ["absolute-form with a space in it", `GET http://a /x HTTP/1.1\r\n${H}\r\n`, 400],
  ["absolute-form without Host in HTTP/1.1", `GET http://a/ HTTP/1.1\r\n\r\n`, 400],
  ["non-ASCII in the target", `GET /\xe9 HTTP/1.1\r\n${H}\r\n`, 400],
  ["no Host in HTTP/1.1", `GET / HTTP/1.1\r\n\r\n`, 400],
  ["two Hosts", `GET / HTTP/1.1\r\n${H}${H}\r\n`, 400],
  ["a Host with a path", `GET / HTTP/1.1\r\nHost: a/b\r\n\r\n`, 400],
  // Chunked bodies
  [
    "chunk-size overflow",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\nfffffffff\r\n`,
    400,
  ],
  [
    "chunk-size 64-bit wrap",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n10000000000000002\r\nhi\r\n0\r\n\r\n`,
    400,
  ],
  [
    "chunk-size with a sign",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n+2\r\nhi\r\n0\r\n\r\n`,
    400,
  ],
  [
    "chunk-size 0x prefix",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n0x2\r\nhi\r\n0\r\n\r\n`,
    400,
  ],
  [
    "chunk-size with trailing junk",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n2 x\r\nhi\r\n0\r\n\r\n`,
    400,
  ],
  [
    "chunk-size bare LF",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n2\nhi\r\n0\r\n\r\n`,
    400,
  ],
  [
    "chunk data longer than its size",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n2\r\nhix\r\n0\r\n\r\n`,
    400,
  ],
  [
    "chunk data bare LF",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n2\r\nhi\n0\r\n\r\n`,
    400,
  ],
  [
    "chunk extension with a control",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n2;a=\x01\r\nhi\r\n0\r\n\r\n`,
    400,
  ],
  [
    "chunk extension over the line limit",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n2;a=${
      "x".repeat(300)
    }\r\nhi\r\n0\r\n\r\n`,
    400,
  ],
  [
    "trailer obs-fold",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n`,
    400,
  ],
  [
    "trailer bare LF",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\nX: a\n\r\n`,
    400,
  ],
  // Limits
  ["a head over the limit", `GET / HTTP/1.1\r\n${H}X: ${"x".repeat(1100)}\r\n\r\n`, 431],
  [
    "CRLFs before the request line over the limit",
    `${"\r\n".repeat(600)}GET / HTTP/1.1\r\n${H}\r\n`,
    431,
  ],
  [
    "a chunked body over the limit",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n1001\r\n${
      "x".repeat(4097)
    }\r\n0\r\n\r\n`,
    413,
  ],
  [
    "chunk framing over its budget",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n${
      `1;e=${"x".repeat(200)}\r\nx\r\n`.repeat(12)
    }0\r\n\r\n`,
    413,
  ],
  [
    "trailers over the limit",
    `POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n0\r\n${"X: y\r\n".repeat(200)}\r\n`,
    431,
  ],
];

for (const [what, request, expected] of CASES) {
  Deno.test(`message layer: ${what} → ${expected}`, async () => {
    assert.equal(await outcome(request), expected);
  });
}

Deno.test("HTTP/1.0 with Transfer-Encoding is read as chunked and closes after the answer (RFC 9112 §6.1)", async () => {
  const { head, body } = await readRequest(
    "POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
  );
  assert.equal(head.keepAlive, false);
  assert.deepEqual(body, encoder.encode("hi"));
  const plain = await readRequest("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  assert.equal(plain.head.keepAlive, true, "without TE, HTTP/1.0 keep-alive is honoured");
});

Deno.test("an absolute-form target is accepted: its authority replaces Host, its path is the target (RFC 9112 §3.2.2)", async () => {
  const cases: [target: string, path: string][] = [
    ["http://127.0.0.1:8080/api/health?x=1", "/api/health?x=1"],
    ["HTTP://127.0.0.1:8080", "/"],
    ["http://[::1]:8080?q", "/?q"],
  ];
  for (const [target, path] of cases) {
    const { head } = await readRequest(`GET ${target} HTTP/1.1\r\nHost: other.example\r\n\r\n`);
    const authority = /^http:\/\/([^/?]+)/i.exec(target)![1];
    assert.equal(head.target, path, target);
    assert.equal(head.host, authority, `${target}: the authority is the host`);
    assert.deepEqual(
      head.headers,
      [["Host", authority]],
      `${target}: and the Host field the app sees`,
    );
  }
  const v10 = await readRequest("GET http://127.0.0.1/x HTTP/1.0\r\n\r\n");
  assert.deepEqual([v10.head.target, v10.head.host, v10.head.headers], [
    "/x",
    "127.0.0.1",
    [["Host", "127.0.0.1"]],
  ]);
});

Deno.test("Expect: 100-continue counts only for HTTP/1.1", async () => {
  const v11 = await readRequest(`POST / HTTP/1.1\r\n${H}Expect: 100-continue\r\n\r\n`);
  const v10 = await readRequest(`POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n`);
  assert.equal(v11.head.expectContinue, true);
  assert.equal(v10.head.expectContinue, false);
});

Deno.test("field values keep their inner whitespace and any obs-text byte", async () => {
  const { head } = await readRequest(
    `GET / HTTP/1.1\r\n${H}X-A: one \t two\r\nX-B: caf\xe9\r\n\r\n`,
  );
  assert.deepEqual(head.headers.slice(1), [["X-A", "one \t two"], ["X-B", "caf\xe9"]]);
});

/** 100 pipelined GETs whose heads are padded so that boundaries fall everywhere. */
function pipelined(count: number, pad: number): Uint8Array {
  let text = "";
  for (let i = 0; i < count; i++) {
    text += `GET /${i} HTTP/1.1\r\n${H}X-Pad: ${"p".repeat((pad + i * 7) % 97)}\r\n\r\n`;
  }
  return encoder.encode(text);
}

Deno.test("100 pipelined requests are read in order whatever the read sizes and the buffer alignment", async () => {
  for (const readSize of [1, 2, 3, 7, 61, 512, 1000, 4093, 4096, 4099, 100_000]) {
    for (const pad of [0, 1, 2, 3, 50]) {
      const bytes = pipelined(100, pad);
      const parts: Uint8Array[] = [];
      for (let at = 0; at < bytes.length; at += readSize) {
        parts.push(bytes.subarray(at, at + readSize));
      }
      const reader = new MessageReader(new ScriptedSource(parts), LIMITS);
      const targets: string[] = [];
      while (await reader.waitForData()) targets.push((await reader.readHead()).target);
      assert.deepEqual(
        targets,
        Array.from({ length: 100 }, (_, i) => `/${i}`),
        `reads of ${readSize}`,
      );
      assert.ok(reader.capacity <= LIMITS.maxHeadBytes + 4096, `buffer grew to ${reader.capacity}`);
    }
  }
});

Deno.test("a head split at every byte is found, and the next pipelined one after it", async () => {
  const bytes = encoder.encode(`GET /a HTTP/1.1\r\n${H}\r\nGET /b HTTP/1.1\r\n${H}\r\n`);
  for (let cut = 1; cut < bytes.length; cut++) {
    const reader = new MessageReader(
      new ScriptedSource([bytes.subarray(0, cut), bytes.subarray(cut)]),
      LIMITS,
    );
    assert.equal((await reader.readHead()).target, "/a", `cut at ${cut}`);
    assert.equal((await reader.readHead()).target, "/b", `cut at ${cut}`);
  }
});

Deno.test("a body of 1-byte chunks with long extensions stops at the framing budget; the buffer stays small", async () => {
  const chunk = encoder.encode(`1;ext=${"e".repeat(200)}\r\nx\r\n`);
  const head = encoder.encode(`POST / HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n`);
  // 64 MB would be sent; the reader must give up long before taking it all.
  const total = 64 * 1024 * 1024;
  const source = new ScriptedSource([head, ...Array(Math.ceil(total / chunk.length)).fill(chunk)]);
  const reader = new MessageReader(source, LIMITS);
  await reader.readHead();
  await assert.rejects(reader.readChunked(), (e) => e instanceof HttpError && e.status === 413);
  assert.ok(source.taken < LIMITS.maxChunkFramingBytes + 8192, `took ${source.taken} bytes`);
  assert.ok(reader.capacity <= LIMITS.maxHeadBytes + 4096);
});

Deno.test("a connection closed inside a head or body is ConnectionGone, not a parse error", async () => {
  for (
    const text of [`GET / HTTP/1.1\r\nHo`, `POST / HTTP/1.1\r\n${H}Content-Length: 5\r\n\r\nab`]
  ) {
    await assert.rejects(readRequest(text), ConnectionGone);
  }
});

/** xorshift32: the same mutations on every run. */
function random(seed: number) {
  let state = seed >>> 0 || 1;
  return (n: number) => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state % n;
  };
}

const SEEDS = [
  `GET /a?b=c HTTP/1.1\r\n${H}Accept: */*\r\n\r\n`,
  `POST /x HTTP/1.1\r\n${H}Content-Length: 5\r\n\r\nhello`,
  `POST /y HTTP/1.1\r\n${H}Transfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\nT: 1\r\n\r\n`,
  `GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n`,
];
const INTERESTING = [
  0x00,
  0x09,
  0x0a,
  0x0b,
  0x0c,
  0x0d,
  0x20,
  0x22,
  0x2c,
  0x3a,
  0x3b,
  0x7f,
  0xa0,
  0xff,
];

Deno.test("fuzz: mutated requests raise only HttpError or ConnectionGone and never read past their bytes", async () => {
  const next = random(0x5eed18);
  let refused = 0;
  for (let round = 0; round < 3000; round++) {
    const bytes = Array.from(encoder.encode(SEEDS[next(SEEDS.length)]));
    for (let m = 1 + next(4); m > 0; m--) {
      const at = next(bytes.length + 1);
      const byte = next(2) ? INTERESTING[next(INTERESTING.length)] : next(256);
      const kind = next(3);
      if (kind === 0) bytes[at] = byte;
      else if (kind === 1) bytes.splice(at, 0, byte);
      else bytes.splice(at, 1 + next(3));
    }
    const input = Uint8Array.from(bytes);
    const source = new ScriptedSource([input]);
    const reader = new MessageReader(source, LIMITS);
    try {
      const head = await reader.readHead();
      if (head.chunked) await reader.readChunked();
      else if (head.contentLength !== null) await reader.readExactly(head.contentLength);
    } catch (error) {
      if (!(error instanceof HttpError) && !(error instanceof ConnectionGone)) {
        throw new Error(
          `round ${round}: ${error} for ${JSON.stringify(String.fromCharCode(...input))}`,
        );
      }
      refused++;
    }
    assert.ok(source.taken <= input.length);
    assert.ok(reader.capacity <= LIMITS.maxHeadBytes + 4096);
  }
  assert.ok(refused > 1000, `only ${refused} of 3000 mutations were refused`);
});
