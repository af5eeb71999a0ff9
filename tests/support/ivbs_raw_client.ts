/**
 * A bare IVBS client for the test server tests: it speaks raw bytes (src/ivbs/wire.ts
 * over Deno.connect), so those tests do not depend on the IVBS client.
 */
import assert from "node:assert/strict";
import { FrameReader } from "../../src/io/frame_reader.ts";
import {
  decodeHeader,
  encodeAttachRequest,
  encodeLogin,
  encodeReadRequest,
  encodeWriteRequest,
  hashPassword,
  HEADER_SIZE,
  Op,
  type PacketHeader,
  statusName,
} from "../../src/ivbs/wire.ts";
import { withServer as withSharedServer } from "./ivbs_test_server.ts";
import type { IvbsServerOptions, IvbsTestServer } from "../../src/ivbs/server/mod.ts";

export const MiB = 1024 * 1024;
export const USERS = [
  { username: "alice", password: "alice-pw" },
  { username: "bob", password: "bob-pw" },
];
export const IMAGES = [
  { name: "disk", size: 16 * MiB },
  { name: "golden", size: MiB, readOnly: true },
  { name: "private", size: MiB, users: ["bob"] },
  { name: "huge", size: 10 * 1024 * MiB },
];

export interface Packet {
  header: PacketHeader;
  payload: Uint8Array;
}

/** A bare IVBS client: sends encoded packets, reads packets back. */
export class RawClient {
  readonly #reader: FrameReader;
  #sequence = 1;
  private constructor(
    readonly conn: Deno.TcpConn,
    readonly sessionId: Uint8Array,
    readonly greeting: Packet,
    reader: FrameReader,
  ) {
    this.#reader = reader;
  }

  static async connect(address: { host: string; port: number }): Promise<RawClient> {
    const conn = await Deno.connect({ hostname: address.host, port: address.port });
    const reader = new FrameReader(conn);
    const greeting = await readPacket(reader);
    assert.ok(greeting, "the proxy closed before its GREETING");
    return new RawClient(conn, greeting.header.sessionId, greeting, reader);
  }

  nextSequence(): number {
    return this.#sequence++;
  }

  async send(packet: Uint8Array): Promise<void> {
    let done = 0;
    while (done < packet.length) done += await this.conn.write(packet.subarray(done));
  }

  /** The next packet, or null when the server closed the connection. */
  next(): Promise<Packet | null> {
    return readPacket(this.#reader);
  }

  /** The next packet that is not a LIST_PROXIES push. */
  async reply(): Promise<Packet> {
    while (true) {
      const packet = await this.next();
      assert.ok(packet, "the proxy closed the connection instead of replying");
      if (packet.header.op === Op.LIST_PROXIES && packet.header.sequence === 0) continue;
      return packet;
    }
  }

  async call(packet: Uint8Array): Promise<Packet> {
    await this.send(packet);
    return await this.reply();
  }

  async login(username: string, password: string): Promise<number> {
    const seq = this.nextSequence();
    const reply = await this.call(
      encodeLogin(this.sessionId, seq, { username, passwordHash: hashPassword(password) }),
    );
    assert.equal(reply.header.op, Op.LOGIN);
    assert.equal(reply.header.sequence, seq);
    assert.equal(reply.header.dataLen, 0);
    return reply.header.status;
  }

  async attach(image: string): Promise<Packet> {
    const seq = this.nextSequence();
    const reply = await this.call(encodeAttachRequest(this.sessionId, seq, image));
    assert.equal(reply.header.op, Op.ATTACH_TO_IMAGE);
    assert.equal(reply.header.sequence, seq);
    return reply;
  }

  async read(offset: number, length: number): Promise<Packet> {
    return await this.call(encodeReadRequest(this.sessionId, this.nextSequence(), offset, length));
  }

  async write(offset: number, data: Uint8Array): Promise<Packet> {
    return await this.call(encodeWriteRequest(this.sessionId, this.nextSequence(), offset, data));
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

export async function readPacket(reader: FrameReader): Promise<Packet | null> {
  const headerBytes = new Uint8Array(HEADER_SIZE);
  try {
    if (!await reader.readFull(headerBytes, "header", true)) return null;
    const header = decodeHeader(headerBytes);
    const payload = new Uint8Array(header.dataLen);
    await reader.readFull(payload, "payload");
    return { header, payload };
  } catch (error) {
    // A reset from a closed proxy means the same as EOF here.
    if (error instanceof Deno.errors.ConnectionReset) return null;
    throw error;
  }
}

/** A client logged in as alice and attached to `image`. */
export async function attached(
  server: IvbsTestServer,
  image = "disk",
  proxy = 0,
): Promise<RawClient> {
  const client = await RawClient.connect(server.addresses()[proxy]);
  assert.equal(statusName(await client.login("alice", "alice-pw")), "OK");
  assert.equal(statusName((await client.attach(image)).header.status), "OK");
  return client;
}

/** The shared test server (tests/ivbs_test_server.ts) with these users and images. */
export function withServer(
  options: Partial<IvbsServerOptions>,
  body: (server: IvbsTestServer) => Promise<void>,
): Promise<void> {
  return withSharedServer({ users: USERS, images: IMAGES, ...options }, body);
}

export function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + seed * 7 + 1) & 0xff;
  return bytes;
}

/** Resolves true if `promise` settles within `ms`; the timer never outlives the call. */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
