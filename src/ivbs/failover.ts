/**
 * Which proxy a session uses next, and when: the first mount tries every
 * candidate once; after a connection is lost one reconnect loop at a time goes
 * over the candidates (ProxyList order) in rounds with backoff between them,
 * and a proxy that keeps failing us before serving anything is not hammered.
 * The session decides what a new connection means (adopt it and replay what
 * waits, or stop because the image changed).
 * @module
 */
import { errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";
import type { Clock } from "../clock.ts";
import type { IvbsConnection } from "./connection.ts";
import { ConnectionLostError, IvbsMountError } from "./errors.ts";
import { isDefinitive } from "./attach.ts";
import { type Backoff, proxyLabel, ProxyList } from "./proxy_list.ts";
import type { FailoverCause, IvbsSessionEvent } from "./session_events.ts";
import { type AttachReply, IvbsProtocolError, type ProxyAddress } from "./wire.ts";

/** What the failover loop needs from its session. */
export interface FailoverHost {
  readonly image: string;
  /** The session was closed: stop at once. */
  isClosed(): boolean;
  /** Closed, or stopped for good: no more connections. */
  isStopped(): boolean;
  /** Requests parked until a connection is up (for log lines). */
  waitingCount(): number;
  /** Opens, logs in and attaches on one proxy; closes the connection on failure. */
  establish(address: ProxyAddress): Promise<{ conn: IvbsConnection; reply: AttachReply }>;
  /**
   * A reconnect succeeded. Synchronous when the connection is adopted (a loss
   * right after it must start a new loop); a promise when it is closed instead.
   */
  reattach(conn: IvbsConnection, reply: AttachReply): Promise<void> | void;
  emit(event: IvbsSessionEvent): void;
}

export interface FailoverOptions {
  backoff: Backoff;
  failureMemoryMs: number | undefined;
  /** Backoff sleeps and the failure memory run on it. */
  clock: Clock;
  /** Aborted when the session closes: backoff sleeps end at once. */
  signal: AbortSignal;
  log: Logger;
}

export class Failover {
  readonly proxies: ProxyList;
  readonly #host: FailoverHost;
  readonly #signal: AbortSignal;
  readonly #clock: Clock;
  readonly #log: Logger;

  #reconnectActive = false;
  /** Whether the connection in use answered a request OK; connections lost in a row without. */
  #connServed = false;
  #quickFailures = 0;
  #reconnectDone: Promise<void> = Promise.resolve();

  constructor(configured: ProxyAddress[], host: FailoverHost, options: FailoverOptions) {
    this.#host = host;
    this.#signal = options.signal;
    this.#clock = options.clock;
    this.#log = options.log;
    this.proxies = new ProxyList(configured, {
      backoff: options.backoff,
      failureMemoryMs: options.failureMemoryMs,
      now: () => options.clock.now(),
    });
  }

  /** Settles when the reconnect loop running (if any) has ended. */
  get reconnectDone(): Promise<void> {
    return this.#reconnectDone;
  }

  /**
   * The first connection: every candidate once. Throws IvbsMountError:
   * LOGIN_DENIED, IMAGE_NOT_FOUND, ACCESS_DENIED (from any proxy), NO_PROXY or PROTOCOL.
   */
  async mount(): Promise<{ conn: IvbsConnection; reply: AttachReply }> {
    const failures: string[] = [];
    let protocolOnly = true;
    for (const address of this.proxies.candidates()) {
      try {
        return await this.#host.establish(address);
      } catch (error) {
        if (isDefinitive(error)) throw error;
        this.proxies.markFailed(address);
        this.#host.emit({
          type: "proxy-failed",
          proxy: proxyLabel(address),
          reason: errorMessage(error),
        });
        const protocol = error instanceof IvbsProtocolError ||
          (error instanceof ConnectionLostError && error.protocol);
        if (!protocol) protocolOnly = false;
        failures.push(`${proxyLabel(address)}: ${errorMessage(error)}`);
      }
    }
    const code = protocolOnly ? "PROTOCOL" : "NO_PROXY";
    throw new IvbsMountError(
      code,
      `cannot mount IVBS image "${this.#host.image}": no proxy answered (${failures.join("; ")})`,
    );
  }

  /** `conn` is now the connection in use. */
  adopted(conn: IvbsConnection): void {
    this.#connServed = false;
    this.proxies.markHealthy(conn.address);
  }

  /** The connection in use answered a request OK. */
  served(): void {
    this.#connServed = true;
  }

  /** The connection in use was lost (already counted): log it once, start reconnecting. */
  lost(conn: IvbsConnection, reason: string, cause: FailoverCause, inFlight: number): void {
    this.proxies.markFailed(conn.address);
    // A proxy that fails us before serving anything (USE_ANOTHER_PROXY to every
    // request, say) must not make us reconnect in a tight loop.
    this.#quickFailures = this.#connServed ? 0 : this.#quickFailures + 1;
    const delayMs = this.#quickFailures >= 2
      ? Math.round(this.proxies.backoffMs(this.#quickFailures - 1))
      : 0;
    this.#log.warn("IVBS connection failed; failing over", {
      image: this.#host.image,
      from: conn.label,
      reason,
      cause,
      inFlight,
      candidates: this.proxies.candidates().map(proxyLabel).join(","),
      delayMs,
    });
    this.#host.emit({ type: "failover", from: conn.label, reason, cause });
    this.startReconnect(delayMs);
  }

  startReconnect(delayMs = 0): void {
    if (this.#reconnectActive || this.#host.isStopped()) return;
    this.#reconnectActive = true;
    this.#reconnectDone = this.#reconnect(delayMs);
  }

  async #reconnect(delayMs: number): Promise<void> {
    const host = this.#host;
    try {
      if (delayMs > 0) await this.#sleep(delayMs);
      for (let round = 1; !host.isStopped(); round++) {
        const failures: string[] = [];
        for (const address of this.proxies.candidates()) {
          if (host.isStopped()) return;
          try {
            const { conn, reply } = await host.establish(address);
            const closing = host.reattach(conn, reply);
            if (closing) await closing;
            return;
          } catch (error) {
            this.proxies.markFailed(address);
            host.emit({
              type: "proxy-failed",
              proxy: proxyLabel(address),
              reason: errorMessage(error),
            });
            failures.push(`${proxyLabel(address)}: ${errorMessage(error)}`);
          }
        }
        if (host.isClosed()) return;
        const delayMs = Math.round(this.proxies.backoffMs(round));
        this.#log.warn("no IVBS proxy usable; retrying", {
          image: host.image,
          round,
          delayMs,
          waiting: host.waitingCount(),
          failures: failures.join("; "),
        });
        await this.#sleep(delayMs);
      }
    } finally {
      // Cleared in the same turn as adopt(), so a loss right after it starts a new loop.
      this.#reconnectActive = false;
    }
  }

  /** Backoff sleep that close() cuts short. */
  #sleep(ms: number): Promise<void> {
    const signal = this.#signal;
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.#clock.clearTimeout(timer);
        signal.removeEventListener("abort", done);
        resolve();
      };
      const timer = this.#clock.setTimeout(done, ms);
      signal.addEventListener("abort", done);
    });
  }
}
