/**
 * `GET /api/events` as Server-Sent Events: the contract's fields, resuming
 * after `?since=` or `Last-Event-ID`, a heartbeat on the (manual) clock, a
 * follower that falls behind told `missed` instead of queued for, and the
 * stream over a real socket: events arrive as they happen, and a follower
 * that leaves is unsubscribed and its connection leaves the table.
 */
import assert from "node:assert/strict";
import { EventLog } from "../src/daemon/events.ts";
import { eventStream, eventStreamResponse, HEARTBEAT_MS } from "../src/http/event_stream.ts";
import { registerOperatorRoutes } from "../src/http/operator_routes.ts";
import { startHttpServer } from "../src/http/server.ts";
import { Hono } from "hono";
import { ApiClient } from "../src/cli/api_client.ts";
import { eventsCommand } from "../src/cli/client_actions.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { eventually } from "./support/wait.ts";
import { quietLog } from "./support/log.ts";

const decoder = new TextDecoder();
const encoder = new TextEncoder();

interface SseMessage {
  id?: string;
  event?: string;
  data?: string;
  comment?: string;
}

/** Reads SSE messages off a byte stream as they come. */
class SseReader {
  #text = "";
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }
  async next(): Promise<SseMessage> {
    for (;;) {
      const end = this.#text.indexOf("\n\n");
      if (end >= 0) {
        const block = this.#text.slice(0, end);
        this.#text = this.#text.slice(end + 2);
        const message: SseMessage = {};
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) message.comment = line.slice(1).trim();
          const match = /^(id|event|data): (.*)$/.exec(line);
          if (match) message[match[1] as "id" | "event" | "data"] = match[2];
        }
        if (message.id || message.event || message.data || message.comment) return message;
        continue;
      }
      const { value, done } = await this.#reader.read();
      if (done) throw new Error("stream ended");
      this.#text += decoder.decode(value, { stream: true });
    }
  }
  cancel(): Promise<void> {
    return this.#reader.cancel();
  }
}

/** Opens /api/events as a stream over a socket; `readUntil` reads until the text so far matches. */
async function openStream(port: number) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(
    encoder.encode("GET /api/events HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n"),
  );
  let text = "";
  const buffer = new Uint8Array(4096);
  const readUntil = async (pattern: RegExp): Promise<string> => {
    while (!pattern.test(text)) {
      const n = await conn.read(buffer);
      if (n === null) throw new Error(`closed before ${pattern}: ${text}`);
      text += decoder.decode(buffer.subarray(0, n));
    }
    return text;
  };
  return { conn, readUntil };
}

function eventsWith(count: number, capacity = 100): EventLog {
  const events = new EventLog({ capacity, now: () => 0 });
  for (let i = 1; i <= count; i++) events.record("info", "test", `event ${i}`, { n: i });
  return events;
}

Deno.test("each daemon event is one SSE event: id = seq, event = level, data = the /api/events JSON", async () => {
  const events = eventsWith(2);
  events.record("warn", "mounts", "retrying", { device: "/dev/nbd1" });
  const sse = new SseReader(eventStream({ events, since: 1, clock: new ManualClock() }));
  assert.match((await sse.next()).comment ?? "", /ivbsnetd events/);
  const second = await sse.next();
  assert.equal(second.id, "2");
  assert.equal(second.event, "info");
  assert.deepEqual(JSON.parse(second.data!), events.since(1).events[0]);
  const third = await sse.next();
  assert.equal(third.event, "warn");
  assert.equal(JSON.parse(third.data!).device, "/dev/nbd1");
  // Then it waits; an event recorded now arrives.
  const next = sse.next();
  events.record("error", "ivbs", "proxy lost");
  assert.equal((await next).id, "4");
  await sse.cancel();
});

Deno.test("without a resume point the stream starts from now; a comment every 15 s keeps it alive", async () => {
  const clock = new ManualClock();
  const events = eventsWith(3);
  const sse = new SseReader(eventStream({ events, since: null, clock }));
  await sse.next(); // the opening comment
  const waiting = sse.next();
  await eventually("the stream waits on the clock", () => clock.pending > 0);
  clock.advance(HEARTBEAT_MS - 1);
  clock.advance(1);
  assert.equal((await waiting).comment, "keep-alive");
  const after = sse.next();
  events.record("info", "test", "new");
  assert.equal((await after).id, "4", "old events were not replayed");
  await sse.cancel();
});

Deno.test("a follower that fell behind the ring is told how many it missed, and holds no queue", async () => {
  const events = eventsWith(3, 5);
  const sse = new SseReader(eventStream({ events, since: 3, clock: new ManualClock() }));
  await sse.next();
  // It reads nothing while 20 events are recorded: nothing is queued for it.
  for (let i = 0; i < 20; i++) events.record("info", "test", `burst ${i}`);
  const missed = await sse.next();
  assert.equal(missed.event, "missed");
  assert.deepEqual(JSON.parse(missed.data!), { missed: 15 });
  const ids = [];
  for (let i = 0; i < 5; i++) ids.push((await sse.next()).id);
  assert.deepEqual(ids, ["19", "20", "21", "22", "23"]);
  await sse.cancel();
});

Deno.test("the route streams for Accept: text/event-stream and resumes after Last-Event-ID or ?since=", async () => {
  const events = eventsWith(5);
  const app = new Hono();
  registerOperatorRoutes(app, { events, renderLive: () => Promise.resolve("") });
  const open = async (path: string, headers: Record<string, string> = {}) => {
    const response = await app.request(path, {
      headers: { accept: "text/event-stream", ...headers },
    });
    assert.match(response.headers.get("content-type") ?? "", /^text\/event-stream/);
    const sse = new SseReader(response.body!);
    await sse.next();
    const first = await sse.next();
    await sse.cancel();
    return first.id;
  };
  assert.equal(await open("/api/events", { "last-event-id": "3" }), "4");
  assert.equal(await open("/api/events?since=1"), "2");
  assert.equal(await open("/api/events?since=0"), "1");
  const json = await app.request("/api/events?since=4");
  assert.equal((await json.json()).events.length, 1, "without the Accept header: the JSON page");
});

Deno.test("over a socket, events arrive as they are recorded; a follower that leaves is unsubscribed", async () => {
  const events = eventsWith(1);
  let cancelled = 0;
  const server = startHttpServer({
    hostname: "127.0.0.1",
    port: 0,
    log: quietLog,
    handler: () => {
      const response = eventStreamResponse({ events, since: null });
      const body = response.body!;
      // Count cancellations: the server must stop reading when the client goes.
      const counted = new ReadableStream<Uint8Array>({
        async pull(controller) {
          const { value, done } = await reader.read();
          if (done) controller.close();
          else controller.enqueue(value);
        },
        cancel() {
          cancelled++;
          return reader.cancel();
        },
      });
      const reader = body.getReader();
      return new Response(counted, { headers: response.headers });
    },
  });
  try {
    const { conn, readUntil } = await openStream(server.addr.port);
    const head = await readUntil(/ivbsnetd events/);
    assert.match(head, /transfer-encoding: chunked/);
    assert.match(head, /content-type: text\/event-stream/);
    events.record("warn", "ivbs", "failover started");
    await readUntil(/id: 2\nevent: warn\ndata: \{[^\n]*"failover started"/);
    conn.close();
    await eventually("the stream was cancelled", () => cancelled === 1);
    await eventually("the connection left the table", () => server.connections === 0);
  } finally {
    await server.close();
  }
});

Deno.test("ivbsnetd events --follow reads one event stream instead of polling", async () => {
  const events = eventsWith(2);
  const app = new Hono();
  registerOperatorRoutes(app, { events, renderLive: () => Promise.resolve("") });
  const requests: string[] = [];
  const server = startHttpServer({
    hostname: "127.0.0.1",
    port: 0,
    log: quietLog,
    handler: (request) => {
      requests.push(`${new URL(request.url).search} ${request.headers.get("accept")}`);
      return app.fetch(request);
    },
  });
  const abort = new AbortController();
  const lines: string[] = [];
  try {
    const following = eventsCommand(
      new ApiClient({ server: `127.0.0.1:${server.addr.port}` }),
      { print: (line) => lines.push(line) },
      { follow: true, since: 1, json: true, signal: abort.signal },
    );
    await eventually("the past event was printed", () => lines.length === 1);
    events.record("warn", "ivbs", "failover started");
    events.record("info", "ivbs", "failover done");
    await eventually("both new events were printed", () => lines.length === 3);
    abort.abort();
    await following;
    assert.deepEqual(lines.map((line) => JSON.parse(line).seq), [2, 3, 4]);
    assert.deepEqual(requests, ["?since=1 text/event-stream"], "one request, no polling");
  } finally {
    abort.abort();
    await server.close();
  }
});

Deno.test("a quiet stream outlives the request timeout: heartbeats on the clock keep it open", async () => {
  const clock = new ManualClock();
  const events = eventsWith(0);
  const server = startHttpServer({
    hostname: "127.0.0.1",
    port: 0,
    log: quietLog,
    clock,
    requestTimeoutMs: 10_000,
    idleTimeoutMs: 30_000,
    handler: () => eventStreamResponse({ events, since: null, clock }),
  });
  try {
    const { conn, readUntil } = await openStream(server.addr.port);
    await readUntil(/ivbsnetd events/);
    for (let beat = 1; beat <= 3; beat++) {
      await eventually("the stream waits for an event", () => clock.pending > 0);
      clock.advance(HEARTBEAT_MS); // longer than the request and half the idle timeout
      await readUntil(new RegExp(`(: keep-alive\\n\\n[^]*){${beat}}`));
    }
    events.record("info", "test", "still here");
    await readUntil(/"still here"/);
    conn.close();
    await eventually("the connection left the table", () => server.connections === 0);
  } finally {
    await server.close();
  }
});
