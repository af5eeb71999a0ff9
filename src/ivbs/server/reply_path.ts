/**
 * The way out of a test-server connection: request handlers run concurrently,
 * each reply waits for the faults switched on (a reply delay, held READ/WRITE
 * replies, a stalled proxy) and then goes to the connection's one serialized
 * writer (src/io/frame_writer.ts), so replies leave in completion order. Once
 * a reply is written or dropped its pooled buffers and its admission go back.
 * @module
 */
import type { TimerHandle } from "../../clock.ts";
import type { ByteStream } from "../../io/stream.ts";
import { type Frame, FrameWriter } from "../../io/frame_writer.ts";
import { errorMessage } from "../../error_info.ts";
import { encodeEmpty, Op, type OpCode, opName, Status } from "../wire.ts";
import type { ConnectionContext } from "./context.ts";

/** A reply: its packet, then optionally data written from where it lies (not copied). */
export interface Outgoing {
  packet: Uint8Array;
  /** Sent right after `packet`, counted in its data_len. */
  data?: readonly Uint8Array[];
  /** Called once the reply is written or dropped (gives pooled buffers back). */
  dispose?: () => void;
}

/** A reply in the writer's queue; once written or dropped it gives back what it holds. */
class QueuedReply implements Frame {
  readonly head: Uint8Array;
  readonly body: readonly Uint8Array[] | undefined;
  constructor(
    reply: Outgoing,
    /** Budget held for the request this replies to; 0 for packets the proxy sends on its own. */
    readonly cost: number,
    /** A LIST_PROXIES push (at most one waits at a time). */
    readonly push: boolean,
    readonly dispose: (() => void) | undefined,
    readonly settle: (reply: QueuedReply) => void,
  ) {
    this.head = reply.packet;
    this.body = reply.data;
  }

  written(): void {
    this.settle(this);
  }
}

/** What the reply path needs from its connection. */
export interface ReplyPathOwner {
  readonly sessionId: Uint8Array;
  readonly peer: string;
  readonly ctx: ConnectionContext;
  isClosed(): boolean;
  /** Settles when the connection closes. */
  readonly closed: Promise<void>;
  /** A reply to an admitted request was written or dropped: give back its `cost`. */
  release(cost: number): void;
  /** The stream failed: the connection closes. */
  close(): void;
}

export class ReplyPath {
  readonly #owner: ReplyPathOwner;
  readonly #writer: FrameWriter<QueuedReply>;
  #pushQueued = false;

  // Handlers still running (store I/O, reply delays).
  #handlers = 0;
  #handlersIdle: (() => void) | null = null;
  readonly #timers = new Map<TimerHandle, () => void>();

  constructor(stream: ByteStream, owner: ReplyPathOwner) {
    this.#owner = owner;
    const ctx = owner.ctx;
    this.#writer = new FrameWriter(stream, {
      onError: (error) => {
        if (!owner.isClosed()) {
          ctx.log.debug("write failed", { peer: owner.peer, reason: errorMessage(error) });
        }
        owner.close();
      },
      // A stalled proxy writes nothing until it is unstalled or closed.
      gate: () =>
        ctx.stalled() && !owner.isClosed()
          ? Promise.race([ctx.whenUnstalled(), owner.closed])
          : undefined,
    });
  }

  /** Queues a LIST_PROXIES push (sequence 0) unless one is still waiting to be sent. */
  push(packet: () => Uint8Array): void {
    if (this.#pushQueued) return;
    this.#pushQueued = true;
    this.#writer.send(new QueuedReply({ packet: packet() }, 0, true, undefined, this.#settle));
  }

  /** `cost` > 0: a reply to an admitted request; 0: a packet the proxy sends on its own. */
  enqueue(reply: Uint8Array | Outgoing, cost: number): void {
    const item: Outgoing = reply instanceof Uint8Array ? { packet: reply } : reply;
    // A closed writer drops it at once, which gives back what it holds.
    this.#writer.send(new QueuedReply(item, cost, false, item.dispose, this.#settle));
  }

  /** A reply written or dropped: its buffers and its budget go back. */
  readonly #settle = (reply: QueuedReply): void => {
    reply.dispose?.();
    if (reply.cost > 0) this.#owner.release(reply.cost);
    if (reply.push) this.#pushQueued = false;
  };

  /** Runs a handler concurrently; its reply (after the optional delay) goes to the writer. */
  spawn(op: OpCode, sequence: number, cost: number, work: () => Promise<Outgoing>): void {
    this.#handlers++;
    this.#handle(op, sequence, cost, work).finally(() => {
      if (--this.#handlers === 0) this.#handlersIdle?.();
    });
  }

  async #handle(
    op: OpCode,
    sequence: number,
    cost: number,
    work: () => Promise<Outgoing>,
  ): Promise<void> {
    const owner = this.#owner;
    let reply: Outgoing;
    try {
      reply = await work();
    } catch (error) {
      // A store failure (disk full, I/O error) fails this request, not the connection.
      owner.ctx.log.error("request failed in the store", {
        peer: owner.peer,
        op: opName(op),
        reason: errorMessage(error),
      });
      reply = { packet: encodeEmpty(owner.sessionId, op, sequence, Status.PERMANENT_ERROR) };
    }
    const delay = owner.ctx.replyDelayMs;
    if (delay && delay.max > 0 && !owner.isClosed()) {
      await this.#sleep(delay.min + Math.random() * (delay.max - delay.min));
    }
    if ((op === Op.READ || op === Op.WRITE) && owner.ctx.holding()) {
      await Promise.race([owner.ctx.whenReleased(), owner.closed]);
    }
    this.enqueue(reply, cost);
  }

  /** A reply delay, on the server's clock; `stats.delayedReplies` counts those running. */
  #sleep(ms: number): Promise<void> {
    const ctx = this.#owner.ctx;
    ctx.stats.delayedReplies++;
    return new Promise<void>((resolve) => {
      const id = ctx.clock.setTimeout(() => {
        this.#timers.delete(id);
        resolve();
      }, ms);
      this.#timers.set(id, resolve);
    }).finally(() => ctx.stats.delayedReplies--);
  }

  /** Settles once no handler runs. */
  handlersFinished(): Promise<void> {
    if (this.#handlers === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.#handlersIdle = () => {
        this.#handlersIdle = null;
        resolve();
      };
    });
  }

  /** Settles once everything queued was written or dropped. */
  flushed(): Promise<void> {
    return this.#writer.flushed();
  }

  /** Reply delays end at once; queued replies are dropped and give back what they hold. */
  close(): void {
    for (const [id, resolve] of this.#timers) {
      this.#owner.ctx.clock.clearTimeout(id);
      resolve();
    }
    this.#timers.clear();
    this.#writer.close();
  }
}
