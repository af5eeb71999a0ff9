/**
 * The control API's HTTP server under the attacks a local user can make with
 * raw sockets: idle and half-sent connections, more connections than the cap,
 * oversized heads and bodies, ambiguous framing, a body cut off midway. Timers
 * are short so the cut happens quickly; the tests wait for the event (EOF), never
 * measure how long it took.
 */
import assert from "node:assert/strict";
import { type HttpServer, type HttpServerOptions, startHttpServer } from "../src/http/server.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function memoryLog() {
  const lines: string[] = [];
  const push = (level: string) => (message: string, fields?: object) =>
    lines.push(`${level} ${message} ${fields ? JSON.stringify(fields) : ""}`);
  return {
    lines,
    debug: push("debug"),
    info: push("info"),
    warn: push("warn"),
    error: push("error"),
  };
}

async function withServer(
  options: Partial<HttpServerOptions>,
  body: (server: HttpServer, port: number, log: ReturnType<typeof memoryLog>) => Promise<void>,
) {
  const log = memoryLog();
  const server = startHttpServer({
    hostname: "127.0.0.1",
    port: 0,
    handler: async (request) =>
      Response.json({
        method: request.method,
        path: new URL(request.url).pathname,
        body: request.body ? await request.text() : null,
      }),
    log,
    ...options,
  });
  try {
    await body(server, server.addr.port, log);
  } finally {
    await server.close();
  }
}

/** Reads until the server closes the connection; everything it sent. */
async function readToEnd(conn: Deno.Conn): Promise<string> {
  const chunks: string[] = [];
  const buffer = new Uint8Array(4096);
  for (;;) {
    let n: number | null;
    try {
      n = await conn.read(buffer);
    } catch {
      n = null;
    }
    if (n === null) break;
    chunks.push(decoder.decode(buffer.subarray(0, n)));
  }
  conn.close();
  return chunks.join("");
}

async function send(port: number, text: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(encoder.encode(text));
  return await readToEnd(conn);
}

const GET = "GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n";

Deno.test("a connection that sends nothing is closed after the idle timeout", async () => {
  await withServer({ idleTimeoutMs: 20 }, async (_server, port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    assert.equal(await readToEnd(conn), "", "closed without an answer");
  });
});

Deno.test("a request head sent byte by byte too slowly is cut (slowloris)", async () => {
  await withServer({ requestTimeoutMs: 30 }, async (_server, port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(encoder.encode("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "));
    assert.equal(await readToEnd(conn), "");
  });
});

Deno.test("at the connection cap a new client replaces the longest-idle connection", async () => {
  await withServer({ maxConnections: 2 }, async (server, port) => {
    const first = await Deno.connect({ hostname: "127.0.0.1", port });
    const second = await Deno.connect({ hostname: "127.0.0.1", port });
    // Both accepted before the third arrives.
    for (let i = 0; i < 100 && server.connections < 2; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal(server.connections, 2);
    const answer = await send(port, `${GET}Connection: close\r\n\r\n`);
    assert.match(answer, /^HTTP\/1\.1 200 OK\r\n/);
    assert.equal(await readToEnd(first), "", "the oldest idle connection made room");
    second.close();
  });
});

Deno.test("keep-alive and pipelined requests are answered in order on one connection", async () => {
  await withServer({}, async (_server, port) => {
    const answer = await send(
      port,
      `${GET}\r\nPOST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi` +
        `POST /y HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` +
        `3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n`,
    );
    const bodies = [...answer.matchAll(/\{[^}]*\}/g)].map((m) => JSON.parse(m[0]));
    assert.deepEqual(bodies, [
      { method: "GET", path: "/api/health", body: null },
      { method: "POST", path: "/x", body: "hi" },
      { method: "POST", path: "/y", body: "abcde" },
    ]);
  });
});

Deno.test("ambiguous or oversized requests are refused before the app sees them", async () => {
  await withServer({ maxHeadBytes: 1024, maxBodyBytes: 100 }, async (_server, port) => {
    const cases: [string, RegExp][] = [
      [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        /^HTTP\/1\.1 400 /,
      ],
      [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        /^HTTP\/1\.1 400 /,
      ],
      ["POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n", /^HTTP\/1\.1 413 /],
      [`GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${"x".repeat(2000)}\r\n\r\n`, /^HTTP\/1\.1 431 /],
      ["GET / HTTP/1.1\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", /^HTTP\/1\.1 501 /],
    ];
    for (const [request, expected] of cases) {
      assert.match(await send(port, request), expected, JSON.stringify(request.slice(0, 60)));
    }
  });
});

Deno.test("a client that aborts its request body costs one short log line, no stack", async () => {
  await withServer({}, async (_server, port, log) => {
    for (let i = 0; i < 3; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(
        encoder.encode(
          'POST /api/mounts HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n{"image":',
        ),
      );
      conn.close();
    }
    for (let i = 0; i < 200 && log.lines.length < 3; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    assert.equal(log.lines.length, 3, log.lines.join("\n"));
    for (const line of log.lines) {
      assert.match(line, /^info HTTP client left before its request was answered/);
      assert.doesNotMatch(line, /stack|\n/);
    }
  });
});

Deno.test("Expect: 100-continue gets its interim answer, then the real one", async () => {
  await withServer({}, async (_server, port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(
      encoder.encode(
        "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
      ),
    );
    const buffer = new Uint8Array(64);
    const n = await conn.read(buffer);
    assert.match(decoder.decode(buffer.subarray(0, n ?? 0)), /^HTTP\/1\.1 100 Continue\r\n\r\n/);
    await conn.write(encoder.encode("ok"));
    assert.match(await readToEnd(conn), /"body":"ok"/);
  });
});

Deno.test("a handler that throws answers 500 and the server keeps serving", async () => {
  let calls = 0;
  await withServer({
    handler: () => {
      if (calls++ === 0) throw new Error("boom");
      return new Response("fine");
    },
  }, async (_server, port, log) => {
    assert.match(await send(port, `${GET}Connection: close\r\n\r\n`), /^HTTP\/1\.1 500 /);
    assert.match(await send(port, `${GET}Connection: close\r\n\r\n`), /\r\n\r\nfine$/);
    assert.ok(log.lines.some((l) => l.startsWith("error HTTP handler failed")));
  });
});

Deno.test("a request that starts the shutdown gets its answer, then its keep-alive connection closes", async () => {
  let closing: Promise<void> | null = null;
  let server: HttpServer | null = null;
  server = startHttpServer({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeoutMs: 3_600_000, // only the shutdown may close the connection here
    handler: () => {
      closing = server!.close();
      return Response.json({ status: "shutting down" }, { status: 202 });
    },
    log: memoryLog(),
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  await conn.write(encoder.encode("POST /api/shutdown HTTP/1.1\r\nHost: a\r\n\r\n"));
  const answer = await readToEnd(conn);
  assert.match(answer, /^HTTP\/1\.1 202 Accepted\r\n/);
  assert.match(answer, /connection: close/);
  await closing;
});
