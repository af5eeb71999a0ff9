/**
 * The reconciler: desired state (the config's mounts and exports, and those an
 * operator added through the API) brought up and kept up. An item is tried at
 * once, then retried with capped exponential backoff and jitter, forever,
 * until it is up; an item that breaks on its own afterwards (its `lost`
 * promise settles) is reconciled again. Each change of an item's condition is
 * one log line (attaching, failing with a reason, ready, lost); retries with
 * the same reason are not: their count is in the item's status. Timers run on
 * a Clock, so tests move time instead of waiting for it.
 * @module
 */
import { type Clock, SYSTEM_CLOCK, type TimerHandle } from "../clock.ts";
import { errorCode, errorMessage } from "../error_info.ts";
import { backoffDelay } from "../ivbs/proxy_list.ts";
import { type Logger, logger } from "../log.ts";
import type { DesiredState, DesiredStatus } from "./desired_status.ts";

/** An item that is up, and how the reconciler learns that it broke. */
export interface UpItem {
  /** Settles, with why, when the item stops being up without being asked to. */
  lost: Promise<string>;
  /** Names learnt while coming up (the device the kernel picked), for later lines. */
  fields?: Readonly<Record<string, string | boolean>>;
}

/** One desired thing and how to bring it up and down. */
export interface DesiredItem {
  /** Stable identity over the item's fields (never a secret): equal keys, same item. */
  readonly key: string;
  /** "mount" or "export": the first word of its log lines. */
  readonly kind: string;
  /** Where it came from: the config (reload compares these) or an API call. */
  readonly origin: "config" | "api";
  /** Names the item in log lines and events: {device|export, image, user}. */
  readonly fields: Readonly<Record<string, string | boolean>>;
  /** Brings the item up; throws (with a `code`) when it cannot be brought up now. */
  up(): Promise<UpItem>;
  /** Takes the item down: it left the desired state. */
  down(): Promise<void>;
}

export interface ReconcilerOptions {
  backoff: { initialMs: number; maxMs: number };
  clock?: Clock;
  log?: Logger;
  /** Wall-clock ms for `nextRetryAt` (default Date.now). */
  wallNow?: () => number;
  /** Jitter source (default Math.random). */
  random?: () => number;
  /** Called after any item changed state (for systemd's STATUS=). */
  onChange?: () => void;
}

/** An item's place in the reconciler, as views show it. */
export interface ReconciledItem<I extends DesiredItem = DesiredItem> {
  item: I;
  status: DesiredStatus;
  /** Names of the item now (with the device once known). */
  fields: Readonly<Record<string, string | boolean>>;
  /** The stable code of the last failure, while failing. */
  code?: string;
}

interface Entry<I extends DesiredItem> {
  item: I;
  fields: Readonly<Record<string, string | boolean>>;
  state: DesiredState;
  code?: string;
  reason?: string;
  /** Attempts since the item was last ready (or added). */
  attempts: number;
  /** Consecutive failures: the backoff's round. */
  failures: number;
  timer?: TimerHandle;
  /** Clock time of the next attempt, while failing. */
  retryAt?: number;
  readySince?: number;
  /** Removed from the desired state: no more attempts. */
  removed: boolean;
  /** The attempt in flight, if any. */
  attempt: Promise<void> | null;
  up: UpItem | null;
  /** Resolves once the first attempt has finished either way. */
  tried: Promise<void>;
  markTried: () => void;
}

/** Longest `reason` kept: short, for one line on a status page. */
const MAX_REASON = 240;

/** The reason shown for a failure: its message, one line, bounded. */
export function shortReason(error: unknown): string {
  const text = errorMessage(error).replace(/\s+/g, " ").trim();
  return text.length > MAX_REASON ? `${text.slice(0, MAX_REASON - 1)}…` : text;
}

export class Reconciler<I extends DesiredItem = DesiredItem> {
  readonly #entries = new Map<string, Entry<I>>();
  readonly #backoff: { initialMs: number; maxMs: number };
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #wallNow: () => number;
  readonly #random: () => number;
  readonly #onChange: () => void;
  #started = false;
  #stopped = false;

  constructor(options: ReconcilerOptions) {
    this.#backoff = options.backoff;
    this.#clock = options.clock ?? SYSTEM_CLOCK;
    this.#log = options.log ?? logger("reconcile");
    this.#wallNow = options.wallNow ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#onChange = options.onChange ?? (() => {});
  }

  /** Starts bringing items up (items added before wait as "pending"). */
  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    for (const entry of this.#entries.values()) void this.#attempt(entry);
  }

  /**
   * No attempt after this; timers are cancelled (shutdown). Items stay as they
   * are, and count as tried: a shutdown before `start` (SIGTERM while
   * `serve` still takes devices over) must not leave `firstPass` waiting.
   */
  stop(): void {
    this.#stopped = true;
    for (const entry of this.#entries.values()) {
      this.#clock.clearTimeout(entry.timer);
      entry.markTried();
    }
  }

  /** Makes `item` desired; false when an item with its key already is. */
  add(item: I): boolean {
    if (this.#entries.has(item.key) || this.#stopped) return false;
    const entry = this.#newEntry(item);
    this.#entries.set(item.key, entry);
    this.#onChange();
    if (this.#started) void this.#attempt(entry);
    return true;
  }

  /** Makes `item` desired when it is already up (an API call that succeeded). */
  adopt(item: I, up: UpItem): boolean {
    if (this.#entries.has(item.key) || this.#stopped) return false;
    const entry = this.#newEntry(item);
    entry.markTried();
    this.#entries.set(item.key, entry);
    this.#ready(entry, up);
    return true;
  }

  #newEntry(item: I): Entry<I> {
    let markTried!: () => void;
    const tried = new Promise<void>((resolve) => markTried = resolve);
    return {
      item,
      fields: item.fields,
      state: "pending",
      attempts: 0,
      failures: 0,
      removed: false,
      attempt: null,
      up: null,
      tried,
      markTried,
    };
  }

  /**
   * Takes `key` out of the desired state: no more attempts, and an item that
   * is up (or comes up from the attempt in flight) is taken down. False for an
   * unknown key.
   */
  async remove(key: string): Promise<boolean> {
    const entry = this.#forget(key);
    if (!entry) return false;
    await entry.attempt;
    if (entry.up) {
      entry.up = null;
      await entry.item.down();
    }
    return true;
  }

  /** Takes `key` out of the desired state without taking it down (the operator already did). */
  forget(key: string): boolean {
    return this.#forget(key) !== undefined;
  }

  #forget(key: string): Entry<I> | undefined {
    const entry = this.#entries.get(key);
    if (!entry) return undefined;
    entry.removed = true;
    this.#clock.clearTimeout(entry.timer);
    this.#entries.delete(key);
    entry.markTried();
    this.#log.info(`${entry.item.kind} no longer desired`, { ...entry.fields });
    this.#onChange();
    return entry;
  }

  /** A failing item is tried again now instead of after its backoff (a reload asked for it). */
  retryNow(key: string): void {
    const entry = this.#entries.get(key);
    if (!entry || entry.state !== "failing" || entry.attempt || this.#stopped) return;
    this.#clock.clearTimeout(entry.timer);
    void this.#attempt(entry);
  }

  /** Resolves once every item desired now has been tried once (READY=1 waits for it). */
  async firstPass(): Promise<void> {
    await Promise.all([...this.#entries.values()].map((e) => e.tried));
  }

  get(key: string): ReconciledItem<I> | undefined {
    const entry = this.#entries.get(key);
    return entry && this.#view(entry);
  }

  /** Every desired item, in the order they were added. */
  list(): ReconciledItem<I>[] {
    return [...this.#entries.values()].map((entry) => this.#view(entry));
  }

  #view(entry: Entry<I>): ReconciledItem<I> {
    const status: DesiredStatus = { state: entry.state, attempts: entry.attempts };
    if (entry.reason !== undefined) status.reason = entry.reason;
    if (entry.retryAt !== undefined && entry.state === "failing") {
      const inMs = Math.max(0, entry.retryAt - this.#clock.now());
      status.nextRetryAt = new Date(this.#wallNow() + inMs).toISOString();
    }
    return { item: entry.item, status, fields: entry.fields, code: entry.code };
  }

  async #attempt(entry: Entry<I>): Promise<void> {
    if (this.#stopped || entry.removed || entry.attempt) return;
    let finish!: () => void;
    entry.attempt = new Promise<void>((resolve) => finish = resolve);
    entry.timer = undefined;
    entry.attempts++;
    // A retry while failing stays "failing" (its reason still holds) and is not a line.
    if (entry.state !== "failing") {
      entry.state = "attaching";
      this.#log.info(`${entry.item.kind} attaching`, { ...entry.fields });
      this.#onChange();
    }
    try {
      const up = await entry.item.up();
      if (entry.removed || this.#stopped) {
        // Removed meanwhile: remove() takes it down once this attempt is over.
        entry.up = up;
        return;
      }
      this.#ready(entry, up);
    } catch (error) {
      if (!entry.removed && !this.#stopped) this.#failed(entry, error);
    } finally {
      entry.markTried();
      entry.attempt = null;
      finish();
    }
  }

  #ready(entry: Entry<I>, up: UpItem): void {
    entry.up = up;
    entry.fields = { ...entry.item.fields, ...up.fields };
    entry.state = "ready";
    entry.code = undefined;
    entry.reason = undefined;
    entry.retryAt = undefined;
    entry.readySince = this.#clock.now();
    this.#log.info(`${entry.item.kind} ready`, { ...entry.fields, attempts: entry.attempts });
    this.#onChange();
    up.lost.then((why) => this.#lost(entry, up, why));
  }

  #failed(entry: Entry<I>, error: unknown): void {
    const code = errorCode(error) ?? "FAILED";
    const reason = shortReason(error);
    const changed = entry.state !== "failing" || entry.code !== code;
    const delay = this.#retryLater(entry, code, reason);
    if (changed) {
      this.#log.warn(`${entry.item.kind} failing; retrying with backoff`, {
        ...entry.fields,
        code,
        reason,
        attempts: entry.attempts,
        retryInMs: Math.round(delay),
      });
    }
  }

  /** Failing with `reason`: the next attempt after the backoff's delay for this round. */
  #retryLater(entry: Entry<I>, code: string, reason: string): number {
    entry.failures++;
    const delay = backoffDelay(this.#backoff, entry.failures, this.#random);
    entry.state = "failing";
    entry.code = code;
    entry.reason = reason;
    entry.retryAt = this.#clock.now() + delay;
    entry.timer = this.#clock.setTimeout(() => void this.#attempt(entry), delay);
    this.#onChange();
    return delay;
  }

  /** A ready item broke on its own: reconcile it again, paced like a failure. */
  #lost(entry: Entry<I>, up: UpItem, why: string): void {
    if (entry.removed || this.#stopped || entry.up !== up) return;
    entry.up = null;
    // Stable for a while (the backoff's cap): start over; flapping keeps backing off.
    const stableFor = this.#clock.now() - (entry.readySince ?? 0);
    if (stableFor >= this.#backoff.maxMs) entry.failures = 0;
    entry.attempts = 0;
    const delay = this.#retryLater(entry, "LOST", shortReason(why));
    this.#log.warn(`${entry.item.kind} lost; reconciling`, {
      ...entry.fields,
      reason: entry.reason,
      retryInMs: Math.round(delay),
    });
  }

  /** Counts for systemd's STATUS= and views: ready items, and the others' reasons. */
  summary(): { ready: number; waiting: number; reasons: string[] } {
    let ready = 0;
    const reasons = new Set<string>();
    for (const entry of this.#entries.values()) {
      if (entry.state === "ready") ready++;
      else if (entry.code !== undefined) reasons.add(describeCode(entry.code));
    }
    return { ready, waiting: this.#entries.size - ready, reasons: [...reasons] };
  }
}

/** What a failure code means to an operator, for a one-line status. */
export function describeCode(code: string): string {
  return CODE_WORDS[code] ?? code;
}

const CODE_WORDS: Record<string, string> = {
  NO_PROXY: "IVBS unreachable",
  LOGIN_DENIED: "login refused",
  ACCESS_DENIED: "access denied",
  IMAGE_NOT_FOUND: "image missing",
  NO_MODULE: "no nbd module",
  NO_FREE_DEVICE: "no free nbd device",
  BUSY: "device busy",
  LISTEN_FAILED: "cannot listen for NBD clients",
  LOST: "lost",
};

/** systemd's STATUS= line: "2 ready, 1 waiting: IVBS unreachable". */
export function statusLine(summary: { ready: number; waiting: number; reasons: string[] }): string {
  if (summary.ready === 0 && summary.waiting === 0) return "nothing configured";
  const head = `${summary.ready} ready`;
  if (summary.waiting === 0) return head;
  const why = summary.reasons.length > 0 ? `: ${summary.reasons.join(", ")}` : "";
  return `${head}, ${summary.waiting} waiting${why}`;
}
