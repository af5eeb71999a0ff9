/**
 * One TCP connection to one IVBS proxy: waits for GREETING, then carries
 * pipelined requests matched to replies by sequence (in any order), handles
 * proxy pushes (GREETING, LIST_PROXIES) between replies, sends KEEPALIVE when
 * idle and declares the peer dead when it stops answering. It knows nothing of
 * failover: when it ends, every pending request rejects with
 * ConnectionLostError and the session decides what to do.
 *
 * One reader loop (FrameReader, READ data lands straight in the caller's
 * buffer) and one serialized writer (src/io/frame_writer.ts: small packets
 * coalesced into one write, a WRITE's large body sent from the caller's buffer).
 * With `liveness` it also probes a proxy it suspects of hanging (liveness.ts).
 * @module
 */
import { type Clock, SYSTEM_CLOCK, type TimerHandle } from "../clock.ts";
import { FrameReader } from "../io/frame_reader.ts";
import type { ByteStream } from "../io/stream.ts";
import { FrameWriter } from "../io/frame_writer.ts";
import { type Logger, logger } from "../log.ts";
import { ConnectionLostError } from "./errors.ts";
import { LivenessMonitor } from "./liveness.ts";
import { connectTcp } from "./tcp_connect.ts";
import {
  AbandonedError,
  causeOf,
  type ConnectionEndCause,
  type ConnectionOptions,
  Outgoing,
  type Pending,
  reasonFor,
  type Reply,
  type RequestOptions,
} from "./connection_types.ts";

export type {
  ConnectionEndCause,
  ConnectionOptions,
  Reply,
  RequestOptions,
  RequestOwner,
} from "./connection_types.ts";
import { proxyLabel } from "./proxy_list.ts";
import {
  decodeGreeting,
  decodeHeader,
  decodeProxyList,
  DEFAULT_IDLE_TIMEOUT_S,
  encodeAttachRequest,
  encodeEmpty,
  encodeLogin,
  HEADER_SIZE,
  IvbsProtocolError,
  Op,
  type OpCode,
  opName,
  type PacketHeader,
  type ProxyAddress,
  SESSION_ID_SIZE,
  stampHeader,
  Status,
} from "./wire.ts";

/** A check tick this many periods late means our own process was stalled. */
const STALLED_TICKS = 3;
const EMPTY = new Uint8Array(0);
const MAX_SEQUENCE = 0xffff_ffff;

export class IvbsConnection {
  readonly address: ProxyAddress;
  /** "host:port" of the proxy, for logs and events. */
  readonly label: string;
  /** Settles (never rejects) with the reason once the connection has ended. */
  readonly ended: Promise<string>;

  readonly #tcp: ByteStream;
  readonly #reader: FrameReader;
  readonly #log: Logger;
  readonly #clock: Clock;
  readonly #deadPeerMs: number;
  readonly #onProxyList: ((proxies: ProxyAddress[]) => void) | undefined;
  readonly #onKeepalive: ((event: "sent" | "answered") => void) | undefined;
  readonly #liveness: LivenessMonitor | undefined;
  readonly #onProbe: ((event: "sent" | "answered") => void) | undefined;

  #sessionId: Uint8Array | null = null;
  #proxyName = "";
  #idleTimeoutS = DEFAULT_IDLE_TIMEOUT_S;
  #greeted: PromiseWithResolvers<void> = Promise.withResolvers();

  readonly #pending = new Map<number, Pending>();
  #sequence = 0;
  readonly #writer: FrameWriter<Outgoing>;
  readonly #readLoop: Promise<void>;

  #endReason: string | null = null;
  #endCause: ConnectionEndCause = "closed";
  #resolveEnded!: (reason: string) => void;
  #tick: TimerHandle | undefined;
  #lastSentAt: number;
  /** Last reply to one of our requests, or when we started waiting for one. */
  #lastReplyAt: number;
  #keepaliveOutstanding = false;
  /** The reader's byte count at the last check: bytes flowing inside a long reply are life too. */
  #receivedAtCheck = 0;
  /** The check timer's period, and when it last ran (to notice our own stalls). */
  #tickEveryMs = 0;
  #lastTickAt = 0;
  #keepalivesSent = 0;

  private constructor(tcp: ByteStream, address: ProxyAddress, options: ConnectionOptions) {
    this.#tcp = tcp;
    this.address = address;
    this.label = proxyLabel(address);
    this.#reader = new FrameReader(tcp);
    this.#log = options.log ?? logger("ivbs");
    const clock = options.clock ?? SYSTEM_CLOCK;
    this.#clock = clock;
    this.#lastSentAt = this.#lastReplyAt = clock.now();
    this.#deadPeerMs = options.deadPeerTimeoutMs ?? 15_000;
    this.#onProxyList = options.onProxyList;
    this.#onKeepalive = options.onKeepalive;
    if (options.liveness && options.liveness.options.probeTimeoutMs > 0) {
      const { options: settings, latencies } = options.liveness;
      this.#liveness = new LivenessMonitor(settings, latencies, clock.now());
      this.#onProbe = options.liveness.onProbe;
    }
    this.#writer = new FrameWriter(tcp, {
      onError: (error) => this.#fail(`write failed: ${reasonFor(error)}`, causeOf(error)),
      onActivity: () => this.#lastSentAt = clock.now(),
    });
    this.ended = new Promise((resolve) => this.#resolveEnded = resolve);
    // Callers of open() see greeting failures through open(); nobody else awaits it.
    this.#greeted.promise.catch(() => {});
    this.#readLoop = this.#runReader();
  }

  /** Connects over TCP (noDelay) and waits for the proxy's GREETING. */
  static async open(
    address: ProxyAddress,
    options: ConnectionOptions = {},
  ): Promise<IvbsConnection> {
    const timeoutMs = options.connectTimeoutMs ?? 5_000;
    const clock = options.clock ?? SYSTEM_CLOCK;
    const tcp = await connectTcp(address, timeoutMs, clock, options.signal);
    const connection = new IvbsConnection(tcp, address, options);
    // From here the greeting timer and the caller's signal close the connection instead.
    const onAbort = () => connection.#fail("connection attempt aborted", "closed");
    options.signal?.addEventListener("abort", onAbort);
    const greetingTimer = clock.setTimeout(
      () => connection.#fail(`no GREETING within ${timeoutMs} ms`, "error"),
      timeoutMs,
    );
    try {
      await connection.#greeted.promise;
      return connection;
    } catch (error) {
      await connection.close();
      throw error;
    } finally {
      // The signal covers the attempt only; the owner closes an open connection itself.
      clock.clearTimeout(greetingTimer);
      options.signal?.removeEventListener("abort", onAbort);
    }
  }

  /** The proxy's name from GREETING ("" when unnamed). */
  get proxyName(): string {
    return this.#proxyName;
  }

  /** The proxy's idle timeout from GREETING, in seconds. */
  get idleTimeoutS(): number {
    return this.#idleTimeoutS;
  }

  /** Requests sent or queued and not yet answered. */
  get inFlight(): number {
    return this.#pending.size;
  }

  get keepalivesSent(): number {
    return this.#keepalivesSent;
  }

  get isOpen(): boolean {
    return this.#endReason === null;
  }

  /** Why the connection ended, or null while it is open. */
  get endReason(): string | null {
    return this.#endReason;
  }

  /** The kind of end (meaningful once endReason is set). */
  get endCause(): ConnectionEndCause {
    return this.#endCause;
  }

  /**
   * Sends an encoded request packet (any session id and sequence: both are
   * stamped here) and resolves with the matching reply. Rejects with
   * ConnectionLostError when the connection ends first.
   */
  request(packet: Uint8Array, options: RequestOptions = {}): Promise<Reply> {
    if (this.#endReason !== null) {
      return Promise.reject(new ConnectionLostError(this.label, this.#endReason));
    }
    if (this.#sessionId === null) {
      return Promise.reject(new IvbsProtocolError("request before GREETING"));
    }
    const sequence = this.#nextSequence();
    let op: OpCode;
    try {
      op = stampHeader(packet, this.#sessionId, sequence);
    } catch (error) {
      return Promise.reject(error);
    }
    const probe = options.probe === true;
    return new Promise<Reply>((resolve, reject) => {
      const now = this.#clock.now();
      // The dead-peer clock starts when we start waiting, not at the last reply.
      if (this.#pending.size === 0) this.#lastReplyAt = now;
      this.#pending.set(sequence, {
        op,
        sentAt: now,
        probe,
        target: options.target,
        owner: options.owner,
        resolve,
        reject,
      });
      // A probe goes ahead of everything queued: it must not wait behind megabytes of writes.
      this.#writer.send(
        new Outgoing(packet, options.body, sequence, options.owner, this.#dropped),
        probe,
      );
    });
  }

  login(username: string, passwordHash: string): Promise<Reply> {
    return this.request(encodeLogin(this.#stampId(), 0, { username, passwordHash }));
  }

  attach(image: string): Promise<Reply> {
    return this.request(encodeAttachRequest(this.#stampId(), 0, image));
  }

  /** Asks for the proxy list; the reply also goes to onProxyList. */
  listProxies(): Promise<Reply> {
    return this.request(encodeEmpty(this.#stampId(), Op.LIST_PROXIES, 0));
  }

  keepalive(): Promise<Reply> {
    return this.#sendKeepalive(false);
  }

  /** Ends the connection (pending requests reject) and waits for its loops to stop. */
  async close(reason = "closed by client"): Promise<void> {
    this.#fail(reason, "closed");
    await this.#readLoop;
    await this.#writer.flushed();
  }

  #stampId(): Uint8Array {
    return this.#sessionId ?? new Uint8Array(SESSION_ID_SIZE);
  }

  #nextSequence(): number {
    // 0 marks proxy pushes, so sequences run 1..2^32-1 and skip any still pending.
    do {
      this.#sequence = this.#sequence >= MAX_SEQUENCE ? 1 : this.#sequence + 1;
    } while (this.#pending.has(this.#sequence));
    return this.#sequence;
  }

  /** A request dropped unsent because its owner gave up on it (or the connection ended). */
  readonly #dropped = (sequence: number): void => {
    const pending = this.#pending.get(sequence);
    if (pending === undefined) return; // the connection ended: already rejected
    this.#pending.delete(sequence);
    pending.reject(new AbandonedError());
  };

  async #runReader(): Promise<void> {
    const header = new Uint8Array(HEADER_SIZE);
    try {
      while (this.#endReason === null) {
        const more = await this.#reader.readFull(header, "IVBS header", true);
        if (!more) {
          this.#fail("proxy closed the connection (EOF)", "closed");
          return;
        }
        await this.#handle(decodeHeader(header));
      }
    } catch (error) {
      const protocol = error instanceof IvbsProtocolError;
      this.#fail(reasonFor(error), protocol ? "error" : causeOf(error), protocol);
    }
  }

  async #readPayload(header: PacketHeader): Promise<Uint8Array> {
    if (header.dataLen === 0) return EMPTY;
    const payload = new Uint8Array(header.dataLen);
    await this.#reader.readFull(payload, `${opName(header.op)} payload`);
    return payload;
  }

  async #handle(header: PacketHeader): Promise<void> {
    if (this.#sessionId === null) {
      if (header.op !== Op.GREETING) {
        throw new IvbsProtocolError(`expected GREETING first, got ${opName(header.op)}`);
      }
      this.#applyGreeting(header, decodeGreeting(await this.#readPayload(header)));
      this.#startTimers();
      this.#greeted.resolve();
      return;
    }
    const now = this.#clock.now();
    this.#liveness?.arrived(now);
    const pending = header.sequence === 0 ? undefined : this.#pending.get(header.sequence);
    if (pending === undefined) return await this.#handlePush(header);
    if (pending.op !== header.op) {
      throw new IvbsProtocolError(
        `reply to ${opName(pending.op)} sequence ${header.sequence} came as ${opName(header.op)}`,
      );
    }
    this.#lastReplyAt = now;
    let payload: Uint8Array;
    if (pending.target !== undefined && header.status === Status.OK) {
      if (header.dataLen !== pending.target.length) {
        throw new IvbsProtocolError(
          `READ reply carries ${header.dataLen} bytes, ${pending.target.length} were asked for`,
        );
      }
      if (pending.owner?.done) {
        // The owner gave up (timeout) and may reuse the target: drop the late data.
        await this.#reader.skip(header.dataLen, "late READ data");
        payload = EMPTY;
      } else {
        await this.#reader.readFull(pending.target, "READ data");
        payload = pending.target;
      }
    } else if (header.status !== Status.OK && header.op === Op.READ) {
      await this.#reader.skip(header.dataLen, "READ error payload");
      payload = EMPTY;
    } else {
      payload = await this.#readPayload(header);
    }
    // Removed only now: if the payload never arrives, #fail must still reject it.
    this.#pending.delete(header.sequence);
    if (header.op === Op.KEEPALIVE) {
      this.#keepaliveOutstanding = false;
      this.#liveness?.keepaliveAnswered(now);
      this.#onKeepalive?.("answered");
      if (pending.probe) this.#onProbe?.("answered");
    } else {
      this.#liveness?.replied(now - pending.sentAt);
    }
    if (header.op === Op.LIST_PROXIES && header.status === Status.OK) {
      this.#onProxyList?.(decodeProxyList(payload));
    }
    pending.resolve({ status: header.status, payload });
  }

  /** Packets the proxy sends on its own (sequence 0 or not ours). */
  async #handlePush(header: PacketHeader): Promise<void> {
    switch (header.op) {
      case Op.LIST_PROXIES: {
        this.#onProxyList?.(decodeProxyList(await this.#readPayload(header)));
        return;
      }
      case Op.GREETING: {
        // A proxy may renew the session: use the new id from now on.
        this.#applyGreeting(header, decodeGreeting(await this.#readPayload(header)));
        this.#log.info("IVBS proxy renewed the session", { proxy: this.label });
        return;
      }
      default:
        this.#log.warn("IVBS reply for no pending request; ignored", {
          proxy: this.label,
          op: opName(header.op),
          sequence: header.sequence,
          dataLen: header.dataLen,
        });
        await this.#reader.skip(header.dataLen, `${opName(header.op)} payload`);
    }
  }

  #applyGreeting(header: PacketHeader, greeting: { proxyName: string; idleTimeoutS: number }) {
    this.#sessionId = header.sessionId.slice();
    this.#proxyName = greeting.proxyName;
    this.#idleTimeoutS = greeting.idleTimeoutS;
  }

  #keepaliveMs(): number {
    // A third of the idle timeout; a proxy that never closes idle links still gets
    // the default cadence so that dead peers are noticed.
    const idleS = this.#idleTimeoutS > 0 ? this.#idleTimeoutS : DEFAULT_IDLE_TIMEOUT_S;
    return (idleS * 1000) / 3;
  }

  #startTimers(): void {
    let period = Math.min(this.#keepaliveMs(), this.#deadPeerMs) / 4;
    if (this.#liveness) period = Math.min(period, this.#liveness.checkEveryMs);
    this.#tickEveryMs = Math.max(5, Math.min(1000, period));
    this.#lastTickAt = this.#clock.now();
    this.#tick = this.#clock.setTimeout(this.#onTick, this.#tickEveryMs);
  }

  /** One check: dead peer, liveness, keepalive due. Re-arms itself (the clock has one-shot timers only). */
  readonly #onTick = (): void => {
    this.#tick = this.#clock.setTimeout(this.#onTick, this.#tickEveryMs);
    const now = this.#clock.now();
    const waiting = this.#pending.size > 0 || this.#keepaliveOutstanding;
    if (waiting && now - this.#lastReplyAt >= this.#deadPeerMs) {
      this.#fail(`no reply for ${this.#deadPeerMs} ms (dead peer)`, "dead-peer");
      return;
    }
    const liveness = this.#liveness;
    // A tick far behind its period means this process did not run (GC, a
    // starved CPU): replies may sit unread in the socket, so the proxy's
    // silence restarts from now rather than failing a live proxy over.
    const stalled = now - this.#lastTickAt > STALLED_TICKS * this.#tickEveryMs;
    this.#lastTickAt = now;
    if (liveness && stalled) liveness.stalled(now);
    if (liveness && this.#reader.received !== this.#receivedAtCheck) {
      this.#receivedAtCheck = this.#reader.received;
      liveness.arrived(now);
    }
    if (liveness && waiting) {
      switch (liveness.check(now, this.#oldestWaitSince())) {
        case "dead":
          this.#fail(
            `no answer to a liveness probe within ${liveness.options.probeTimeoutMs} ms ` +
              `(silent for ${Math.round(liveness.silentFor(now))} ms with requests waiting)`,
            "probe-timeout",
          );
          return;
        case "probe":
          this.#log.debug("IVBS proxy suspected of hanging; probing", {
            proxy: this.label,
            silentMs: Math.round(liveness.silentFor(now)),
            slowAfterMs: Math.round(liveness.slowAfterMs()),
            inFlight: this.#pending.size,
          });
          this.#onProbe?.("sent");
          this.#sendKeepalive(true).catch(() => {
            // The connection ended; its owner learns that through `ended`.
          });
          return;
      }
    }
    if (!this.#keepaliveOutstanding && now - this.#lastSentAt >= this.#keepaliveMs()) {
      this.#sendKeepalive(false).catch(() => {
        // The connection ended; its owner learns that through `ended`.
      });
    }
  };

  #sendKeepalive(probe: boolean): Promise<Reply> {
    if (this.#endReason === null && this.#sessionId !== null) {
      this.#keepaliveOutstanding = true;
      this.#liveness?.keepaliveSent(this.#clock.now());
    }
    this.#keepalivesSent++;
    this.#onKeepalive?.("sent");
    return this.request(encodeEmpty(this.#stampId(), Op.KEEPALIVE, 0), { probe });
  }

  /** When the oldest request still waiting (KEEPALIVE aside) was queued. */
  #oldestWaitSince(): number | undefined {
    // Insertion order is sending order: usually the first entry decides.
    for (const pending of this.#pending.values()) {
      if (pending.op !== Op.KEEPALIVE) return pending.sentAt;
    }
    return undefined;
  }

  #fail(reason: string, cause: ConnectionEndCause, protocol = false): void {
    if (this.#endReason !== null) return;
    this.#endReason = reason;
    this.#endCause = cause;
    this.#clock.clearTimeout(this.#tick);
    try {
      this.#tcp.close();
    } catch {
      // Already closed by the peer side of the runtime.
    }
    const error = new ConnectionLostError(this.label, reason, protocol);
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const request of pending) request.reject(error);
    // After the pending table is cleared: the queued requests already have their answer.
    this.#writer.close();
    this.#greeted.reject(error);
    this.#resolveEnded(reason);
  }
}
