/**
 * The control API's HTTP server under the attacks a local user can make with
 * raw sockets: idle and half-sent connections, more connections than the cap,
 * oversized heads and bodies, ambiguous framing, a body cut off midway. Timers
 * are short so the cut happens quickly; the tests wait for the event (EOF), never
 * measure how long it took.
 */
import assert from "node:assert/strict";
import { type HttpServer, type HttpServerOptions, startHttpServer } from "../src/http/server.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { eventually } from "./support/wait.ts";
import { memoryLog } from "./support/log.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

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

Deno.test("at the connection cap a new client replaces a connection idle for the minimum time", async () => {
  const clock = new ManualClock();
  await withServer({ maxConnections: 2, minIdleMs: 1_000, clock }, async (server, port) => {
    const first = await Deno.connect({ hostname: "127.0.0.1", port });
    const second = await Deno.connect({ hostname: "127.0.0.1", port });
    await eventually("both accepted", () => server.connections === 2);
    const answering = send(port, `${GET}Connection: close\r\n\r\n`);
    clock.advance(1_000); // now both have been silent long enough
    assert.match(await answering, /^HTTP\/1\.1 200 OK\r\n/);
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
      // The absolute form is accepted (RFC 9112 §3.2.2), but only for http: and without userinfo.
      ["GET https://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", /^HTTP\/1\.1 400 /],
      ["GET http://u@evil/ HTTP/1.1\r\nHost: a\r\n\r\n", /^HTTP\/1\.1 400 /],
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
    await eventually("three log lines", () => log.lines.length >= 3, 2_000);
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

/** Splits a stream of answers into [head, body] pairs (Content-Length framed). */
function splitAnswers(text: string): { head: string; body: string }[] {
  const answers: { head: string; body: string }[] = [];
  let rest = text;
  while (rest.length > 0) {
    const end = rest.indexOf("\r\n\r\n");
    if (end < 0) break;
    const head = rest.slice(0, end);
    const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
    answers.push({ head, body: rest.slice(end + 4, end + 4 + length) });
    rest = rest.slice(end + 4 + length);
  }
  return answers;
}

Deno.test("100 pipelined GETs are all answered in order, whatever the alignment of their heads", async () => {
  await withServer({}, async (_server, port) => {
    const alignments = Array.from({ length: 24 }, (_, i) => i * 5);
    const results = await Promise.all(alignments.map(async (pad) => {
      let text = "";
      for (let i = 0; i < 100; i++) {
        const last = i === 99 ? "Connection: close\r\n" : "";
        text += `GET /${i} HTTP/1.1\r\nHost: a\r\nX-Pad: ${"p".repeat((pad + i * 13) % 71)}\r\n` +
          `${last}\r\n`;
      }
      const answers = splitAnswers(await send(port, text));
      return answers.map((a) => JSON.parse(a.body).path);
    }));
    const expected = Array.from({ length: 100 }, (_, i) => `/${i}`);
    for (const [i, paths] of results.entries()) {
      assert.deepEqual(paths, expected, `padding ${alignments[i]}: ${paths.length} answered`);
    }
  });
});

Deno.test("every answer carries a Date; HEAD gets the GET's headers and no body; 204 has no Content-Length", async () => {
  const handler = (request: Request) => {
    const path = new URL(request.url).pathname;
    if (path === "/none") return new Response(null, { status: 204 });
    // What Hono gives for HEAD: the GET's headers, a null body.
    if (request.method === "HEAD") {
      return new Response(null, { headers: { "content-type": "application/json" } });
    }
    return Response.json({ path });
  };
  await withServer({ handler }, async (_server, port) => {
    const answers = splitAnswers(
      await send(
        port,
        "HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /none HTTP/1.1\r\nHost: a\r\n\r\n" +
          "GET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
      ),
    );
    assert.equal(answers.length, 3, JSON.stringify(answers));
    for (const { head } of answers) {
      assert.match(head, /\r\ndate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT/i);
    }
    const [head, none, get] = answers;
    assert.match(head.head, /^HTTP\/1\.1 200 OK/);
    assert.match(head.head, /content-type: application\/json/);
    assert.doesNotMatch(head.head, /content-length/i, "no Content-Length: 0 forced on HEAD");
    assert.match(none.head, /^HTTP\/1\.1 204 No Content/);
    assert.doesNotMatch(none.head, /content-length|transfer-encoding/i);
    assert.deepEqual(JSON.parse(get.body), { path: "/y" }, "the stream stayed in sync");
  });
});

Deno.test("HTTP/1.0 with Transfer-Encoding gets its answer and the connection closes (RFC 9112 §6.1)", async () => {
  await withServer({}, async (_server, port) => {
    const answer = await send(
      port,
      "POST /t HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n" +
        "GET /second HTTP/1.0\r\n\r\n",
    );
    assert.match(answer, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(answer, /connection: close/);
    assert.match(answer, /"body":"hi"/);
    assert.doesNotMatch(answer, /second/, "nothing after the faulty framing is read as a request");
  });
});

Deno.test("HTTP/1.0 gets no 100 Continue; HTTP/1.1 does", async () => {
  await withServer({}, async (_server, port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(
      encoder.encode("POST /e HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"),
    );
    await conn.write(encoder.encode("ok"));
    const answer = await readToEnd(conn);
    assert.doesNotMatch(answer, /100 Continue/);
    assert.match(answer, /^HTTP\/1\.1 200 OK\r\n[^]*"body":"ok"/);
  });
});

Deno.test("socket-level leniencies are refused: whitespace other than SP and HTAB, asterisk-form off OPTIONS", async () => {
  await withServer({}, async (_server, port) => {
    const nbsp = "\u00a0";
    const ideographic = "\u3000";
    const cases: [string, string, RegExp][] = [
      [
        "VT before CL",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\x0b2\r\n\r\nhi",
        /^HTTP\/1\.1 400 /,
      ],
      [
        "FF after CL",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\x0c\r\n\r\nhi",
        /^HTTP\/1\.1 400 /,
      ],
      [
        "NBSP after CL",
        `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2${nbsp}\r\n\r\nhi`,
        /^HTTP\/1\.1 400 /,
      ],
      [
        "U+3000 before CL",
        `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ${ideographic}2\r\n\r\nhi`,
        /^HTTP\/1\.1 400 /,
      ],
      [
        "VT after TE",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",
        /^HTTP\/1\.1 400 /,
      ],
      [
        "NBSP after TE",
        `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked${nbsp}\r\n\r\n0\r\n\r\n`,
        /^HTTP\/1\.1 501 /,
      ],
      ["asterisk-form on GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", /^HTTP\/1\.1 400 /],
      [
        "asterisk-form on OPTIONS",
        "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        /^HTTP\/1\.1 200 /,
      ],
      [
        "chunk extensions are checked",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2;\x01\r\nhi\r\n0\r\n\r\n",
        /^HTTP\/1\.1 400 /,
      ],
    ];
    for (const [what, request, expected] of cases) {
      assert.match(await send(port, request), expected, what);
    }
  });
});

Deno.test("a streamed answer reaches the client chunk by chunk, before the producer has finished", async () => {
  const seenFirst = Promise.withResolvers<void>();
  let producedSecondAfterFirstSeen = false;
  let firstSeen = false;
  const handler = () =>
    new Response(
      new ReadableStream<Uint8Array>({
        async start(controller) {
          controller.enqueue(encoder.encode("first;"));
          // The second part is made once the client has the first (or, on a server that
          // buffers the whole body, after a fallback so the test ends instead of hanging).
          let fallback: ReturnType<typeof setTimeout> | undefined;
          await Promise.race([
            seenFirst.promise,
            new Promise((resolve) => fallback = setTimeout(resolve, 3_000)),
          ]);
          clearTimeout(fallback);
          producedSecondAfterFirstSeen = firstSeen;
          controller.enqueue(encoder.encode("second"));
          controller.close();
        },
      }),
      { headers: { "content-type": "text/plain" } },
    );
  await withServer({ handler }, async (_server, port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(encoder.encode(`${GET}Connection: close\r\n\r\n`));
    let text = "";
    const buffer = new Uint8Array(4096);
    while (!text.includes("first;")) {
      const n = await conn.read(buffer);
      if (n === null) break;
      text += decoder.decode(buffer.subarray(0, n));
    }
    firstSeen = text.includes("first;");
    seenFirst.resolve();
    text += await readToEnd(conn);
    assert.ok(
      producedSecondAfterFirstSeen,
      "the first chunk arrived while the body was unfinished",
    );
    assert.match(text, /transfer-encoding: chunked/);
    assert.match(text, /\r\n\r\n6\r\nfirst;\r\n6\r\nsecond\r\n0\r\n\r\n$/);
  });
});

Deno.test("when the client of a stream leaves, the stream is cancelled and the connection leaves the table", async () => {
  const cancelled = Promise.withResolvers<void>();
  const handler = () =>
    new Response(
      new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(encoder.encode("hello"));
        },
        cancel() {
          cancelled.resolve();
        },
      }),
    );
  await withServer({ handler }, async (server, port) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(encoder.encode(`${GET}\r\n`));
    const n = await conn.read(new Uint8Array(4096));
    assert.ok(n !== null && n > 0);
    assert.equal(server.connections, 1);
    conn.close();
    await cancelled.promise;
    await eventually("the connection left the table", () => server.connections === 0);
  });
});

Deno.test("at the cap, clients that pipeline and never read keep the newcomer out until one leaves", async () => {
  const big = new Uint8Array(1024 * 1024);
  let answered: string[] = [];
  let busyClientLeft = false;
  let newcomerServedAfterALeft: boolean | null = null;
  const handler = (request: Request) => {
    const path = new URL(request.url).pathname;
    answered.push(path);
    if (path === "/newcomer") newcomerServedAfterALeft = busyClientLeft;
    return new Response(path === "/newcomer" ? "hi" : big);
  };
  await withServer({ maxConnections: 2, minIdleMs: 3_600_000, handler }, async (server, port) => {
    const busy = await Promise.all([0, 1].map(async (i) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      // 20 requests for 1 MiB each, never read: the server's writes block.
      await conn.write(encoder.encode(`GET /busy${i} HTTP/1.1\r\nHost: a\r\n\r\n`.repeat(20)));
      return conn;
    }));
    await eventually(
      "both busy clients are being answered",
      () => answered.includes("/busy0") && answered.includes("/busy1"),
    );
    const newcomer = Deno.connect({ hostname: "127.0.0.1", port }).then(async (conn) => {
      await conn.write(
        encoder.encode("GET /newcomer HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
      );
      return await readToEnd(conn);
    });
    // Without a cap the newcomer would be served at once; give that a chance to show.
    let fallback: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([newcomer, new Promise((r) => fallback = setTimeout(r, 2_000))]);
    clearTimeout(fallback);
    assert.ok(server.connections <= 2, `${server.connections} connections at a cap of 2`);
    busyClientLeft = true;
    busy[0].close();
    assert.match(await newcomer, /\r\n\r\nhi$/);
    assert.equal(newcomerServedAfterALeft, true, "served only once a busy client had left");
    busy[1].close();
    answered = [];
  });
});

Deno.test("a connect flood does not close legitimate requests unanswered", async () => {
  await withServer({ maxConnections: 8 }, async (_server, port) => {
    // 400 connections that send nothing and hang up after a moment (the attacker's
    // rhythm, not a measurement), with a legitimate request every fourth connect.
    const flood: Promise<void>[] = [];
    const legit: Promise<string>[] = [];
    for (let i = 0; i < 400; i++) {
      flood.push(
        Deno.connect({ hostname: "127.0.0.1", port }).then((conn) => {
          setTimeout(() => conn.close(), 200);
        }),
      );
      if (i % 4 === 0) {
        legit.push(send(port, `GET /legit${i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`));
      }
    }
    const answers = await Promise.all(legit);
    await Promise.all(flood);
    const unanswered = answers.filter((a) => !a.startsWith("HTTP/1.1 200 OK")).length;
    assert.equal(unanswered, 0, `${unanswered} of 100 legitimate requests were closed unanswered`);
  });
});
