/**
 * The daemon's view of every IVBS proxy it knows: the configured ones and those
 * learned from LIST_PROXIES, with the name from their GREETING, which mounts and
 * export clients are connected to each, which failed recently (and so are tried
 * last until when: the sessions' failure memory), the last error and when, and
 * failures and failovers counted per proxy.
 *
 * Sessions report through a `SessionObserver` (their `onEvent`). The observer
 * also writes the one "failover" line an operator reads: from → to, cause,
 * requests replayed and how long requests stalled. A proxy no session uses is
 * checked now and then (proxy_probe.ts), so it shows reachable or unreachable.
 * @module
 */
import type { IvbsSessionEvent } from "../ivbs/session.ts";
import { DEFAULT_FAILURE_MEMORY_MS, proxyLabel } from "../ivbs/proxy_list.ts";
import type { Logger } from "../log.ts";

export type ProxyOrigin = "configured" | "listed";

/**
 * connected: at least one session uses it. backoff: it failed within the
 * failure memory, sessions try it last until `backoffUntil`. Otherwise, by the
 * last idle check (connect and GREETING) since a session last used it:
 * reachable (it answered) or unreachable (it did not; `lastError` says why),
 * and idle while not checked yet.
 */
export const PROXY_STATES = ["connected", "backoff", "reachable", "unreachable", "idle"] as const;
export type ProxyState = typeof PROXY_STATES[number];

/** What `GET /api/proxies` shows of one proxy. */
export interface ProxyInfo {
  /** "host:port". */
  address: string;
  /** From its GREETING; null until a session connected to it. */
  name: string | null;
  /** Where the daemon learned of it (both when configured and listed). */
  origins: ProxyOrigin[];
  state: ProxyState;
  /** Mounts ("/dev/nbd0") and export clients ("export vm1") connected to it now. */
  usedBy: string[];
  backoffUntil: string | null;
  lastError: string | null;
  lastErrorAt: string | null;
  lastConnectedAt: string | null;
  /** When the last idle check ended (null: none since a session last used it). */
  checkedAt: string | null;
  /** Sessions that connected to it (logins + attaches that succeeded). */
  connects: number;
  /** Connections lost and connection attempts that failed. */
  failures: number;
  /** Sessions that left it for another proxy, and that came to it from another. */
  failoversFrom: number;
  failoversTo: number;
}

interface Entry {
  address: string;
  name: string | null;
  configured: boolean;
  listed: boolean;
  users: Map<string, number>;
  failedAt: number | null;
  lastError: string | null;
  lastErrorAt: number | null;
  lastConnectedAt: number | null;
  /** The last idle check since a session last used or lost the proxy. */
  check: { ok: boolean; at: number } | null;
  /** Counts sessions' news (connected, failed): a check begun before it is stale. */
  epoch: number;
  connects: number;
  failures: number;
  failoversFrom: number;
  failoversTo: number;
}

export interface ProxyRegistryOptions {
  /** The sessions' failure memory: how long a failed proxy is tried last (default 30 s). */
  failureMemoryMs?: number;
  /** Wall clock, injected for tests; default Date.now. */
  now?: () => number;
  /** Where "learned a proxy" lines go. */
  log?: Logger;
}

/** Proxies a registry shows at most; a LIST_PROXIES flood cannot grow it without bound. */
export const MAX_KNOWN_PROXIES = 256;

/** A proxy's state: sessions first, then its failure memory, then the last idle check. */
function stateOf(entry: Entry, inBackoff: boolean): ProxyState {
  if (entry.users.size > 0) return "connected";
  if (inBackoff) return "backoff";
  if (entry.check === null) return "idle";
  return entry.check.ok ? "reachable" : "unreachable";
}

export class ProxyRegistry {
  readonly #entries = new Map<string, Entry>();
  readonly #failureMemoryMs: number;
  readonly #now: () => number;
  readonly #log: Logger | undefined;

  constructor(
    configured: readonly { host: string; port: number }[],
    options: ProxyRegistryOptions = {},
  ) {
    this.#failureMemoryMs = options.failureMemoryMs ?? DEFAULT_FAILURE_MEMORY_MS;
    this.#now = options.now ?? Date.now;
    this.#log = options.log;
    for (const address of configured) this.#entry(proxyLabel(address)).configured = true;
  }

  #entry(address: string): Entry {
    let entry = this.#entries.get(address);
    if (!entry) {
      entry = {
        address,
        name: null,
        configured: false,
        listed: false,
        users: new Map(),
        failedAt: null,
        lastError: null,
        lastErrorAt: null,
        lastConnectedAt: null,
        check: null,
        epoch: 0,
        connects: 0,
        failures: 0,
        failoversFrom: 0,
        failoversTo: 0,
      };
      this.#entries.set(address, entry);
    }
    return entry;
  }

  /** A LIST_PROXIES: new addresses are remembered (and logged once). */
  learn(addresses: readonly string[]): void {
    for (const address of addresses) {
      const known = this.#entries.get(address);
      if (known) {
        known.listed = true;
        continue;
      }
      if (this.#entries.size >= MAX_KNOWN_PROXIES) return;
      this.#entry(address).listed = true;
      this.#log?.info("IVBS proxy learned from LIST_PROXIES", { proxy: address });
    }
  }

  connected(address: string, name: string, user: string): void {
    const entry = this.#entry(address);
    if (name !== "") entry.name = name;
    entry.users.set(user, (entry.users.get(user) ?? 0) + 1);
    entry.connects++;
    entry.failedAt = null;
    entry.lastConnectedAt = this.#now();
    entry.check = null;
    entry.epoch++;
  }

  /** `from`'s connection to `address` is now `to`'s (a mount learnt its device). */
  transfer(address: string, from: string, to: string): void {
    const entry = this.#entries.get(address);
    if (!entry?.users.has(from)) return;
    this.released(address, from);
    entry.users.set(to, (entry.users.get(to) ?? 0) + 1);
  }

  /** `user`'s connection to `address` ended (failover) or was closed (close). */
  released(address: string, user: string): void {
    const entry = this.#entries.get(address);
    const count = entry?.users.get(user) ?? 0;
    if (count <= 1) entry?.users.delete(user);
    else entry!.users.set(user, count - 1);
  }

  failed(address: string, reason: string): void {
    const entry = this.#entry(address);
    const now = this.#now();
    entry.failures++;
    entry.failedAt = now;
    entry.lastError = reason;
    entry.lastErrorAt = now;
    entry.check = null;
    entry.epoch++;
  }

  /** Proxies to check: known, used by no session and not in backoff. */
  idle(): string[] {
    return this.list().filter((p) => p.usedBy.length === 0 && p.backoffUntil === null)
      .map((p) => p.address);
  }

  /** An idle check of `address` begins; pass the ticket to `checked`. */
  checkStarted(address: string): number {
    return this.#entries.get(address)?.epoch ?? -1;
  }

  /**
   * The result of an idle check of `address`: it answered (with this name), or
   * not (why). A session's own news (connected, failed) replaces it, and a
   * check that began before such news is dropped.
   */
  checked(address: string, ticket: number, result: { name: string } | { error: string }): void {
    const entry = this.#entries.get(address);
    if (!entry || entry.epoch !== ticket) return;
    const now = this.#now();
    if ("error" in result) {
      entry.lastError = result.error;
      entry.lastErrorAt = now;
    } else if (result.name !== "") {
      entry.name = result.name;
    }
    entry.check = { ok: !("error" in result), at: now };
  }

  failover(from: string | null, to: string | null): void {
    if (from !== null) this.#entry(from).failoversFrom++;
    if (to !== null) this.#entry(to).failoversTo++;
  }

  /** Every known proxy: configured first, then listed, each in the order learned. */
  list(): ProxyInfo[] {
    const now = this.#now();
    const ordered = [...this.#entries.values()].sort((a, b) =>
      Number(b.configured) - Number(a.configured)
    );
    return ordered.map((e) => {
      const backoffEnd = e.failedAt === null ? null : e.failedAt + this.#failureMemoryMs;
      const inBackoff = backoffEnd !== null && backoffEnd > now;
      const iso = (ms: number | null) => ms === null ? null : new Date(ms).toISOString();
      const origins: ProxyOrigin[] = [];
      if (e.configured) origins.push("configured");
      if (e.listed) origins.push("listed");
      return {
        address: e.address,
        name: e.name,
        origins,
        state: stateOf(e, inBackoff),
        usedBy: [...e.users.keys()].sort(),
        backoffUntil: inBackoff ? iso(backoffEnd) : null,
        lastError: e.lastError,
        lastErrorAt: iso(e.lastErrorAt),
        lastConnectedAt: iso(e.lastConnectedAt),
        checkedAt: iso(e.check?.at ?? null),
        connects: e.connects,
        failures: e.failures,
        failoversFrom: e.failoversFrom,
        failoversTo: e.failoversTo,
      };
    });
  }

  /** An observer for one session of `owner`, logging its failovers through `log`. */
  observe(
    owner: SessionOwner,
    log: Logger,
    now: () => number = () => performance.now(),
  ): SessionObserver {
    return new SessionObserver(this, ownerLabel(owner), log, now);
  }
}

/** Follows one IVBS session's events: keeps the registry current and logs each failover. */
export class SessionObserver {
  #proxy: string | null = null;
  #lost: { from: string; cause: string; reason: string; at: number } | null = null;
  #closed = false;

  constructor(
    readonly registry: ProxyRegistry,
    public user: string,
    readonly log: Logger,
    readonly now: () => number,
  ) {}

  /** The session's `onEvent`. */
  readonly onEvent = (event: IvbsSessionEvent): void => {
    if (this.#closed) return;
    switch (event.type) {
      case "connected": {
        this.registry.connected(event.proxy, event.proxyName, this.user);
        this.#proxy = event.proxy;
        const lost = this.#lost;
        this.#lost = null;
        if (lost === null) return;
        this.registry.failover(null, event.proxy);
        this.log.warn("failover", {
          from: lost.from,
          to: event.proxy,
          toName: event.proxyName || undefined,
          cause: lost.cause,
          reason: lost.cause === lost.reason ? undefined : lost.reason,
          replayed: event.replayed,
          stallMs: Math.round(this.now() - lost.at),
        });
        return;
      }
      case "failover": {
        this.registry.released(event.from, this.user);
        this.registry.failed(event.from, event.reason);
        this.registry.failover(event.from, null);
        this.#proxy = null;
        // Losses while still reconnecting keep the first one's start: that is the stall.
        this.#lost ??= {
          from: event.from,
          cause: event.cause,
          reason: event.reason,
          at: this.now(),
        };
        return;
      }
      case "proxy-failed":
        this.registry.failed(event.proxy, event.reason);
        return;
      case "proxies-listed":
        this.registry.learn(event.proxies);
        return;
      default:
        // Retries, I/O timeouts and a stopped session are logged by the session itself.
        return;
    }
  };

  /** The session's owner is now named `user` (see SessionWatch.renamed). */
  rename(user: string): void {
    if (this.#proxy !== null) this.registry.transfer(this.#proxy, this.user, user);
    this.user = user;
  }

  /** The session closed: it no longer uses its proxy. */
  closed(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#proxy !== null) this.registry.released(this.#proxy, this.user);
    this.#proxy = null;
  }
}

/** What a table attaches to each IVBS session it opens. */
export interface SessionWatch {
  onEvent(event: IvbsSessionEvent): void;
  /** Its owner's device changed (the kernel picked it after the session opened). */
  renamed(): void;
  /** The session's logger (its lines name the mount or export). */
  log: Logger;
  /** Call once the session is closed. */
  closed(): void;
}

/** Whose session it is: a mount's, an export client's, or the check run when an export is added. */
export interface SessionOwner {
  device?: string;
  export?: string;
  image: string;
  /** The one-off session that checks an export's image and credentials. */
  check?: boolean;
}

/** "/dev/nbd0", "export vm1", "export vm1 (check)": how `usedBy` names a session. */
export function ownerLabel(owner: SessionOwner): string {
  if (owner.device !== undefined) return owner.device;
  return `export ${owner.export ?? "?"}${owner.check ? " (check)" : ""}`;
}

/** Makes the watch of a new IVBS session. */
export type WatchSession = (owner: SessionOwner) => SessionWatch;
