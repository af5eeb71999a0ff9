/**
 * The NBD fixed newstyle handshake, driven byte by byte by a raw test client
 * over a loopback TCP pair.
 */
import assert from "node:assert/strict";
import { type Backend, MemoryBackend } from "../src/block/backend.ts";
import {
  BLOCK_SIZE,
  decodeInfoRequest,
  type ExportEntry,
  HandshakeError,
  IHAVEOPT,
  Info,
  MAX_OPTION_DATA,
  MAX_SKIPPED_OPTION,
  NBD_MAGIC,
  negotiate,
  type NegotiatedExport,
  Opt,
  OPTION_REPLY_MAGIC,
  Rep,
} from "../src/nbd/handshake.ts";
import { TransmissionFlag } from "../src/nbd/wire.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A backend factory that counts opens and closes. */
function countedExport(
  name: string,
  make: () => Backend = () => new MemoryBackend(1 << 20),
  description?: string,
): ExportEntry & { opened: number; closed: number } {
  const entry = {
    name,
    description,
    opened: 0,
    closed: 0,
    open(): Promise<Backend> {
      entry.opened++;
      const backend = make();
      const close = backend.close.bind(backend);
      backend.close = () => {
        entry.closed++;
        return close();
      };
      return Promise.resolve(backend);
    },
  };
  return entry;
}

function table(...entries: ExportEntry[]): Map<string, ExportEntry> {
  return new Map(entries.map((e) => [e.name, e]));
}

/** Client side of the handshake: raw bytes in, parsed replies out. */
class RawClient {
  readonly #buffer: Uint8Array[] = [];
  constructor(readonly conn: Deno.Conn) {}

  async readExactly(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const got = await this.conn.read(out.subarray(filled));
      if (got === null) throw new Error(`EOF after ${filled} of ${n} bytes`);
      filled += got;
    }
    return out;
  }

  /** Resolves true when the server closed the connection (EOF or reset). */
  async closedByServer(): Promise<boolean> {
    try {
      return await this.conn.read(new Uint8Array(64)) === null;
    } catch {
      return true;
    }
  }

  async greeting(clientFlags = 3): Promise<number> {
    const bytes = await this.readExactly(18);
    const view = new DataView(bytes.buffer);
    assert.equal(view.getBigUint64(0), NBD_MAGIC);
    assert.equal(view.getBigUint64(8), IHAVEOPT);
    const flags = new Uint8Array(4);
    new DataView(flags.buffer).setUint32(0, clientFlags);
    await this.write(flags);
    return view.getUint16(16);
  }

  async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) done += await this.conn.write(bytes.subarray(done));
  }

  async option(option: number, data: Uint8Array = new Uint8Array(0), length = data.length) {
    await this.write(optionBytes(option, data, length));
  }

  async reply(): Promise<{ option: number; type: number; data: Uint8Array }> {
    const header = await this.readExactly(20);
    const view = new DataView(header.buffer);
    assert.equal(view.getBigUint64(0), OPTION_REPLY_MAGIC);
    const length = view.getUint32(16);
    const data = await this.readExactly(length);
    return { option: view.getUint32(8), type: view.getUint32(12), data };
  }

  /** Replies up to and including the final one (ACK or an error). */
  async replies(): Promise<{ option: number; type: number; data: Uint8Array }[]> {
    const all = [];
    for (;;) {
      const reply = await this.reply();
      all.push(reply);
      if (reply.type !== Rep.INFO && reply.type !== Rep.SERVER) return all;
    }
  }
}

function optionBytes(option: number, data: Uint8Array, length = data.length): Uint8Array {
  const bytes = new Uint8Array(16 + data.length);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, IHAVEOPT);
  view.setUint32(8, option);
  view.setUint32(12, length);
  bytes.set(data, 16);
  return bytes;
}

function goData(name: string, infos: number[] = []): Uint8Array {
  const nameBytes = encoder.encode(name);
  const data = new Uint8Array(4 + nameBytes.length + 2 + 2 * infos.length);
  const view = new DataView(data.buffer);
  view.setUint32(0, nameBytes.length);
  data.set(nameBytes, 4);
  view.setUint16(4 + nameBytes.length, infos.length);
  infos.forEach((info, i) => view.setUint16(6 + nameBytes.length + 2 * i, info));
  return data;
}

/** Runs `negotiate` on the server end of a loopback pair and `client` on the other. */
async function withHandshake(
  exports: Map<string, ExportEntry>,
  client: (c: RawClient) => Promise<void>,
  options: { timeoutMs?: number; maxOptions?: number } = {},
): Promise<{ result: NegotiatedExport | null; error: unknown }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  const [clientConn, serverConn] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port }),
    listener.accept(),
  ]);
  listener.close();
  const outcome = negotiate(serverConn, exports, options).then(
    (result) => ({ result, error: undefined }),
    (error) => {
      closeQuietly(serverConn); // as the export server does after a failed handshake
      return { result: null, error };
    },
  );
  try {
    await client(new RawClient(clientConn));
    return await outcome;
  } finally {
    const done = await outcome;
    await done.result?.backend.close();
    clientConn.close();
    closeQuietly(serverConn);
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed (by the handshake deadline or an earlier failure).
  }
}

function u32(data: Uint8Array, at: number): number {
  return new DataView(data.buffer, data.byteOffset).getUint32(at);
}

Deno.test("server greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES", async () => {
  const { result } = await withHandshake(table(countedExport("a")), async (c) => {
    assert.equal(await c.greeting(), 0b11);
    await c.conn.closeWrite();
  });
  assert.equal(result, null);
});

Deno.test("GO answers INFO_EXPORT and BLOCK_SIZE, then ACK, and hands over the backend", async () => {
  const disk = countedExport("disk", () => new MemoryBackend(3 * 4096, { readOnly: true }));
  const { result } = await withHandshake(table(disk), async (c) => {
    await c.greeting();
    await c.option(Opt.GO, goData("disk", [Info.BLOCK_SIZE]));
    const replies = await c.replies();
    assert.deepEqual(replies.map((r) => r.type), [Rep.INFO, Rep.INFO, Rep.ACK]);
    assert.ok(replies.every((r) => r.option === Opt.GO));
    const exportInfo = new DataView(replies[0].data.buffer);
    assert.equal(replies[0].data.length, 12);
    assert.equal(exportInfo.getUint16(0), Info.EXPORT);
    assert.equal(exportInfo.getBigUint64(2), 3n * 4096n);
    const flags = exportInfo.getUint16(10);
    assert.ok(flags & TransmissionFlag.HAS_FLAGS);
    assert.ok(flags & TransmissionFlag.READ_ONLY);
    const blockSize = new DataView(replies[1].data.buffer);
    assert.equal(replies[1].data.length, 14);
    assert.equal(blockSize.getUint16(0), Info.BLOCK_SIZE);
    assert.deepEqual(
      [blockSize.getUint32(2), blockSize.getUint32(6), blockSize.getUint32(10)],
      [BLOCK_SIZE.minimum, BLOCK_SIZE.preferred, BLOCK_SIZE.maximum],
    );
  });
  assert.equal(result?.name, "disk");
  assert.equal(result?.backend.size, 3 * 4096);
  assert.ok(result!.flags & TransmissionFlag.READ_ONLY);
  assert.equal(disk.opened, 1);
  assert.equal(disk.closed, 1, "closed once, by its new owner (the test)");
});

Deno.test("GO for an unknown export gets ERR_UNKNOWN and the handshake goes on", async () => {
  const disk = countedExport("disk");
  const { result } = await withHandshake(table(disk), async (c) => {
    await c.greeting();
    await c.option(Opt.GO, goData("nope"));
    const [unknown] = await c.replies();
    assert.equal(unknown.type, Rep.ERR_UNKNOWN);
    assert.match(decoder.decode(unknown.data), /unknown export "nope"/);
    await c.option(Opt.GO, goData("disk"));
    assert.equal((await c.replies()).at(-1)?.type, Rep.ACK);
  });
  assert.equal(result?.name, "disk");
});

Deno.test("INFO then GO on the same export opens one backend", async () => {
  const disk = countedExport("disk");
  const { result } = await withHandshake(table(disk), async (c) => {
    await c.greeting();
    await c.option(Opt.INFO, goData("disk"));
    assert.equal((await c.replies()).at(-1)?.type, Rep.ACK);
    await c.option(Opt.GO, goData("disk"));
    assert.equal((await c.replies()).at(-1)?.type, Rep.ACK);
  });
  assert.equal(result?.name, "disk");
  assert.equal(disk.opened, 1);
});

Deno.test("a backend opened for INFO is closed when the client aborts", async () => {
  const disk = countedExport("disk");
  const { result } = await withHandshake(table(disk), async (c) => {
    await c.greeting();
    await c.option(Opt.INFO, goData("disk"));
    await c.replies();
    await c.option(Opt.ABORT);
    const ack = await c.reply();
    assert.equal(ack.option, Opt.ABORT);
    assert.equal(ack.type, Rep.ACK);
  });
  assert.equal(result, null);
  assert.deepEqual([disk.opened, disk.closed], [1, 1]);
});

Deno.test("INFO replies with NAME and DESCRIPTION when asked", async () => {
  const disk = countedExport("disk", undefined, "a test disk");
  await withHandshake(table(disk), async (c) => {
    await c.greeting();
    await c.option(Opt.INFO, goData("disk", [Info.NAME, Info.DESCRIPTION]));
    const infos = (await c.replies()).filter((r) => r.type === Rep.INFO);
    const byType = new Map(infos.map((r) => [new DataView(r.data.buffer).getUint16(0), r.data]));
    assert.equal(decoder.decode(byType.get(Info.NAME)!.subarray(2)), "disk");
    assert.equal(decoder.decode(byType.get(Info.DESCRIPTION)!.subarray(2)), "a test disk");
    await c.option(Opt.ABORT);
    await c.reply();
  });
});

Deno.test("the empty name selects the only export and INFO_NAME tells its real name", async () => {
  const disk = countedExport("disk");
  const { result } = await withHandshake(table(disk), async (c) => {
    await c.greeting();
    await c.option(Opt.GO, goData(""));
    const replies = await c.replies();
    const name = replies.find((r) => new DataView(r.data.buffer).getUint16(0) === Info.NAME);
    assert.equal(decoder.decode(name!.data.subarray(2)), "disk");
  });
  assert.equal(result?.name, "disk");
});

Deno.test("the empty name is unknown when several exports exist", async () => {
  await withHandshake(table(countedExport("a"), countedExport("b")), async (c) => {
    await c.greeting();
    await c.option(Opt.GO, goData(""));
    assert.equal((await c.reply()).type, Rep.ERR_UNKNOWN);
    await c.option(Opt.ABORT);
    await c.reply();
  });
});

Deno.test("LIST answers one SERVER reply per export, then ACK", async () => {
  await withHandshake(
    table(countedExport("a"), countedExport("bb", undefined, "two")),
    async (c) => {
      await c.greeting();
      await c.option(Opt.LIST);
      const replies = await c.replies();
      assert.deepEqual(replies.map((r) => r.type), [Rep.SERVER, Rep.SERVER, Rep.ACK]);
      const entries = replies.slice(0, 2).map((r) => {
        const nameLength = u32(r.data, 0);
        return [
          decoder.decode(r.data.subarray(4, 4 + nameLength)),
          decoder.decode(r.data.subarray(4 + nameLength)),
        ];
      });
      assert.deepEqual(entries, [["a", ""], ["bb", "two"]]);
      await c.conn.closeWrite();
    },
  );
});

Deno.test("LIST with data is ERR_INVALID", async () => {
  await withHandshake(table(countedExport("a")), async (c) => {
    await c.greeting();
    await c.option(Opt.LIST, new Uint8Array(3));
    assert.equal((await c.reply()).type, Rep.ERR_INVALID);
    await c.conn.closeWrite();
  });
});

Deno.test("malformed GO data is ERR_INVALID and the next option still works", async () => {
  const disk = countedExport("disk");
  const { result } = await withHandshake(table(disk), async (c) => {
    await c.greeting();
    const bad = goData("disk");
    new DataView(bad.buffer).setUint32(0, 1000); // name length past the option's end
    await c.option(Opt.GO, bad);
    const invalid = await c.reply();
    assert.equal(invalid.type, Rep.ERR_INVALID);
    assert.match(decoder.decode(invalid.data), /name length 1000/);
    await c.option(Opt.GO, goData("disk"));
    assert.equal((await c.replies()).at(-1)?.type, Rep.ACK);
  });
  assert.equal(result?.name, "disk");
  assert.equal(disk.opened, 1);
});

Deno.test("options we do not do get ERR_UNSUP", async () => {
  await withHandshake(table(countedExport("a")), async (c) => {
    await c.greeting();
    for (const option of [Opt.STARTTLS, Opt.STRUCTURED_REPLY, Opt.SET_META_CONTEXT, 99]) {
      await c.option(option, new Uint8Array(5));
      const reply = await c.reply();
      assert.equal(reply.option, option);
      assert.equal(reply.type, Rep.ERR_UNSUP);
    }
    await c.conn.closeWrite();
  });
});

Deno.test("EXPORT_NAME answers size, flags and 124 zero bytes without NO_ZEROES", async () => {
  const disk = countedExport("disk", () => new MemoryBackend(8192));
  const { result } = await withHandshake(table(disk), async (c) => {
    await c.greeting(1); // FIXED_NEWSTYLE only
    await c.option(Opt.EXPORT_NAME, encoder.encode("disk"));
    const reply = await c.readExactly(134);
    const view = new DataView(reply.buffer);
    assert.equal(view.getBigUint64(0), 8192n);
    assert.ok(view.getUint16(8) & TransmissionFlag.HAS_FLAGS);
    assert.ok(reply.subarray(10).every((b) => b === 0));
  });
  assert.equal(result?.name, "disk");
});

Deno.test("EXPORT_NAME with NO_ZEROES answers exactly 10 bytes", async () => {
  const { result } = await withHandshake(table(countedExport("disk")), async (c) => {
    await c.greeting(3);
    // The first transmission request rides in the same write; the reader must keep it.
    const request = new Uint8Array(28).fill(0x5a);
    const option = optionBytes(Opt.EXPORT_NAME, encoder.encode("disk"));
    await c.write(new Uint8Array([...option, ...request]));
    assert.equal((await c.readExactly(10)).length, 10);
  });
  const next = new Uint8Array(28);
  assert.ok(await result!.reader.readFull(next, "request"));
  assert.ok(next.every((b) => b === 0x5a));
});

Deno.test("EXPORT_NAME for an unknown export drops the connection", async () => {
  const { error } = await withHandshake(table(countedExport("disk")), async (c) => {
    await c.greeting();
    await c.option(Opt.EXPORT_NAME, encoder.encode("other"));
  });
  assert.ok(error instanceof HandshakeError);
  assert.equal(error.code, "UNKNOWN_EXPORT");
});

Deno.test("a backend that fails to open gives ERR_UNKNOWN and nothing leaks", async () => {
  const broken: ExportEntry = {
    name: "broken",
    open: () => Promise.reject(new Error("no proxy answered")),
  };
  await withHandshake(table(broken), async (c) => {
    await c.greeting();
    await c.option(Opt.GO, goData("broken"));
    const reply = await c.reply();
    assert.equal(reply.type, Rep.ERR_UNKNOWN);
    assert.match(decoder.decode(reply.data), /not available/);
    assert.doesNotMatch(decoder.decode(reply.data), /proxy/, "the cause stays in our log");
    await c.option(Opt.ABORT);
    await c.reply();
  });
});

Deno.test("unknown client flags drop the connection", async () => {
  const { error } = await withHandshake(table(countedExport("a")), async (c) => {
    await c.greeting(0x4);
  });
  assert.ok(error instanceof HandshakeError);
  assert.equal(error.code, "PROTOCOL");
});

Deno.test("a bad option magic drops the connection", async () => {
  const { error } = await withHandshake(table(countedExport("a")), async (c) => {
    await c.greeting();
    const bytes = optionBytes(Opt.LIST, new Uint8Array(0));
    bytes[0] ^= 0xff;
    await c.write(bytes);
  });
  assert.ok(error instanceof HandshakeError);
  assert.equal(error.code, "PROTOCOL");
});

Deno.test("an overlong option is skipped without reading it into memory", async () => {
  const disk = countedExport("disk");
  const { result } = await withHandshake(table(disk), async (c) => {
    await c.greeting();
    await c.option(77, new Uint8Array(100_000));
    assert.equal((await c.reply()).type, Rep.ERR_UNSUP);
    await c.option(Opt.GO, new Uint8Array(MAX_OPTION_DATA + 1));
    assert.equal((await c.reply()).type, Rep.ERR_TOO_BIG);
    await c.option(Opt.GO, goData("disk"));
    assert.equal((await c.replies()).at(-1)?.type, Rep.ACK);
  });
  assert.equal(result?.name, "disk");
});

Deno.test("an option longer than the skip limit drops the connection", async () => {
  const { error } = await withHandshake(table(countedExport("a")), async (c) => {
    await c.greeting();
    // Only the header: the server must give up without waiting for 4 GiB.
    await c.option(Opt.GO, new Uint8Array(0), 0xffff_ffff);
    assert.ok(await c.closedByServer());
  });
  assert.ok(error instanceof HandshakeError);
  assert.equal(error.code, "LIMIT");
  assert.ok(MAX_SKIPPED_OPTION < 0xffff_ffff);
});

Deno.test("an overlong EXPORT_NAME drops the connection", async () => {
  const { error } = await withHandshake(table(countedExport("a")), async (c) => {
    await c.greeting();
    await c.option(Opt.EXPORT_NAME, new Uint8Array(0), MAX_OPTION_DATA + 1);
  });
  assert.ok(error instanceof HandshakeError);
  assert.equal(error.code, "LIMIT");
});

Deno.test("more options than allowed drop the connection", async () => {
  const { error } = await withHandshake(table(countedExport("a")), async (c) => {
    await c.greeting();
    for (let i = 0; i < 3; i++) {
      await c.option(Opt.LIST);
      await c.replies();
    }
    await c.option(Opt.LIST);
    assert.ok(await c.closedByServer());
  }, { maxOptions: 3 });
  assert.ok(error instanceof HandshakeError);
  assert.equal(error.code, "LIMIT");
});

Deno.test("a client that stays silent is dropped at the handshake deadline", async () => {
  const { error } = await withHandshake(table(countedExport("a")), async (c) => {
    await c.greeting();
    assert.ok(await c.closedByServer());
  }, { timeoutMs: 50 });
  assert.ok(error instanceof HandshakeError);
  assert.equal(error.code, "TIMEOUT");
});

Deno.test("a client that hangs up between options ends the handshake quietly", async () => {
  const disk = countedExport("disk");
  const { result, error } = await withHandshake(table(disk), async (c) => {
    await c.greeting();
    await c.option(Opt.INFO, goData("disk"));
    await c.replies();
    await c.conn.closeWrite();
  });
  assert.equal(error, undefined);
  assert.equal(result, null);
  assert.deepEqual([disk.opened, disk.closed], [1, 1]);
});

Deno.test("decodeInfoRequest reads the name and the info requests", () => {
  const parsed = decodeInfoRequest(goData("vm-1", [Info.BLOCK_SIZE, Info.NAME]));
  assert.deepEqual(parsed, { name: "vm-1", infos: new Set([Info.BLOCK_SIZE, Info.NAME]) });
});

Deno.test("decodeInfoRequest rejects short data, a wrong count and bad names", () => {
  assert.match(decodeInfoRequest(new Uint8Array(5)) as string, /at least 6/);
  const wrongCount = goData("x", [1]);
  new DataView(wrongCount.buffer).setUint16(5, 2);
  assert.match(decodeInfoRequest(wrongCount) as string, /2 info requests need/);
  const withNul = goData("a\0b");
  assert.match(decodeInfoRequest(withNul) as string, /not a valid NBD string/);
  const badUtf8 = goData("ab");
  badUtf8[4] = 0xff;
  assert.match(decodeInfoRequest(badUtf8) as string, /not a valid NBD string/);
});
