/**
 * The daemon's events as Server-Sent Events (`GET /api/events` with
 * `Accept: text/event-stream`): one SSE event per daemon event,
 *
 *     id: <seq>
 *     event: <level>
 *     data: <the event's JSON, as in /api/events>
 *
 * and `event: missed` with `data: {"missed": N}` when the ring dropped events
 * this follower had not read yet. A comment line every HEARTBEAT_MS shows
 * proxies and clients the stream is alive (and finds a client that left).
 *
 * The stream is pulled: it reads the event ring with its own cursor only when
 * the server has written the previous chunk, so a follower that reads slowly
 * holds no queue; the ring is the only buffer, and `missed` tells what fell out.
 * @module
 */
import { type Clock, SYSTEM_CLOCK, type TimerHandle } from "../clock.ts";
import type { EventLog } from "../daemon/events.ts";

/** Between comment lines when no event comes. */
export const HEARTBEAT_MS = 15_000;
/** Events per chunk written. */
const BATCH = 100;
/** How long a browser's EventSource waits before reconnecting. */
const RETRY_MS = 2_000;

export interface EventStreamOptions {
  events: EventLog;
  /** Send events with `seq > since` (null: only those recorded from now on). */
  since: number | null;
  clock?: Clock;
  heartbeatMs?: number;
}

const encoder = new TextEncoder();

/** The SSE byte stream for one follower. */
export function eventStream(options: EventStreamOptions): ReadableStream<Uint8Array> {
  const { events } = options;
  const clock = options.clock ?? SYSTEM_CLOCK;
  const heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
  let cursor = options.since ?? events.lastSeq;
  let stop: (() => void) | null = null;
  let cancelled = false;

  /** Resolves true on a new event, false when the heartbeat is due (or the stream is cancelled). */
  const nextEventOrHeartbeat = () =>
    new Promise<boolean>((resolve) => {
      let timer: TimerHandle | undefined = undefined;
      const finish = (event: boolean) => {
        unsubscribe();
        clock.clearTimeout(timer);
        stop = null;
        resolve(event);
      };
      const unsubscribe = events.subscribe(() => finish(true));
      timer = clock.setTimeout(() => finish(false), heartbeatMs);
      stop = () => finish(false);
    });

  return new ReadableStream<Uint8Array>({
    start(controller) {
      // The head goes out with the first chunk: send one at once.
      controller.enqueue(encoder.encode(`: ivbsnetd events\nretry: ${RETRY_MS}\n\n`));
    },
    async pull(controller) {
      for (;;) {
        if (cancelled) return;
        const page = events.since(cursor, BATCH);
        let text = "";
        if (page.missed > 0 && cursor > 0) {
          text += `event: missed\ndata: ${JSON.stringify({ missed: page.missed })}\n\n`;
        }
        for (const event of page.events) {
          text += `id: ${event.seq}\nevent: ${event.level}\ndata: ${JSON.stringify(event)}\n\n`;
        }
        cursor = Math.max(cursor, page.next);
        if (text) return controller.enqueue(encoder.encode(text));
        if (!await nextEventOrHeartbeat()) {
          if (!cancelled) controller.enqueue(encoder.encode(": keep-alive\n\n"));
          return;
        }
      }
    },
    cancel() {
      cancelled = true;
      stop?.();
    },
  }, { highWaterMark: 0 });
}

/** The `since` a follower asked for: `?since=`, else `Last-Event-ID`, else null (from now). */
export function resumePoint(
  query: number | undefined,
  lastEventId: string | undefined,
): number | null {
  if (query !== undefined) return query;
  if (lastEventId !== undefined && /^\d{1,15}$/.test(lastEventId)) return Number(lastEventId);
  return null;
}

export function eventStreamResponse(options: EventStreamOptions): Response {
  return new Response(eventStream(options), {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-store",
    },
  });
}
