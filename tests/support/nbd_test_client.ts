/**
 * The least NBD client a test needs to put load through an export: fixed
 * newstyle with NO_ZEROES, NBD_OPT_EXPORT_NAME, then one READ or WRITE at a
 * time with simple replies. Uses the project's codec for the request header.
 */
import { IHAVEOPT, Opt } from "../../src/nbd/handshake.ts";
import { Command, decodeReply, encodeRequest, REPLY_SIZE } from "../../src/nbd/wire.ts";

export class NbdTestClient {
  #handle = 1n;

  private constructor(
    readonly conn: Deno.Conn,
    readonly size: number,
    /** Transmission flags the server advertised. */
    readonly flags: number,
  ) {}

  static async connect(socket: string, name: string): Promise<NbdTestClient> {
    const conn = await Deno.connect({ transport: "unix", path: socket });
    try {
      await readExactly(conn, new Uint8Array(18));
      const nameBytes = new TextEncoder().encode(name);
      const hello = new Uint8Array(20 + nameBytes.length);
      const view = new DataView(hello.buffer);
      view.setUint32(0, 0b11); // FIXED_NEWSTYLE | NO_ZEROES
      view.setBigUint64(4, IHAVEOPT);
      view.setUint32(12, Opt.EXPORT_NAME);
      view.setUint32(16, nameBytes.length);
      hello.set(nameBytes, 20);
      await conn.write(hello);
      const reply = new Uint8Array(10); // size u64 + transmission flags u16
      await readExactly(conn, reply);
      const fields = new DataView(reply.buffer);
      return new NbdTestClient(conn, Number(fields.getBigUint64(0)), fields.getUint16(8));
    } catch (error) {
      conn.close();
      throw error;
    }
  }

  /**
   * Sends any request, well-formed or not (a WRITE carries `data`, if given),
   * and resolves with the reply's error code; a successful READ's data is read
   * and returned too.
   */
  async request(
    fields: { type: number; offset: number; length: number; flags?: number; data?: Uint8Array },
  ): Promise<{ error: number; data: Uint8Array | null }> {
    const handle = this.#handle++;
    await writeAll(this.conn, encodeRequest({ ...fields, handle }));
    if (fields.data) await writeAll(this.conn, fields.data);
    const header = new Uint8Array(REPLY_SIZE);
    await readExactly(this.conn, header);
    const reply = decodeReply(header);
    if (reply.handle !== handle) throw new Error(`reply for handle ${reply.handle}, not ${handle}`);
    let data: Uint8Array | null = null;
    if (reply.error === 0 && fields.type === Command.READ) {
      data = new Uint8Array(fields.length);
      await readExactly(this.conn, data);
    }
    return { error: reply.error, data };
  }

  /** Reads `length` bytes at `offset`; throws on an NBD error reply. */
  async read(offset: number, length: number): Promise<Uint8Array> {
    const handle = this.#handle++;
    await writeAll(this.conn, encodeRequest({ type: Command.READ, handle, offset, length }));
    const header = new Uint8Array(REPLY_SIZE);
    await readExactly(this.conn, header);
    const reply = decodeReply(header);
    if (reply.error !== 0) throw new Error(`NBD READ ${offset}+${length}: error ${reply.error}`);
    const data = new Uint8Array(length);
    await readExactly(this.conn, data);
    return data;
  }

  /** Writes `data` at `offset`; throws on an NBD error reply. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    const handle = this.#handle++;
    const request = encodeRequest({ type: Command.WRITE, handle, offset, length: data.length });
    await writeAll(this.conn, request);
    await writeAll(this.conn, data);
    const header = new Uint8Array(REPLY_SIZE);
    await readExactly(this.conn, header);
    const reply = decodeReply(header);
    if (reply.error !== 0) {
      throw new Error(`NBD WRITE ${offset}+${data.length}: error ${reply.error}`);
    }
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
}

async function readExactly(conn: Deno.Conn, into: Uint8Array): Promise<void> {
  let done = 0;
  while (done < into.length) {
    const n = await conn.read(into.subarray(done));
    if (n === null) throw new Error(`EOF after ${done} of ${into.length} bytes`);
    done += n;
  }
}

/**
 * Reads and writes in a loop until `signal` aborts; resolves with the number of
 * requests served. A failed request rejects (the load must not see errors).
 */
export async function runLoad(client: NbdTestClient, signal: AbortSignal): Promise<number> {
  const block = 64 * 1024;
  const blocks = Math.max(1, Math.floor(client.size / block));
  const data = new Uint8Array(block).fill(0x5a);
  let served = 0;
  while (!signal.aborted) {
    const offset = (served % blocks) * block;
    if (served % 2 === 0) await client.write(offset, data);
    else await client.read(offset, block);
    served++;
  }
  return served;
}
