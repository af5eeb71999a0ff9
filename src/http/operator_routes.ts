/**
 * The operator's routes: `GET /api/proxies` (every IVBS proxy known and its
 * health), `GET /api/events?since=SEQ&limit=N` (the recent events ring, oldest
 * first after the cursor, so a follower polls with the `next` it was given;
 * with `Accept: text/event-stream` the same events as Server-Sent Events,
 * resumed after `?since=` or `Last-Event-ID`, else from now: event_stream.ts) and
 * `GET /status/live` (the changing part of the status page, for its refresh).
 * @module
 */
import type { Hono } from "hono";
import { z } from "zod";
import type { EventLog } from "../daemon/events.ts";
import { MAX_EVENT_PAGE } from "../daemon/events.ts";
import type { ProxyRegistry } from "../daemon/proxy_registry.ts";
import { validate } from "./validation.ts";
import { eventStreamResponse, resumePoint } from "./event_stream.ts";
import type { Clock } from "../clock.ts";

export interface OperatorRouteOptions {
  events?: EventLog;
  proxies?: ProxyRegistry;
  /** Timers of the event streams' heartbeats (tests pass a manual clock). */
  clock?: Clock;
  /** The live part of the status page, rendered now. */
  renderLive(): Promise<string>;
}

const Count = (name: string, max: number) =>
  z.string().regex(/^\d{1,15}$/, `${name} must be a whole number`)
    .transform(Number)
    .pipe(z.number().int().min(0).max(max, `${name} must be at most ${max}`));

const EventsQuerySchema = z.strictObject({
  since: Count("since", Number.MAX_SAFE_INTEGER).optional(),
  limit: Count("limit", MAX_EVENT_PAGE).optional(),
});

export function registerOperatorRoutes(app: Hono, options: OperatorRouteOptions): void {
  app.get("/api/proxies", (c) => c.json({ proxies: options.proxies?.list() ?? [] }));

  app.get("/api/events", (c) => {
    const query = validate(EventsQuerySchema, c.req.query(), "query");
    const events = options.events;
    if (events && /\btext\/event-stream\b/.test(c.req.header("accept") ?? "")) {
      const since = resumePoint(query.since, c.req.header("last-event-id"));
      return eventStreamResponse({ events, since, clock: options.clock });
    }
    if (!events) return c.json({ events: [], next: query.since ?? 0, missed: 0, capacity: 0 });
    const page = events.since(query.since ?? 0, query.limit ?? MAX_EVENT_PAGE);
    return c.json({ ...page, capacity: events.capacity });
  });

  app.get("/status/live", async (c) => {
    c.header("Cache-Control", "no-store");
    return c.html(await options.renderLive());
  });
}
