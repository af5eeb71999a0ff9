/**
 * The session's pacing of requests that cannot be answered yet: status
 * retries (counted per request, logged with their cause on every attempt,
 * backed off, given up after maxRetries with EIO), one LOGIN at a time per
 * connection for NOT_LOGGEDIN, and the I/O timeout (one timer for the oldest
 * request; due requests fail with EIO while the session keeps reconnecting).
 * The session decides what each reply means; this module holds the timers.
 * @module
 */
import { BackendError } from "../block/backend.ts";
import type { Clock, TimerHandle } from "../clock.ts";
import { errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";
import type { IvbsConnection } from "./connection.ts";
import { type Backoff, backoffDelay } from "./proxy_list.ts";
import type { Chunk, RequestTable } from "./request_table.ts";
import type { FailoverCause, IvbsSessionEvent } from "./session_events.ts";
import { statusName } from "./wire.ts";

export interface SessionTimersHost {
  image: string;
  clock: Clock;
  backoff: Backoff;
  maxRetries: number;
  /** 0 = requests never time out. */
  ioTimeoutMs: number;
  requests: RequestTable;
  login(conn: IvbsConnection): Promise<void>;
  connectionLost(conn: IvbsConnection, reason: string, cause: FailoverCause): void;
  finish(chunk: Chunk, error?: Error): void;
  emit(event: IvbsSessionEvent): void;
  /** One more retry, for the session's counters. */
  countRetry(): void;
  /** The proxy in use, for the timeout log line. */
  proxy(): string | null;
  log: Logger;
}

export class SessionTimers {
  readonly #host: SessionTimersHost;
  readonly #retryTimers = new Set<TimerHandle>();
  readonly #relogins = new WeakMap<IvbsConnection, Promise<void>>();
  #ioTimer: TimerHandle | undefined;

  constructor(host: SessionTimersHost) {
    this.#host = host;
  }

  /** Counts, logs and reports one retry; false (and the chunk failed) past maxRetries. */
  countRetry(chunk: Chunk, conn: IvbsConnection, status: number): boolean {
    const host = this.#host;
    chunk.attempts++;
    const name = statusName(status);
    if (chunk.attempts > host.maxRetries) {
      host.finish(
        chunk,
        new BackendError(
          `IVBS ${chunk.kind} ${chunk.offset}+${chunk.length} of image "${host.image}" still ` +
            `${name} after ${host.maxRetries} retries (proxy ${conn.label})`,
          "EIO",
        ),
      );
      return false;
    }
    host.countRetry();
    host.log.warn("IVBS request retried", {
      image: host.image,
      op: chunk.kind,
      offset: chunk.offset,
      length: chunk.length,
      status: name,
      attempt: chunk.attempts,
      proxy: conn.label,
    });
    host.emit({ type: "retry", op: chunk.kind, status: name, attempt: chunk.attempts });
    return true;
  }

  /** Runs `again` after the backoff for the chunk's attempt count. */
  later(chunk: Chunk, again: () => void): void {
    const timer = this.#host.clock.setTimeout(() => {
      this.#retryTimers.delete(timer);
      again();
    }, backoffDelay(this.#host.backoff, chunk.attempts));
    this.#retryTimers.add(timer);
  }

  /** One LOGIN per connection at a time; a refusal ends the connection (→ failover). */
  relogin(conn: IvbsConnection): Promise<void> {
    let pending = this.#relogins.get(conn);
    if (pending === undefined) {
      pending = this.#host.login(conn).catch((error) => {
        const cause = conn.isOpen ? "status" : conn.endCause;
        this.#host.connectionLost(conn, `login again failed: ${errorMessage(error)}`, cause);
        throw error;
      }).finally(() => this.#relogins.delete(conn));
      this.#relogins.set(conn, pending);
    }
    return pending;
  }

  /** Arms the I/O timeout for the oldest request, unless armed already. */
  armIoTimeout(): void {
    const { clock, ioTimeoutMs, requests } = this.#host;
    if (this.#ioTimer !== undefined || ioTimeoutMs === 0) return;
    const deadline = requests.nextDeadline();
    if (deadline === undefined) return;
    const delay = Math.max(0, deadline - clock.now());
    this.#ioTimer = clock.setTimeout(() => this.#expire(), delay);
  }

  /** Clears every timer (the session is closing). */
  stop(): void {
    const clock = this.#host.clock;
    clock.clearTimeout(this.#ioTimer);
    this.#ioTimer = undefined;
    for (const timer of this.#retryTimers) clock.clearTimeout(timer);
    this.#retryTimers.clear();
  }

  #expire(): void {
    const host = this.#host;
    this.#ioTimer = undefined;
    for (const chunk of host.requests.expired(host.clock.now())) {
      host.log.warn("IVBS request timed out", {
        image: host.image,
        op: chunk.kind,
        offset: chunk.offset,
        length: chunk.length,
        timeoutMs: host.ioTimeoutMs,
        proxy: host.proxy() ?? "none (reconnecting)",
      });
      host.emit({ type: "io-timeout", op: chunk.kind });
      host.finish(
        chunk,
        new BackendError(
          `IVBS ${chunk.kind} ${chunk.offset}+${chunk.length} of image "${host.image}" not ` +
            `served within ${host.ioTimeoutMs} ms`,
          "EIO",
        ),
      );
    }
    this.armIoTimeout();
  }
}
