/**
 * Checks now and then the IVBS proxies no session uses, so the proxy list says
 * reachable or unreachable instead of just idle: a stopped proxy would
 * otherwise look idle again once its backoff ends. A check is cheap: connect,
 * wait for GREETING, close (the driver's `probeProxy`). Every `intervalMs`
 * (30 s), each idle proxy not still being checked is checked, at most
 * `concurrency` at a time; a change between reachable and unreachable is one
 * log line, not one per check.
 * @module
 */
import { type Clock, SYSTEM_CLOCK, type TimerHandle } from "../clock.ts";
import { errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";
import type { ProxyRegistry } from "./proxy_registry.ts";

/** Connects to the proxy "host:port", waits for its GREETING and closes; its name. `signal` abandons it. */
export type ProbeProxy = (address: string, signal: AbortSignal) => Promise<{ name: string }>;

/** How often idle proxies are checked by default. */
export const DEFAULT_PROBE_INTERVAL_MS = 30_000;
/** Checks at once by default: a long LIST_PROXIES must not open many sockets together. */
export const DEFAULT_PROBE_CONCURRENCY = 4;

export interface IdleProbeOptions {
  intervalMs?: number;
  concurrency?: number;
  clock?: Clock;
  log?: Logger;
}

export class IdleProxyProber {
  readonly #registry: ProxyRegistry;
  readonly #probe: ProbeProxy;
  readonly #intervalMs: number;
  readonly #concurrency: number;
  readonly #clock: Clock;
  readonly #log: Logger | undefined;
  /** Proxies waiting for a check or being checked: one check per proxy at a time. */
  readonly #checking = new Set<string>();
  /** Proxies waiting for a free place (at most `concurrency` checks at once, all rounds together). */
  readonly #queue: string[] = [];
  #workers = 0;
  /** Resolves when the queue is empty and every check has ended. */
  #drained: PromiseWithResolvers<void> | null = null;
  /** What was last logged per proxy (true reachable), so only changes are logged. */
  readonly #logged = new Map<string, boolean>();
  readonly #abort = new AbortController();
  #timer: TimerHandle | undefined;
  #stopped = false;

  constructor(registry: ProxyRegistry, probe: ProbeProxy, options: IdleProbeOptions = {}) {
    this.#registry = registry;
    this.#probe = probe;
    this.#intervalMs = options.intervalMs ?? DEFAULT_PROBE_INTERVAL_MS;
    this.#concurrency = Math.max(1, options.concurrency ?? DEFAULT_PROBE_CONCURRENCY);
    this.#clock = options.clock ?? SYSTEM_CLOCK;
    this.#log = options.log;
  }

  /** Checks every `intervalMs` from now until `stop()`. */
  start(): void {
    if (this.#stopped || this.#timer !== undefined) return;
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = undefined;
      if (this.#stopped) return;
      void this.check();
      this.start();
    }, this.#intervalMs);
  }

  /** Stops the timer, abandons the checks under way and waits for them to let go. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#abort.abort();
    this.#clock.clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#queue.length = 0;
    await this.#drained?.promise;
  }

  /** One round now: queues every idle proxy not already queued; resolves once all checks ended. */
  check(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    for (const address of this.#registry.idle()) {
      if (this.#checking.has(address)) continue;
      this.#checking.add(address);
      this.#queue.push(address);
    }
    if (this.#queue.length === 0 && this.#workers === 0) return Promise.resolve();
    this.#drained ??= Promise.withResolvers();
    const drained = this.#drained.promise;
    while (this.#workers < this.#concurrency && this.#queue.length > 0) {
      this.#workers++;
      void this.#work();
    }
    return drained;
  }

  async #work(): Promise<void> {
    for (let address = this.#queue.shift(); address !== undefined; address = this.#queue.shift()) {
      await this.#checkOne(address);
    }
    if (--this.#workers > 0) return;
    this.#drained?.resolve();
    this.#drained = null;
  }

  async #checkOne(address: string): Promise<void> {
    const ticket = this.#registry.checkStarted(address);
    let result: { name: string } | { error: string };
    try {
      result = this.#stopped
        ? { error: "not checked: stopping" }
        : await this.#probe(address, this.#abort.signal);
    } catch (error) {
      result = { error: errorMessage(error) };
    } finally {
      this.#checking.delete(address);
    }
    if (this.#stopped) return;
    this.#registry.checked(address, ticket, result);
    // Changes only: the first check that answers is news to nobody.
    const reachable = !("error" in result);
    const before = this.#logged.get(address) ?? true;
    if (before === reachable) return;
    this.#logged.set(address, reachable);
    if ("error" in result) {
      this.#log?.warn("idle IVBS proxy unreachable", { proxy: address, error: result.error });
    } else {
      this.#log?.info("idle IVBS proxy reachable again", { proxy: address });
    }
  }
}
