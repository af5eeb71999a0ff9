/**
 * Which proxy to try next: the newest LIST_PROXIES first, then the configured
 * ones, with recently failed proxies moved to the end, and a bounded
 * exponential backoff with jitter between rounds over the whole list.
 *
 * @example Listed proxies first, a failed one last
 * ```ts
 * import { ProxyList, proxyLabel } from "./proxy_list.ts";
 * const list = new ProxyList([{ host: "127.0.0.1", port: 11417 }]);
 * list.updateListed([{ host: "10.0.0.2", port: 11417 }, { host: "10.0.0.3", port: 11417 }]);
 * list.markFailed({ host: "10.0.0.2", port: 11417 });
 * const order = list.candidates().map(proxyLabel).join(" ");
 * if (order !== "10.0.0.3:11417 127.0.0.1:11417 10.0.0.2:11417") throw new Error(order);
 * ```
 * @module
 */
import type { ProxyAddress } from "./wire.ts";

export interface Backoff {
  initialMs: number;
  maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 100, maxMs: 5_000 };

/** How long a failed proxy stays at the back of the list by default. */
export const DEFAULT_FAILURE_MEMORY_MS = 30_000;

export interface ProxyListOptions {
  backoff?: Backoff;
  /** How long a failed proxy goes to the back of the list (default 30 s). */
  failureMemoryMs?: number;
  /** Injected for tests; default Math.random. */
  random?: () => number;
  /** Injected for tests; default performance.now. */
  now?: () => number;
}

/** "host:port", with brackets around an IPv6 literal. */
export function proxyLabel(address: ProxyAddress): string {
  const host = address.host.includes(":") ? `[${address.host}]` : address.host;
  return `${host}:${address.port}`;
}

function isUsable(address: ProxyAddress): boolean {
  return address.host.length > 0 && Number.isInteger(address.port) && address.port > 0 &&
    address.port < 65536;
}

/**
 * Delay before retry round `round` (1-based): initialMs·2^(round-1), capped at
 * maxMs, then "equal jitter" (half fixed, half random) so that many clients do
 * not reconnect in lockstep after a proxy restarts.
 */
export function backoffDelay(backoff: Backoff, round: number, random = Math.random): number {
  const exponent = Math.min(Math.max(round - 1, 0), 30);
  const capped = Math.min(backoff.maxMs, backoff.initialMs * 2 ** exponent);
  return capped / 2 + (capped / 2) * random();
}

export class ProxyList {
  readonly #configured: ProxyAddress[];
  #listed: ProxyAddress[] = [];
  /** label → time of the last failure. */
  readonly #failedAt = new Map<string, number>();
  readonly #backoff: Backoff;
  readonly #failureMemoryMs: number;
  readonly #random: () => number;
  readonly #now: () => number;

  constructor(configured: readonly ProxyAddress[], options: ProxyListOptions = {}) {
    this.#configured = configured.filter(isUsable).map((p) => ({ host: p.host, port: p.port }));
    this.#backoff = options.backoff ?? DEFAULT_BACKOFF;
    this.#failureMemoryMs = options.failureMemoryMs ?? DEFAULT_FAILURE_MEMORY_MS;
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? (() => performance.now());
  }

  get configured(): readonly ProxyAddress[] {
    return this.#configured;
  }

  /** The newest LIST_PROXIES received (empty until one arrives). */
  get listed(): readonly ProxyAddress[] {
    return this.#listed;
  }

  /** Replaces the listed proxies with the newest LIST_PROXIES (unusable entries dropped). */
  updateListed(list: readonly ProxyAddress[]): void {
    this.#listed = list.filter(isUsable).map((p) => ({ host: p.host, port: p.port }));
  }

  markFailed(address: ProxyAddress): void {
    this.#failedAt.set(proxyLabel(address), this.#now());
  }

  markHealthy(address: ProxyAddress): void {
    this.#failedAt.delete(proxyLabel(address));
  }

  /** True when `address` failed within the failure memory. */
  recentlyFailed(address: ProxyAddress): boolean {
    const at = this.#failedAt.get(proxyLabel(address));
    return at !== undefined && this.#now() - at < this.#failureMemoryMs;
  }

  /**
   * One round of proxies to try, in order: listed then configured (deduplicated),
   * healthy ones first, recently failed ones last (oldest failure first) so a
   * round still reaches them when nothing else answers.
   */
  candidates(): ProxyAddress[] {
    const seen = new Set<string>();
    const healthy: ProxyAddress[] = [];
    const failed: { address: ProxyAddress; at: number }[] = [];
    for (const address of [...this.#listed, ...this.#configured]) {
      const label = proxyLabel(address);
      if (seen.has(label)) continue;
      seen.add(label);
      if (this.recentlyFailed(address)) {
        failed.push({ address, at: this.#failedAt.get(label) ?? 0 });
      } else {
        healthy.push(address);
      }
    }
    failed.sort((a, b) => a.at - b.at);
    return [...healthy, ...failed.map((f) => f.address)];
  }

  /** Delay before round `round` (1-based) after a whole round failed. */
  backoffMs(round: number): number {
    return backoffDelay(this.#backoff, round, this.#random);
  }
}
