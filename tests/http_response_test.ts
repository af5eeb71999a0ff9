/**
 * The response writer without sockets: how a fetch Response is framed on the
 * wire (Content-Length for a body complete in hand, chunked for a stream,
 * close-delimited for HTTP/1.0), HEAD and 304 without a body, and a stream
 * whose client left is cancelled.
 */
import assert from "node:assert/strict";
import { type ResponseContext, writeResponse } from "../src/http/response_writer.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const DATE = new Date("2026-01-02T03:04:05Z");

async function wire(response: Response, context: Partial<ResponseContext> = {}) {
  const parts: string[] = [];
  const sink = {
    write: (data: Uint8Array) => {
      parts.push(decoder.decode(data));
      return Promise.resolve(data.length);
    },
  };
  const { keepAlive } = await writeResponse(sink, response, {
    method: "GET",
    minor: 1,
    keepAlive: true,
    now: () => DATE,
    ...context,
  });
  return { text: parts.join(""), writes: parts.length, keepAlive };
}

/**
 * A stream that has `ready` at once, then yields `chunks`, each after the
 * previous one was read and a tick passed.
 */
function slowStream(chunks: string[], ready: string[] = []): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    start(controller) {
      for (const chunk of ready) controller.enqueue(encoder.encode(chunk));
    },
    async pull(controller) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      if (i < chunks.length) controller.enqueue(encoder.encode(chunks[i++]));
      else controller.close();
    },
  }, { highWaterMark: 0 });
}

Deno.test("a body complete in hand goes out with a Content-Length and a Date, in one write", async () => {
  const { text, writes, keepAlive } = await wire(Response.json({ a: 1 }));
  assert.equal(
    text,
    "HTTP/1.1 200 OK\r\ndate: Fri, 02 Jan 2026 03:04:05 GMT\r\n" +
      "content-type: application/json\r\ncontent-length: 7\r\nconnection: keep-alive\r\n\r\n" +
      '{"a":1}',
  );
  assert.equal(writes, 1);
  assert.equal(keepAlive, true);
});

Deno.test("a stream goes out chunked, empty chunks dropped (they would end the body)", async () => {
  const { text } = await wire(new Response(slowStream(["", "cde"], ["ab", ""])));
  assert.match(text, /transfer-encoding: chunked\r\n/);
  assert.doesNotMatch(text, /content-length/);
  assert.ok(text.endsWith("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"), JSON.stringify(text));
});

Deno.test("to HTTP/1.0 a stream is close-delimited and the connection closes", async () => {
  const { text, keepAlive } = await wire(new Response(slowStream(["ab", "cd"])), { minor: 0 });
  assert.ok(text.endsWith("connection: close\r\n\r\nabcd"), JSON.stringify(text));
  assert.equal(keepAlive, false);
});

Deno.test("HEAD keeps the GET's framing headers and sends no body; 304 has neither", async () => {
  const head = await wire(new Response("hello"), { method: "HEAD" });
  assert.match(head.text, /content-length: 5\r\n/);
  assert.ok(head.text.endsWith("\r\n\r\n"));
  const notModified = await wire(new Response(null, { status: 304, headers: { etag: '"x"' } }));
  assert.match(notModified.text, /^HTTP\/1\.1 304 Not Modified\r\n/);
  assert.match(notModified.text, /etag: "x"/);
  assert.doesNotMatch(notModified.text, /content-length|transfer-encoding/);
});

Deno.test("the framing and connection headers are the server's, never the app's", async () => {
  const { text } = await wire(
    new Response("x", { headers: { "content-length": "99", connection: "upgrade" } }),
  );
  assert.match(text, /content-length: 1\r\n/);
  assert.doesNotMatch(text, /content-length: 99|upgrade/);
});

Deno.test("when the client is gone, the stream is cancelled and writing stops", async () => {
  const gone = new AbortController();
  let cancelled = false;
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(encoder.encode("first"));
    },
    cancel() {
      cancelled = true;
    },
  });
  const writing = wire(new Response(stream), { gone: gone.signal });
  await new Promise((resolve) => setTimeout(resolve, 0));
  gone.abort();
  const { text, keepAlive } = await writing;
  assert.ok(cancelled);
  assert.equal(keepAlive, false);
  assert.ok(text.endsWith("5\r\nfirst\r\n"), "no terminator after the client left");
});
