/**
 * Tiny scripted IVBS proxies for protocol-level client tests: each accepted
 * connection runs a script that reads the client's packets and answers (or
 * misbehaves) through src/ivbs/wire.ts. Listens on 127.0.0.1:0 only.
 * @module
 */
import { FrameReader } from "../../src/io/frame_reader.ts";
import { writeAll } from "../../src/io/stream.ts";
import type { Logger } from "../../src/log.ts";
import {
  decodeAttachRequest,
  decodeHeader,
  decodeLogin,
  decodeReadRequest,
  decodeWriteRequest,
  encodeAttachReply,
  encodeEmpty,
  encodeGreeting,
  encodeReadReply,
  hashPassword,
  HEADER_SIZE,
  Op,
  type PacketHeader,
  type ProxyAddress,
  SESSION_ID_SIZE,
  Status,
} from "../../src/ivbs/wire.ts";

export interface Packet {
  header: PacketHeader;
  payload: Uint8Array;
}

/** The proxy side of one client connection. */
export class FakePeer {
  readonly sessionId: Uint8Array;
  /** 0-based index of this connection among those the fake accepted. */
  readonly index: number;
  readonly #conn: Deno.Conn;
  readonly #reader: FrameReader;
  #closed = false;

  constructor(conn: Deno.Conn, index: number) {
    this.#conn = conn;
    this.index = index;
    this.#reader = new FrameReader(conn);
    this.sessionId = crypto.getRandomValues(new Uint8Array(SESSION_ID_SIZE));
  }

  /** The next packet from the client, or null at EOF / after close. */
  async next(): Promise<Packet | null> {
    const headerBytes = new Uint8Array(HEADER_SIZE);
    try {
      if (!await this.#reader.readFull(headerBytes, "header", true)) return null;
      const header = decodeHeader(headerBytes);
      const payload = new Uint8Array(header.dataLen);
      await this.#reader.readFull(payload, "payload");
      return { header, payload };
    } catch (error) {
      if (this.#closed) return null;
      throw error;
    }
  }

  async send(bytes: Uint8Array): Promise<void> {
    if (this.#closed) return;
    try {
      await writeAll(this.#conn, bytes);
    } catch (error) {
      if (!this.#closed) throw error;
    }
  }

  greet(proxyName = "fake", idleTimeoutS = 30): Promise<void> {
    return this.send(encodeGreeting(this.sessionId, { proxyName, idleTimeoutS }));
  }

  reply(request: Packet, status: number = Status.OK): Promise<void> {
    return this.send(
      encodeEmpty(this.sessionId, request.header.op, request.header.sequence, status),
    );
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
  }
}

export interface FakeProxy {
  readonly address: ProxyAddress;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Closes the listener and every connection, and waits for the scripts to end. */
  close(): Promise<void>;
}

/** Starts a fake proxy whose connections each run `script` (errors are kept and rethrown by close). */
export function fakeProxy(script: (peer: FakePeer) => Promise<void>): FakeProxy {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const peers = new Set<FakePeer>();
  const tasks: Promise<void>[] = [];
  const errors: unknown[] = [];
  let accepted = 0;
  const acceptLoop = (async () => {
    for await (const conn of listener) {
      conn.setNoDelay(true); // like a real proxy: small replies must not wait for Nagle
      const peer = new FakePeer(conn, accepted++);
      peers.add(peer);
      tasks.push(
        script(peer).catch((error) => void errors.push(error)).finally(() => {
          peer.close();
          peers.delete(peer);
        }),
      );
    }
  })().catch(() => {});
  const port = (listener.addr as Deno.NetAddr).port;
  return {
    address: { host: "127.0.0.1", port },
    get accepted() {
      return accepted;
    },
    async close() {
      listener.close();
      await acceptLoop;
      for (const peer of peers) peer.close();
      await Promise.all(tasks);
      if (errors.length > 0) throw errors[0];
    },
  };
}

export const FAKE_USER = { username: "alice", password: "secret" };

/**
 * A proxy that behaves: greets, accepts FAKE_USER, attaches any image of `size`
 * bytes backed by `memory`, and serves READ/WRITE in order. `hook` sees each
 * data request first and returns true when it answered it itself.
 */
export function serveWell(
  peer: FakePeer,
  memory: Uint8Array,
  hook?: (request: Packet) => Promise<boolean> | boolean,
  greeting: { proxyName?: string; idleTimeoutS?: number } = {},
): Promise<void> {
  return (async () => {
    await peer.greet(greeting.proxyName ?? `fake-${peer.index}`, greeting.idleTimeoutS ?? 30);
    const expectedHash = hashPassword(FAKE_USER.password);
    for (let request = await peer.next(); request; request = await peer.next()) {
      const { header, payload } = request;
      switch (header.op) {
        case Op.LOGIN: {
          const login = decodeLogin(payload);
          const ok = login.username === FAKE_USER.username && login.passwordHash === expectedHash;
          await peer.reply(request, ok ? Status.OK : Status.PERMISSION_DENIED);
          break;
        }
        case Op.ATTACH_TO_IMAGE:
          await peer.send(encodeAttachReply(peer.sessionId, header.sequence, {
            imageName: decodeAttachRequest(payload),
            size: memory.length,
            readOnly: false,
          }));
          break;
        case Op.KEEPALIVE:
          await peer.reply(request);
          break;
        case Op.READ: {
          if (hook && await hook(request)) break;
          const { offset, length } = decodeReadRequest(payload);
          await peer.send(
            encodeReadReply(peer.sessionId, header.sequence, memory.slice(offset, offset + length)),
          );
          break;
        }
        case Op.WRITE: {
          if (hook && await hook(request)) break;
          const { offset, data } = decodeWriteRequest(payload);
          memory.set(data, offset);
          await peer.reply(request);
          break;
        }
        default:
          await peer.reply(request, Status.INVALID_REQUEST);
      }
    }
  })();
}

/** A port on 127.0.0.1 with nothing listening (bound, then released). */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Records log lines instead of printing them, so tests can assert on them quietly. */
export function captureLog(): Logger & {
  lines: { level: string; message: string; fields?: object }[];
} {
  const lines: { level: string; message: string; fields?: object }[] = [];
  const at = (level: string) => (message: string, fields?: object) =>
    void lines.push({ level, message, fields });
  return { lines, debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
}
