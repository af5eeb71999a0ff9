/**
 * Who a test-server connection serves: the user logged in and the image
 * attached. LOGIN and ATTACH_TO_IMAGE move it forward (logged in → attached);
 * a refused LOGIN forgets both; one connection attaches at most one image.
 * @module
 */
import { errorMessage } from "../../error_info.ts";
import {
  decodeAttachRequest,
  decodeLogin,
  encodeAttachReply,
  encodeEmpty,
  Op,
  Status,
} from "../wire.ts";
import type { ConnectionContext } from "./context.ts";
import type { StoredImage } from "./store.ts";

export class ClientSession {
  readonly #sessionId: Uint8Array;
  readonly #peer: string;
  readonly #ctx: Pick<ConnectionContext, "users" | "store" | "log">;
  #username: string | null = null;
  #image: StoredImage | null = null;

  constructor(
    sessionId: Uint8Array,
    peer: string,
    ctx: Pick<ConnectionContext, "users" | "store" | "log">,
  ) {
    this.#sessionId = sessionId;
    this.#peer = peer;
    this.#ctx = ctx;
  }

  /** The image attached, or null before ATTACH_TO_IMAGE (and after a refused LOGIN). */
  get image(): StoredImage | null {
    return this.#image;
  }

  /** Answers a LOGIN (synchronously, so a client may pipeline LOGIN, ATTACH and I/O). */
  login(sequence: number, payload: Uint8Array): Uint8Array {
    const ctx = this.#ctx;
    let status: number = Status.PERMISSION_DENIED;
    try {
      const login = decodeLogin(payload);
      if (ctx.users.verify(login.username, login.passwordHash)) {
        if (this.#username !== login.username) this.#image = null;
        this.#username = login.username;
        status = Status.OK;
        ctx.log.debug("login", { peer: this.#peer, username: login.username });
      } else {
        this.#username = null;
        this.#image = null;
        ctx.log.info("login denied", { peer: this.#peer, username: login.username });
      }
    } catch (error) {
      status = Status.INVALID_REQUEST;
      ctx.log.warn("bad LOGIN request", { peer: this.#peer, reason: errorMessage(error) });
    }
    return encodeEmpty(this.#sessionId, Op.LOGIN, sequence, status);
  }

  /** Answers an ATTACH_TO_IMAGE: the image's size and mode, or why not. */
  async attach(sequence: number, payload: Uint8Array): Promise<Uint8Array> {
    const ctx = this.#ctx;
    const reply = (status: number) =>
      encodeEmpty(this.#sessionId, Op.ATTACH_TO_IMAGE, sequence, status);
    let name: string;
    try {
      name = decodeAttachRequest(payload);
    } catch (error) {
      ctx.log.warn("bad ATTACH_TO_IMAGE request", {
        peer: this.#peer,
        reason: errorMessage(error),
      });
      return reply(Status.INVALID_REQUEST);
    }
    const username = this.#username;
    if (username === null) return reply(Status.NOT_LOGGEDIN);
    if (this.#image && this.#image.name !== name) {
      ctx.log.info("second image refused", { peer: this.#peer, attached: this.#image.name, name });
      return reply(Status.INVALID_REQUEST); // one connection, at most one image
    }
    let image: StoredImage | undefined;
    try {
      image = await ctx.store.get(name);
    } catch (error) {
      ctx.log.error("cannot open image", { image: name, reason: errorMessage(error) });
      return reply(Status.PERMANENT_ERROR);
    }
    if (!image) {
      ctx.log.info("attach to unknown image", { peer: this.#peer, image: name });
      return reply(Status.NOT_FOUND);
    }
    if (image.users && !image.users.has(username)) {
      ctx.log.info("attach denied", { peer: this.#peer, image: name, username });
      return reply(Status.PERMISSION_DENIED);
    }
    this.#image = image;
    ctx.log.debug("attached", { peer: this.#peer, image: name, username });
    return encodeAttachReply(this.#sessionId, sequence, {
      imageName: image.name,
      size: image.size,
      readOnly: image.readOnly,
    });
  }
}
