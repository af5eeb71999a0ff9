/**
 * Opening one proxy for a session: connect, GREETING, LOGIN, ATTACH_TO_IMAGE,
 * and the answers that end a mount on every proxy (wrong password, unknown
 * image, access denied) told apart from those that only rule out this proxy.
 * @module
 */
import type { Clock } from "../clock.ts";
import { errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";
import { IvbsConnection } from "./connection.ts";
import { ConnectionLostError, IvbsMountError } from "./errors.ts";
import type { LatencyWindow, LivenessOptions } from "./liveness.ts";
import {
  type AttachReply,
  decodeAttachReply,
  encodeAttachRequest,
  encodeLogin,
  hashPassword,
  IvbsProtocolError,
  type ProxyAddress,
  SESSION_ID_SIZE,
  Status,
  statusName,
} from "./wire.ts";

const NO_SESSION_ID = new Uint8Array(SESSION_ID_SIZE);

/** Errors that end a mount attempt on every proxy, not only the one that said so. */
export function isDefinitive(error: unknown): error is IvbsMountError {
  return error instanceof IvbsMountError &&
    (error.code === "LOGIN_DENIED" || error.code === "IMAGE_NOT_FOUND" ||
      error.code === "ACCESS_DENIED");
}

/**
 * Names the protocol cannot carry fail here, with the code a proxy would have
 * answered, instead of as an encoding error on every proxy. The codec decides
 * what fits (trial encodings), so no layout is repeated here.
 */
export function checkNames(options: { image: string; username: string }): void {
  const refuse = (code: "IMAGE_NOT_FOUND" | "LOGIN_DENIED", encode: () => void) => {
    try {
      encode();
    } catch (error) {
      if (!(error instanceof IvbsProtocolError)) throw error;
      throw new IvbsMountError(code, `cannot send to IVBS: ${error.message}`);
    }
  };
  refuse("IMAGE_NOT_FOUND", () => encodeAttachRequest(NO_SESSION_ID, 0, options.image));
  refuse(
    "LOGIN_DENIED",
    () =>
      encodeLogin(NO_SESSION_ID, 0, { username: options.username, passwordHash: hashPassword("") }),
  );
}

/** What every connection of one session is opened with. */
export interface AttachSettings {
  image: string;
  username: string;
  password: string;
  connectTimeoutMs: number;
  deadPeerTimeoutMs: number;
  liveness: Readonly<LivenessOptions>;
  /** Reply latencies over successive connections, for the liveness threshold. */
  latencies: LatencyWindow;
  /** A LIST_PROXIES arrived on any connection. */
  onProxyList: (proxies: ProxyAddress[]) => void;
  onKeepalive: (event: "sent" | "answered") => void;
  onProbe: (event: "sent" | "answered") => void;
  /** Aborted when the session closes: a handshake in progress gives up. */
  signal: AbortSignal;
  /** Time for each connection's connect, dead-peer, keepalive and liveness timers. */
  clock: Clock;
  /** Registers a promise the session's close() must wait for. */
  track: (promise: Promise<unknown>) => void;
  log: Logger;
}

/** Opens connections that are logged in and attached to one image. */
export class ImageAttacher {
  readonly #settings: AttachSettings;
  readonly #passwordHash: string;

  constructor(settings: AttachSettings) {
    this.#settings = settings;
    this.#passwordHash = hashPassword(settings.password);
  }

  /** Connect, GREETING, LOGIN, ATTACH on one proxy. Closes the connection on failure. */
  async establish(address: ProxyAddress): Promise<{ conn: IvbsConnection; reply: AttachReply }> {
    const settings = this.#settings;
    const conn = await IvbsConnection.open(address, {
      connectTimeoutMs: settings.connectTimeoutMs,
      deadPeerTimeoutMs: settings.deadPeerTimeoutMs,
      onProxyList: settings.onProxyList,
      onKeepalive: settings.onKeepalive,
      liveness: {
        options: settings.liveness,
        latencies: settings.latencies,
        onProbe: settings.onProbe,
      },
      signal: settings.signal,
      clock: settings.clock,
      log: settings.log,
    });
    const handshake = this.#handshake(conn);
    settings.track(handshake);
    try {
      return { conn, reply: await handshake };
    } catch (error) {
      await conn.close(`handshake failed: ${errorMessage(error)}`);
      throw error;
    }
  }

  async #handshake(conn: IvbsConnection): Promise<AttachReply> {
    const { image, username, signal } = this.#settings;
    // A session closing mid-handshake must not wait for this proxy.
    const onAbort = () => conn.close("session closed");
    signal.addEventListener("abort", onAbort);
    try {
      await this.login(conn);
      const attach = await conn.attach(image);
      switch (attach.status) {
        case Status.OK:
          break;
        case Status.NOT_FOUND:
          throw new IvbsMountError(
            "IMAGE_NOT_FOUND",
            `IVBS image "${image}" not found (proxy ${conn.label})`,
          );
        case Status.PERMISSION_DENIED:
          throw new IvbsMountError(
            "ACCESS_DENIED",
            `IVBS user "${username}" may not use image "${image}" (proxy ${conn.label})`,
          );
        default:
          throw new ConnectionLostError(
            conn.label,
            `ATTACH_TO_IMAGE "${image}" answered ${statusName(attach.status)}`,
          );
      }
      const reply = decodeAttachReply(attach.payload);
      // Learn the other proxies now rather than at the next periodic push.
      conn.listProxies().catch(() => {});
      return reply;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }

  /** LOGIN on `conn`; PERMISSION_DENIED is definitive, other answers rule out this proxy. */
  async login(conn: IvbsConnection): Promise<void> {
    const { username } = this.#settings;
    const reply = await conn.login(username, this.#passwordHash);
    if (reply.status === Status.OK) return;
    if (reply.status === Status.PERMISSION_DENIED) {
      throw new IvbsMountError(
        "LOGIN_DENIED",
        `IVBS proxy ${conn.label} refused login of user "${username}": wrong username or password`,
      );
    }
    throw new ConnectionLostError(conn.label, `LOGIN answered ${statusName(reply.status)}`);
  }
}
