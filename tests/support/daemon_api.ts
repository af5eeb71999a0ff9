/**
 * A test's view of a running daemon's API: a free port to name in a config
 * before anything listens on it, JSON reads, and the shape of an event.
 */
import assert from "node:assert/strict";

/** One `GET /api/events` entry, as much as the tests read. */
export interface EventView {
  time: string;
  level: string;
  component: string;
  message: string;
  device?: string;
  export?: string;
  fields: Record<string, unknown>;
}

/** A loopback port nothing listens on now (for a server started later). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** GET `url`, which must answer 200, as JSON. */
export async function getJson<T>(url: string): Promise<T> {
  const response = await fetch(url);
  assert.equal(response.status, 200, url);
  return await response.json() as T;
}
