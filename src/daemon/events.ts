/**
 * The daemon's recent events: a bounded in-memory ring of what an operator
 * asks about during an incident (mounts and unmounts, failovers, retries, I/O
 * errors, export clients, config problems). It is fed by the log: a logger
 * made with `EventLog.wrap` prints its line as before and records the same
 * line here, so the log and `GET /api/events` are one source and cannot drift.
 * Debug lines are printed only. Fields are redacted like log lines and every
 * value is made JSON-ready (an Error becomes its message).
 *
 * @example Two lines through a wrapped logger, read back after a cursor
 * ```ts
 * import { EventLog } from "./events.ts";
 * const events = new EventLog({ capacity: 100 });
 * const quiet = { debug() {}, info() {}, warn() {}, error() {} };
 * const log = events.wrap(quiet, "mounts", { device: "/dev/nbd0" });
 * log.info("mounted", { image: "disk" });
 * log.warn("IVBS request retried", { password: "x", attempt: 1 });
 * const [second] = events.since(1).events;
 * if (second.device !== "/dev/nbd0" || second.fields.password !== "[redacted]") {
 *   throw new Error(JSON.stringify(second));
 * }
 * ```
 * @module
 */
import { type Logger, type LogLevel, plain, redact } from "../log.ts";

export interface DaemonEvent {
  /** 1, 2, 3… in the order recorded; the cursor of `GET /api/events?since=`. */
  seq: number;
  /** ISO 8601, wall clock. */
  time: string;
  level: Exclude<LogLevel, "debug">;
  /** The logger's component ("mounts", "ivbs", "export", "config"…). */
  component: string;
  message: string;
  /** The mount's device, when the event concerns one. */
  device?: string;
  /** The NBD export's name, when the event concerns one. */
  export?: string;
  /** The rest of the log line's fields, JSON-ready and redacted. */
  fields: Record<string, unknown>;
}

export interface EventPage {
  events: DaemonEvent[];
  /** Pass as `since` to get only what came after this page. */
  next: number;
  /** Events older than the ring holds were dropped (a follower fell behind). */
  missed: number;
}

export interface EventLogOptions {
  /** Events kept; older ones are dropped (default 500). */
  capacity?: number;
  /** Injected for tests; default Date.now. */
  now?: () => number;
}

export const DEFAULT_EVENT_CAPACITY = 500;
/** Most events one `since` call returns. */
export const MAX_EVENT_PAGE = 500;

export class EventLog {
  readonly capacity: number;
  readonly #now: () => number;
  /** Oldest first; at most `capacity` entries. */
  readonly #ring: (DaemonEvent | undefined)[];
  #start = 0;
  #count = 0;
  #lastSeq = 0;
  /** Woken after each record (followers then read the ring: no queue per follower). */
  readonly #listeners = new Set<() => void>();

  constructor(options: EventLogOptions = {}) {
    this.capacity = Math.max(1, Math.floor(options.capacity ?? DEFAULT_EVENT_CAPACITY));
    this.#now = options.now ?? Date.now;
    this.#ring = new Array(this.capacity);
  }

  /** Sequence number of the newest event (0 before the first). */
  get lastSeq(): number {
    return this.#lastSeq;
  }

  get size(): number {
    return this.#count;
  }

  /** Records one event (normally through a wrapped logger). */
  record(
    level: DaemonEvent["level"],
    component: string,
    message: string,
    fields: object = {},
  ): DaemonEvent {
    const rest = plain(redact(fields)) as Record<string, unknown>;
    for (const [key, value] of Object.entries(rest)) if (value === undefined) delete rest[key];
    // The mount or export it concerns is lifted out of the fields, for views to show.
    const where: { device?: string; export?: string } = {};
    if (typeof rest.device === "string") {
      where.device = rest.device;
      delete rest.device;
    }
    if (typeof rest.export === "string") {
      where.export = rest.export;
      delete rest.export;
    }
    const event: DaemonEvent = {
      seq: ++this.#lastSeq,
      time: new Date(this.#now()).toISOString(),
      level,
      component,
      message,
      ...where,
      fields: rest,
    };
    const at = (this.#start + this.#count) % this.capacity;
    this.#ring[at] = event;
    if (this.#count < this.capacity) this.#count++;
    else this.#start = (this.#start + 1) % this.capacity;
    for (const listener of [...this.#listeners]) listener();
    return event;
  }

  /**
   * Calls `listener` after every recorded event until the returned function is
   * called. It carries no event: a follower reads `since(cursor)`, so a slow
   * one costs no memory and learns from `missed` what the ring dropped.
   */
  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Events with `seq > since`, oldest first, at most `limit`. */
  since(since = 0, limit = MAX_EVENT_PAGE): EventPage {
    const oldest = this.#lastSeq - this.#count + 1;
    const from = Math.max(since + 1, oldest);
    const take = Math.max(0, Math.min(limit, this.#lastSeq - from + 1));
    const events: DaemonEvent[] = [];
    for (let seq = from; seq < from + take; seq++) {
      events.push(this.#ring[(this.#start + seq - oldest) % this.capacity]!);
    }
    return {
      events,
      next: events.at(-1)?.seq ?? Math.max(since, from - 1),
      missed: Math.max(0, oldest - since - 1),
    };
  }

  /** The newest `count` events, newest first (for the status page). */
  newest(count: number): DaemonEvent[] {
    const out: DaemonEvent[] = [];
    for (let i = this.#count - 1; i >= 0 && out.length < count; i--) {
      out.push(this.#ring[(this.#start + i) % this.capacity]!);
    }
    return out;
  }

  /**
   * A logger that prints through `base` and records info, warn and error lines
   * here, with `context` (e.g. `{device}`) added to every line's fields.
   */
  wrap(base: Logger, component: string, context: object = {}): Logger {
    const withContext = (fields?: object) => ({ ...context, ...fields });
    const both = (level: DaemonEvent["level"]) => (message: string, fields?: object) => {
      base[level](message, withContext(fields));
      this.record(level, component, message, withContext(fields));
    };
    return {
      debug: (message, fields) => base.debug(message, withContext(fields)),
      info: both("info"),
      warn: both("warn"),
      error: both("error"),
    };
  }
}
