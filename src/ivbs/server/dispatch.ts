/**
 * What a test-server connection does with one admitted request: checks it
 * against the connection's state (logged in, image attached, in range,
 * writable), answers a refusal at once, and otherwise hands the store work to
 * the reply path. LOGIN is answered inline and ATTACH_TO_IMAGE is awaited by
 * the reader, so the requests pipelined after them see their effect.
 * @module
 */
import type { BufferPool } from "../../io/buffer_pool.ts";
import { errorMessage } from "../../error_info.ts";
import {
  decodeWriteRequest,
  encodeEmpty,
  encodeProxyList,
  encodeReadReplyHeader,
  type IoRange,
  Op,
  type OpCode,
  opName,
  type ProxyAddress,
  Status,
  statusName,
} from "../wire.ts";
import type { ClientSession } from "./client_session.ts";
import type { Logger } from "../../log.ts";
import type { Outgoing, ReplyPath } from "./reply_path.ts";
import type { StoredImage } from "./store.ts";

export class RequestDispatcher {
  readonly #sessionId: Uint8Array;
  readonly #peer: string;
  readonly #log: Logger;
  readonly #client: ClientSession;
  readonly #replies: ReplyPath;
  readonly #pool: BufferPool;
  readonly #listProxies: () => ProxyAddress[];

  constructor(
    parts: {
      sessionId: Uint8Array;
      peer: string;
      log: Logger;
      client: ClientSession;
      replies: ReplyPath;
      /** WRITE payloads come from it and go back once stored; READ replies borrow from it. */
      pool: BufferPool;
      /** The running proxies, for LIST_PROXIES. */
      listProxies: () => ProxyAddress[];
    },
  ) {
    this.#sessionId = parts.sessionId;
    this.#peer = parts.peer;
    this.#log = parts.log;
    this.#client = parts.client;
    this.#replies = parts.replies;
    this.#pool = parts.pool;
    this.#listProxies = parts.listProxies;
  }

  /** Serves one request; a promise when the reader must wait for it (ATTACH_TO_IMAGE). */
  dispatch(
    op: OpCode,
    sequence: number,
    payload: Uint8Array,
    range: IoRange | null,
    cost: number,
  ): Promise<void> | void {
    const sid = this.#sessionId;
    const replies = this.#replies;
    const fail = (status: number, why: string) => {
      this.#log.debug("request refused", {
        peer: this.#peer,
        op: opName(op),
        status: statusName(status),
        why,
      });
      replies.enqueue(encodeEmpty(sid, op, sequence, status), cost);
    };
    switch (op) {
      case Op.LOGIN:
        // Inline, so a client may pipeline LOGIN, ATTACH and I/O without waiting.
        return replies.enqueue(this.#client.login(sequence, payload), cost);
      case Op.ATTACH_TO_IMAGE:
        // Awaited by the reader, so requests after it see the attached image.
        return this.#client.attach(sequence, payload).then((packet) =>
          replies.enqueue(packet, cost)
        );
      case Op.KEEPALIVE:
        return replies.spawn(
          op,
          sequence,
          cost,
          () => Promise.resolve({ packet: encodeEmpty(sid, op, sequence) }),
        );
      case Op.LIST_PROXIES:
        return replies.spawn(
          op,
          sequence,
          cost,
          () => Promise.resolve({ packet: encodeProxyList(sid, sequence, this.#listProxies()) }),
        );
      case Op.READ: {
        const image = this.#client.image;
        if (!image) return fail(Status.NOT_READY, "no image attached");
        if (!range) return fail(Status.INVALID_REQUEST, `READ payload of ${payload.length} bytes`);
        if (range.offset + range.length > image.size) {
          return fail(
            Status.INVALID_REQUEST,
            `READ ${range.offset}+${range.length} past ${image.size}`,
          );
        }
        const { offset, length } = range;
        return replies.spawn(op, sequence, cost, () => this.#read(image, sequence, offset, length));
      }
      case Op.WRITE: {
        const image = this.#client.image;
        if (!image) return fail(Status.NOT_READY, "no image attached");
        let write: { offset: number; data: Uint8Array };
        try {
          write = decodeWriteRequest(payload);
        } catch (error) {
          return fail(Status.INVALID_REQUEST, errorMessage(error));
        }
        if (write.offset + write.data.length > image.size) {
          return fail(
            Status.INVALID_REQUEST,
            `WRITE ${write.offset}+${write.data.length} past ${image.size}`,
          );
        }
        if (image.readOnly) return fail(Status.READ_ONLY, `image ${image.name} is read-only`);
        return replies.spawn(op, sequence, cost, async () => {
          try {
            await image.write(write.offset, write.data);
          } finally {
            // Stored (copied or written out): the buffer can take the next payload.
            this.#pool.give(payload);
          }
          return { packet: encodeEmpty(sid, op, sequence) };
        });
      }
      default:
        return fail(Status.INVALID_REQUEST, `${opName(op)} is not a request`);
    }
  }

  /**
   * A READ reply without a fresh buffer: the header, then the data straight from
   * a memory store's chunks, or read into a pooled buffer given back once written.
   */
  async #read(
    image: StoredImage,
    sequence: number,
    offset: number,
    length: number,
  ): Promise<Outgoing> {
    const packet = encodeReadReplyHeader(this.#sessionId, sequence, length);
    if (image.views) return { packet, data: image.views(offset, length) };
    const data = this.#pool.take(length);
    try {
      await image.readInto(offset, data);
    } catch (error) {
      this.#pool.give(data);
      throw error;
    }
    return { packet, data: [data], dispose: () => this.#pool.give(data) };
  }
}
