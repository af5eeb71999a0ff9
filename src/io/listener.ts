/**
 * One accept loop for every server of the daemon (the HTTP API, NBD exports,
 * the IVBS test proxy): a cap that is a promise, eviction of only what has
 * been silent long enough, and descriptor shortages that back off without
 * lowering the cap for good.
 *
 * - At most `maxConnections` connections are started. At the cap the loop
 *   stops accepting (newcomers wait in the kernel's backlog, costing no
 *   descriptor) until a slot frees or a connection has been silent for
 *   `minIdleMs`; with `whenFull: "refuse"` a newcomer is accepted and turned
 *   away at once instead (NBD clients should not hang in a backlog).
 * - Only a connection that is not busy (its owner marks a request in
 *   progress or an answer being written) and has been silent for `minIdleMs`
 *   is evicted, the longest-silent first. A newcomer accepted while every
 *   slot became busy gets the short refusal: the count never passes the cap.
 * - An accept failure (EMFILE, ENFILE) closes one evictable connection to
 *   give a descriptor back, backs off (doubling up to a second) and retries;
 *   the cap itself never changes, so the full cap is there once descriptors are.
 * - Every timer runs on the Clock, so all of this is tested without waiting.
 * @module
 */
import { type Clock, SYSTEM_CLOCK, type TimerHandle } from "../clock.ts";
import { errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";

/** What the loop needs of an accepted connection. */
export interface Closable {
  close(): void;
}

/** A listening socket (Deno.Listener fits). */
export interface AcceptSource<C extends Closable> {
  accept(): Promise<C>;
  close(): void;
}

/** One started connection as its owner sees it. */
export interface Slot {
  readonly id: number;
  /** Something was read or written: the connection is not silent from now. */
  touch(): void;
  /** Busy connections (request in progress, answer being written) are never evicted. */
  setBusy(busy: boolean): void;
  /** True once the listener closed the connection (eviction, shutdown). */
  readonly cut: boolean;
}

export interface ListenerOptions<C extends Closable> {
  /** The sockets; their connections share one cap. */
  sources: AcceptSource<C>[];
  /** Serves one connection; the slot is released when it settles. */
  serve(conn: C, slot: Slot): Promise<void>;
  /** Connections started at once. */
  maxConnections: number;
  /** Silence (no read or write, not busy) after which a connection may be evicted. */
  minIdleMs: number;
  /** At the cap: "wait" leaves newcomers in the backlog; "refuse" turns them away at once. */
  whenFull?: "wait" | "refuse";
  /** The short refusal for a newcomer beyond the cap (default: close it). */
  refuse?(conn: C): void | Promise<void>;
  /** For log lines: "HTTP connection", "NBD client". */
  noun: string;
  log: Logger;
  clock?: Clock;
}

/** First pause after an accept failure; it doubles up to MAX_BACKOFF_MS. */
export const FIRST_BACKOFF_MS = 50;
export const MAX_BACKOFF_MS = 1_000;
/** Repeated warnings of one kind are summed into one line per this period. */
const LOG_PERIOD_MS = 60_000;

interface Entry<C extends Closable> extends Slot {
  readonly conn: C;
  lastActive: number;
  busy: boolean;
  cut: boolean;
  task?: Promise<void>;
}

export class Listener<C extends Closable> {
  /** Resolves when every accept loop has ended (after stopAccepting or close). */
  readonly finished: Promise<void>;
  readonly #options: ListenerOptions<C>;
  readonly #clock: Clock;
  readonly #entries = new Map<number, Entry<C>>();
  readonly #quiet = new Map<string, { count: number; loggedAt: number }>();
  #nextId = 1;
  #stopping = false;
  /** Wakes the loops waiting at the cap (a slot freed, a timer, shutdown). */
  #wake: PromiseWithResolvers<void> = Promise.withResolvers();

  constructor(options: ListenerOptions<C>) {
    this.#options = { ...options, maxConnections: Math.max(1, options.maxConnections) };
    this.#clock = options.clock ?? SYSTEM_CLOCK;
    this.finished = Promise.all(options.sources.map((source) => this.#acceptLoop(source)))
      .then(() => {});
  }

  /** Connections holding a slot now (cut ones have given theirs up). */
  get size(): number {
    let count = 0;
    for (const entry of this.#entries.values()) if (!entry.cut) count++;
    return count;
  }

  get maxConnections(): number {
    return this.#options.maxConnections;
  }

  /** Closes the sockets; resolves when the accept loops have ended. Connections stay. */
  stopAccepting(): Promise<void> {
    if (!this.#stopping) {
      this.#stopping = true;
      for (const source of this.#options.sources) closeQuietly(source);
      this.#wakeUp();
    }
    return this.finished;
  }

  /** Closes the connections `which` selects (all by default); their tasks still run out. */
  cut(which: (slot: Slot) => boolean = () => true): void {
    for (const entry of this.#entries.values()) if (which(entry)) this.#cut(entry);
  }

  /** Resolves when every connection's serve task has settled. */
  async settled(): Promise<void> {
    while (this.#entries.size > 0) {
      await Promise.all([...this.#entries.values()].map((entry) => entry.task));
    }
  }

  /** Stops accepting, cuts every connection and waits for their tasks. */
  async close(): Promise<void> {
    await this.stopAccepting();
    this.cut();
    await this.settled();
  }

  async #acceptLoop(source: AcceptSource<C>): Promise<void> {
    const { maxConnections, whenFull = "wait" } = this.#options;
    let backoffMs = FIRST_BACKOFF_MS;
    while (!this.#stopping) {
      if (whenFull === "wait" && this.size >= maxConnections) {
        const evictableAt = this.#nextEvictableAt();
        if (evictableAt === null || evictableAt > this.#clock.now()) {
          await this.#sleep(evictableAt === null ? null : evictableAt - this.#clock.now());
          continue;
        }
      }
      let conn: C;
      try {
        conn = await source.accept();
      } catch (error) {
        if (this.#stopping || error instanceof Deno.errors.BadResource) return;
        this.#rarely("error", `accepting an ${this.#options.noun} failed; backing off`, {
          error: errorMessage(error),
          connections: this.size,
          maxConnections,
        });
        // Out of descriptors: give one back, pause, retry. The cap stays as it is.
        this.#evictOne();
        await this.#sleep(backoffMs);
        backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
        continue;
      }
      backoffMs = FIRST_BACKOFF_MS;
      if (this.#stopping) {
        closeQuietly(conn);
        return;
      }
      if (this.size >= maxConnections && !this.#evictOne()) {
        this.#rarely("warn", `${this.#options.noun} refused: too many clients`, {
          max: maxConnections,
        });
        this.#refuse(conn);
        continue;
      }
      this.#start(conn);
    }
  }

  #start(conn: C): void {
    const now = this.#clock.now();
    const entry: Entry<C> = {
      id: this.#nextId++,
      conn,
      lastActive: now,
      busy: false,
      cut: false,
      touch: () => entry.lastActive = this.#clock.now(),
      setBusy: (busy) => {
        entry.busy = busy;
        entry.lastActive = this.#clock.now();
        if (!busy) this.#wakeUp(); // it may be evictable later: the loops recompute
      },
    };
    this.#entries.set(entry.id, entry);
    let served: Promise<void>;
    try {
      served = this.#options.serve(conn, entry);
    } catch (error) {
      served = Promise.reject(error); // a synchronous throw must not end the accept loop
    }
    entry.task = served
      .catch((error) => {
        this.#options.log.warn(`${this.#options.noun} failed`, { error: errorMessage(error) });
      })
      .finally(() => {
        this.#entries.delete(entry.id);
        if (!entry.cut) closeQuietly(conn);
        entry.cut = true;
        this.#wakeUp();
      });
  }

  #refuse(conn: C): void {
    const refuse = this.#options.refuse;
    if (!refuse) return closeQuietly(conn);
    // Bounded by the owner (a short write); never holds a slot.
    Promise.resolve().then(() => refuse(conn)).catch(() => {}).finally(() => closeQuietly(conn));
  }

  /** When the first connection may become evictable, if it stays silent; null: none can. */
  #nextEvictableAt(): number | null {
    let at: number | null = null;
    for (const entry of this.#entries.values()) {
      if (entry.cut || entry.busy) continue;
      const when = entry.lastActive + this.#options.minIdleMs;
      if (at === null || when < at) at = when;
    }
    return at === null || !Number.isFinite(at) ? null : at;
  }

  /** Evicts the longest-silent connection that qualifies; false when none does. */
  #evictOne(): boolean {
    const now = this.#clock.now();
    let victim: Entry<C> | null = null;
    for (const entry of this.#entries.values()) {
      if (entry.cut || entry.busy || now - entry.lastActive < this.#options.minIdleMs) continue;
      if (!victim || entry.lastActive < victim.lastActive) victim = entry;
    }
    if (!victim) return false;
    this.#options.log.info(
      `${this.#options.noun} idle too long closed to make room for a new one`,
      {
        connection: victim.id,
        idleSeconds: Math.round((now - victim.lastActive) / 1000),
      },
    );
    this.#cut(victim);
    return true;
  }

  #cut(entry: Entry<C>): void {
    if (entry.cut) return;
    entry.cut = true;
    closeQuietly(entry.conn);
    this.#wakeUp();
  }

  /** Waits for a wake-up, or `ms` on the clock (null: no timer). */
  async #sleep(ms: number | null): Promise<void> {
    const wake = this.#wake.promise;
    let timer: TimerHandle | undefined;
    const timeout = ms === null ? null : new Promise<void>((resolve) => {
      timer = this.#clock.setTimeout(resolve, Math.max(0, ms));
    });
    await (timeout ? Promise.race([wake, timeout]) : wake);
    this.#clock.clearTimeout(timer);
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = Promise.withResolvers();
    wake.resolve();
  }

  /** Logs the first of a kind, then at most one line a period with how many followed. */
  #rarely(level: "warn" | "error", message: string, fields: Record<string, unknown>): void {
    const now = this.#clock.now();
    const entry = this.#quiet.get(message) ?? { count: 0, loggedAt: -Infinity };
    entry.count++;
    this.#quiet.set(message, entry);
    if (now - entry.loggedAt < LOG_PERIOD_MS) return;
    this.#options.log[level](message, { ...fields, times: entry.count });
    entry.count = 0;
    entry.loggedAt = now;
  }
}

export function closeQuietly(resource: Closable): void {
  try {
    resource.close();
  } catch {
    // Already closed.
  }
}
