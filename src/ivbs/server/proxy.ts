/**
 * One proxy of the test server: a TCP listener and its connections, with the
 * faults a test can switch on (stop/start on the same port, stall, hold, drop).
 * @module
 */
import type { ProxyAddress } from "../wire.ts";
import type { ConnectionContext } from "./context.ts";
import { ServerConnection } from "./connection.ts";
import { Listener } from "../../io/listener.ts";

/**
 * Connections one proxy serves at once; more wait in the backlog. Idle ones
 * are never evicted: the proxy's own idle timeout closes them, as a real one does.
 */
const MAX_PROXY_CONNECTIONS = 1024;

/** A proxy as the server's users see it (a live view). */
export interface ProxyView {
  index: number;
  name: string;
  host: string;
  port: number;
  running: boolean;
  stalled: boolean;
  /** READ/WRITE replies held back; everything else (KEEPALIVE) answered. */
  holding: boolean;
  connections: number;
}

/** What every connection of a proxy shares, minus the proxy's own parts. */
export type SharedContext = Omit<
  ConnectionContext,
  "proxyIndex" | "proxyName" | "stalled" | "whenUnstalled" | "holding" | "whenReleased"
>;

/** Thrown when a proxy cannot listen (port in use, bad host). */
export class ProxyListenError extends Error {
  readonly code = "LISTEN";
  constructor(message: string) {
    super(message);
    this.name = "ProxyListenError";
  }
}

/** A fault switch (stall, hold): while it is on, waiters wait; turning it off releases them all. */
class FaultSwitch {
  #off: PromiseWithResolvers<void> | null = null;

  get on(): boolean {
    return this.#off !== null;
  }

  set(on: boolean): void {
    if (on === this.on) return;
    if (on) {
      this.#off = Promise.withResolvers<void>();
    } else {
      const off = this.#off;
      this.#off = null;
      off?.resolve();
    }
  }

  /** Resolves once the switch is off (at once when it is). */
  whenOff(): Promise<void> {
    return this.#off?.promise ?? Promise.resolve();
  }
}

export class ProxyListener implements ProxyView {
  readonly index: number;
  readonly name: string;
  readonly host: string;
  #port: number;
  #listener: Listener<Deno.TcpConn> | null = null;
  readonly #connections = new Set<ServerConnection>();
  readonly #stall = new FaultSwitch();
  readonly #hold = new FaultSwitch();
  readonly #context: ConnectionContext;
  readonly #listProxies: () => ProxyAddress[];
  readonly #onAccept: () => void;

  constructor(
    index: number,
    host: string,
    port: number,
    shared: SharedContext,
    hooks: { listProxies: () => ProxyAddress[]; onAccept: () => void },
  ) {
    this.index = index;
    this.host = host;
    this.#port = port;
    this.name = `proxy-${index}`;
    this.#listProxies = hooks.listProxies;
    this.#onAccept = hooks.onAccept;
    this.#context = {
      ...shared,
      proxyIndex: index,
      proxyName: this.name,
      stalled: () => this.#stall.on,
      whenUnstalled: () => this.#stall.whenOff(),
      holding: () => this.#hold.on,
      whenReleased: () => this.#hold.whenOff(),
    };
  }

  get port(): number {
    return this.#port;
  }
  get running(): boolean {
    return this.#listener !== null;
  }
  get stalled(): boolean {
    return this.#stall.on;
  }
  get holding(): boolean {
    return this.#hold.on;
  }
  get connections(): number {
    return this.#connections.size;
  }

  /** Listens on the configured port (the same port again after a stop). */
  start(): Promise<void> {
    if (this.#listener) return Promise.resolve();
    let listener: Deno.TcpListener;
    try {
      listener = Deno.listen({ hostname: this.host, port: this.#port, transport: "tcp" });
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      return Promise.reject(
        new ProxyListenError(
          `Cannot listen on ${this.host}:${this.#port} for ${this.name}: ${reason}`,
        ),
      );
    }
    this.#port = listener.addr.port; // port 0 becomes the ephemeral port, kept for restarts
    this.#listener = new Listener({
      sources: [listener],
      serve: (conn) => this.#serve(conn),
      maxConnections: MAX_PROXY_CONNECTIONS,
      minIdleMs: Infinity,
      noun: `IVBS connection to ${this.name}`,
      log: this.#context.log,
    });
    return Promise.resolve();
  }

  /** Closes the listener and every connection; resolves when all of them have finished. */
  async stop(): Promise<void> {
    const listener = this.#listener;
    this.#listener = null;
    await listener?.stopAccepting();
    await this.#closeConnections();
  }

  /** Stalled: connections stay open (new ones are accepted) but nothing is read or answered. */
  stall(stalled: boolean): void {
    this.#stall.set(stalled);
  }

  /**
   * Holding: READ/WRITE are served but their replies wait until released, while
   * KEEPALIVE (and login, attach) are answered: a live proxy whose storage stalls.
   * Held requests keep their admission slots, as a real proxy's would.
   */
  hold(held: boolean): void {
    this.#hold.set(held);
  }

  /** Closes the current connections abruptly; the listener keeps accepting. */
  dropConnections(): Promise<void> {
    return this.#closeConnections();
  }

  /** Pushes LIST_PROXIES to every connection (a stalled proxy sends nothing). */
  pushProxyList(proxies: readonly ProxyAddress[]): void {
    if (this.#stall.on) return;
    for (const connection of this.#connections) connection.pushProxyList(proxies);
  }

  async #closeConnections(): Promise<void> {
    const connections = [...this.#connections];
    for (const connection of connections) connection.close();
    await Promise.all(connections.map((connection) => connection.done));
  }

  #serve(conn: Deno.TcpConn): Promise<void> {
    try {
      conn.setNoDelay(true); // small replies (keepalive, status) must not wait for Nagle
    } catch {
      // The peer is already gone; the reader will see it.
    }
    this.#onAccept();
    const connection = new ServerConnection(conn, this.#context);
    connection.listProxies = this.#listProxies;
    this.#connections.add(connection);
    return connection.done.finally(() => this.#connections.delete(connection));
  }
}
