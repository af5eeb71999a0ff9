/**
 * The IVBS wire codec: fixed byte fixtures written out by hand from
 * shared/ivbs-protocol.md, round trips of every packet, and malformed input.
 */
import assert from "node:assert/strict";
import {
  ATTACH_REPLY_SIZE,
  decodeAttachReply,
  decodeAttachRequest,
  decodeGreeting,
  decodeHeader,
  decodeLogin,
  decodeProxyList,
  decodeReadRequest,
  decodeWriteRequest,
  DEFAULT_IDLE_TIMEOUT_S,
  encodeAttachReply,
  encodeAttachRequest,
  encodeEmpty,
  encodeGreeting,
  encodeHeader,
  encodeLogin,
  encodeProxyList,
  encodeReadReply,
  encodeReadRequest,
  encodeWriteRequest,
  encodeWriteRequestHeader,
  GREETING_SIZE,
  hashPassword,
  HEADER_SIZE,
  IvbsProtocolError,
  LOGIN_SIZE,
  MAX_DATA_LEN,
  MAX_IO_LENGTH,
  MAX_PROXY_ENTRIES,
  Op,
  opName,
  stampHeader,
  Status,
  statusName,
} from "../src/ivbs/wire.ts";

/** Bytes from hex; spaces and newlines are ignored. */
function hex(text: string): Uint8Array {
  const clean = text.replace(/\s+/g, "");
  assert.equal(clean.length % 2, 0, "odd hex fixture");
  return Uint8Array.from(clean.match(/../g) ?? [], (pair) => parseInt(pair, 16));
}

/** `text` as ASCII, NUL-padded to `width` bytes, as hex. */
function padded(text: string, width: number): string {
  const bytes = [...new TextEncoder().encode(text)];
  while (bytes.length < width) bytes.push(0);
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join("");
}

const SID = hex("000102030405060708090a0b0c0d0e0f 101112131415161718191a1b1c1d1e1f");
const SID_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
// SHA-512("abc"), the FIPS 180-2 test vector.
const ABC_SHA512 = "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a" +
  "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f";

const payloadOf = (packet: Uint8Array) => packet.subarray(HEADER_SIZE);

function isProtocolError(pattern: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof IvbsProtocolError, `not an IvbsProtocolError: ${error}`);
    assert.equal(error.code, "IVBS_PROTOCOL");
    assert.match(error.message, pattern);
    return true;
  };
}

// ---- fixtures ----

Deno.test("encodeEmpty writes the 48-byte header big-endian: session id, op, status, data_len, sequence", () => {
  const packet = encodeEmpty(SID, Op.KEEPALIVE, 0x01020304, Status.OK);
  assert.deepEqual(packet, hex(SID_HEX + "00000002 00000000 00000000 01020304"));
  const reply = encodeEmpty(SID, Op.READ, 7, Status.USE_ANOTHER_PROXY);
  assert.deepEqual(reply, hex(SID_HEX + "0000012c 0000000c 00000000 00000007"));
});

Deno.test("decodeHeader reads every field of a fixture header", () => {
  const header = decodeHeader(hex(SID_HEX + "000000c8 0000000e 00000109 fffffffe"));
  assert.deepEqual(header.sessionId, SID);
  assert.equal(header.op, Op.ATTACH_TO_IMAGE);
  assert.equal(header.status, Status.EXPIRED);
  assert.equal(header.dataLen, 265);
  assert.equal(header.sequence, 0xfffffffe);
});

Deno.test("encodeGreeting matches the fixture: proxy_name[64] NUL-padded + idle_timeout_s u32", () => {
  const packet = encodeGreeting(SID, { proxyName: "p1", idleTimeoutS: 30 });
  assert.deepEqual(
    packet,
    hex(SID_HEX + "00000001 00000000 00000044 00000000" + padded("p1", 64) + "0000001e"),
  );
});

Deno.test("encodeLogin matches the fixture: username[32] + lowercase hex SHA-512 of the password", () => {
  assert.equal(hashPassword("abc"), ABC_SHA512);
  const packet = encodeLogin(SID, 1, { username: "bob", passwordHash: hashPassword("abc") });
  assert.deepEqual(
    packet,
    hex(
      SID_HEX + "00000064 00000000 000000a0 00000001" + padded("bob", 32) + padded(ABC_SHA512, 128),
    ),
  );
});

Deno.test("ATTACH_TO_IMAGE request and reply match their fixtures", () => {
  assert.deepEqual(
    encodeAttachRequest(SID, 2, "disk"),
    hex(SID_HEX + "000000c8 00000000 00000100 00000002" + padded("disk", 256)),
  );
  assert.deepEqual(
    encodeAttachReply(SID, 2, { imageName: "disk", size: 0x10_0000, readOnly: true }),
    hex(
      SID_HEX + "000000c8 00000000 00000109 00000002" + padded("disk", 256) +
        "0000000000100000 01",
    ),
  );
});

Deno.test("READ and WRITE requests match their fixtures", () => {
  assert.deepEqual(
    encodeReadRequest(SID, 7, 4096, 512),
    hex(SID_HEX + "0000012c 00000000 00000010 00000007 0000000000001000 0000000000000200"),
  );
  assert.deepEqual(
    encodeWriteRequest(SID, 8, 8, new Uint8Array([1, 2, 3])),
    hex(SID_HEX + "0000012d 00000000 0000000b 00000008 0000000000000008 010203"),
  );
  assert.deepEqual(
    encodeReadReply(SID, 7, new Uint8Array([9, 8])),
    hex(SID_HEX + "0000012c 00000000 00000002 00000007 0908"),
  );
});

Deno.test("encodeWriteRequestHeader is a WRITE packet cut before its data, data_len counting it", () => {
  const data = new Uint8Array([1, 2, 3]);
  const head = encodeWriteRequestHeader(SID, 8, 8, data.length);
  assert.deepEqual(head, hex(SID_HEX + "0000012d 00000000 0000000b 00000008 0000000000000008"));
  const whole = new Uint8Array(head.length + data.length);
  whole.set(head);
  whole.set(data, head.length);
  assert.deepEqual(whole, encodeWriteRequest(SID, 8, 8, data));
  assert.throws(() => encodeWriteRequestHeader(SID, 0, 0, MAX_IO_LENGTH + 1), IvbsProtocolError);
});

Deno.test("stampHeader writes the session id and sequence in place and leaves the rest", () => {
  const packet = encodeReadRequest(new Uint8Array(32), 0, 4096, 512);
  assert.equal(stampHeader(packet, SID, 7), Op.READ);
  assert.deepEqual(packet, encodeReadRequest(SID, 7, 4096, 512));
  assert.throws(() => stampHeader(packet.subarray(0, HEADER_SIZE - 1), SID, 1), IvbsProtocolError);
  const unknown = encodeEmpty(SID, Op.KEEPALIVE, 0);
  unknown.set([0, 0, 0x7f, 0x7f], 32);
  assert.throws(() => stampHeader(unknown, SID, 1), /unknown op/);
  assert.throws(() => stampHeader(encodeEmpty(SID, Op.KEEPALIVE, 0), SID.subarray(1), 1));
});

Deno.test("LIST_PROXIES matches the fixture: count u32, then host[64] + port u16 per entry", () => {
  const packet = encodeProxyList(SID, 0, [
    { host: "127.0.0.1", port: 11417 },
    { host: "::1", port: 1 },
  ]);
  assert.deepEqual(
    packet,
    hex(
      SID_HEX + "000000d3 00000000 00000088 00000000 00000002" +
        padded("127.0.0.1", 64) + "2c99" + padded("::1", 64) + "0001",
    ),
  );
});

// ---- round trips ----

Deno.test("every packet round-trips through its decoder", () => {
  const greeting = { proxyName: "proxy-ä", idleTimeoutS: 7 };
  assert.deepEqual(decodeGreeting(payloadOf(encodeGreeting(SID, greeting))), greeting);

  const login = { username: "x".repeat(32), passwordHash: hashPassword("pw") };
  assert.deepEqual(decodeLogin(payloadOf(encodeLogin(SID, 1, login))), login);

  const name = "n".repeat(256);
  assert.equal(decodeAttachRequest(payloadOf(encodeAttachRequest(SID, 1, name))), name);

  for (const readOnly of [false, true]) {
    const reply = { imageName: "img", size: Number.MAX_SAFE_INTEGER, readOnly };
    assert.deepEqual(decodeAttachReply(payloadOf(encodeAttachReply(SID, 1, reply))), reply);
  }

  assert.deepEqual(
    decodeReadRequest(payloadOf(encodeReadRequest(SID, 1, 2 ** 40, MAX_IO_LENGTH))),
    { offset: 2 ** 40, length: MAX_IO_LENGTH },
  );

  const data = Uint8Array.from({ length: 1000 }, (_, i) => i & 0xff);
  const write = decodeWriteRequest(payloadOf(encodeWriteRequest(SID, 1, 123, data)));
  assert.equal(write.offset, 123);
  assert.deepEqual(write.data, data);

  assert.deepEqual(payloadOf(encodeReadReply(SID, 1, data)), data);

  const proxies = [{ host: "h".repeat(64), port: 65535 }, { host: "10.0.0.1", port: 0 }];
  assert.deepEqual(decodeProxyList(payloadOf(encodeProxyList(SID, 0, proxies))), proxies);
  assert.deepEqual(decodeProxyList(payloadOf(encodeProxyList(SID, 0, []))), []);

  for (const op of Object.values(Op)) {
    const header = decodeHeader(encodeEmpty(SID, op, 99, Status.NOT_READY));
    assert.deepEqual(
      [header.op, header.status, header.dataLen, header.sequence],
      [op, Status.NOT_READY, 0, 99],
    );
  }
});

Deno.test("encodeHeader writes into a caller's buffer at an offset", () => {
  const target = new Uint8Array(10 + HEADER_SIZE).fill(0xff);
  encodeHeader({ sessionId: SID, op: Op.READ, dataLen: 5, sequence: 3 }, target, 10);
  assert.deepEqual(target.subarray(0, 10), new Uint8Array(10).fill(0xff));
  const header = decodeHeader(target.subarray(10));
  assert.deepEqual([header.op, header.status, header.dataLen, header.sequence], [Op.READ, 0, 5, 3]);
});

Deno.test("opName and statusName name every code and fall back for unknown ones", () => {
  assert.equal(opName(Op.LIST_PROXIES), "LIST_PROXIES");
  assert.equal(opName(999), "op 999");
  assert.equal(statusName(Status.USE_ANOTHER_PROXY), "USE_ANOTHER_PROXY");
  assert.equal(statusName(99), "status 99");
});

// ---- lenient forms the protocol allows ----

Deno.test("decodeGreeting accepts data_len 0 as an unnamed proxy with a 30 s idle timeout", () => {
  assert.deepEqual(decodeGreeting(new Uint8Array(0)), {
    proxyName: "",
    idleTimeoutS: DEFAULT_IDLE_TIMEOUT_S,
  });
  assert.equal(DEFAULT_IDLE_TIMEOUT_S, 30);
});

Deno.test("decodeAttachReply accepts 264 bytes (no flags: read-write) and 265 bytes", () => {
  const full = payloadOf(encodeAttachReply(SID, 1, { imageName: "a", size: 512, readOnly: true }));
  assert.equal(full.length, ATTACH_REPLY_SIZE);
  assert.deepEqual(decodeAttachReply(full), { imageName: "a", size: 512, readOnly: true });
  assert.deepEqual(decodeAttachReply(full.subarray(0, 264)), {
    imageName: "a",
    size: 512,
    readOnly: false,
  });
});

// ---- malformed input ----

Deno.test("decodeHeader rejects a truncated header", () => {
  const packet = encodeEmpty(SID, Op.KEEPALIVE, 1);
  for (const length of [0, 1, 47]) {
    assert.throws(() => decodeHeader(packet.subarray(0, length)), isProtocolError(/short header/));
  }
});

Deno.test("decodeHeader rejects an unknown op", () => {
  for (const op of [0, 3, 299, 0xffffffff]) {
    assert.throws(
      () =>
        decodeHeader(
          hex(SID_HEX + op.toString(16).padStart(8, "0") + "00000000 00000000 00000001"),
        ),
      isProtocolError(new RegExp(`unknown op ${op}`)),
    );
  }
});

Deno.test("decodeHeader rejects a data_len over 32 MiB + 16 and accepts exactly the limit", () => {
  const packet = encodeEmpty(SID, Op.WRITE, 1);
  const view = new DataView(packet.buffer);
  view.setUint32(40, MAX_DATA_LEN);
  assert.equal(decodeHeader(packet).dataLen, 33_554_448);
  for (const dataLen of [MAX_DATA_LEN + 1, 0xffffffff]) {
    view.setUint32(40, dataLen);
    assert.throws(() => decodeHeader(packet), isProtocolError(/exceeds/));
  }
});

Deno.test("payload decoders reject wrong sizes", () => {
  assert.throws(
    () => decodeGreeting(new Uint8Array(67)),
    isProtocolError(/GREETING payload must be 68/),
  );
  assert.throws(() => decodeGreeting(new Uint8Array(69)), isProtocolError(/68/));
  assert.throws(() => decodeLogin(new Uint8Array(LOGIN_SIZE - 1)), isProtocolError(/LOGIN/));
  assert.throws(() => decodeAttachRequest(new Uint8Array(255)), isProtocolError(/256/));
  for (const size of [0, 263, 266]) {
    assert.throws(() => decodeAttachReply(new Uint8Array(size)), isProtocolError(/264 or 265/));
  }
  assert.throws(() => decodeReadRequest(new Uint8Array(15)), isProtocolError(/READ request/));
  assert.throws(() => decodeReadRequest(new Uint8Array(17)), isProtocolError(/READ request/));
  assert.throws(() => decodeWriteRequest(new Uint8Array(7)), isProtocolError(/at least 8/));
  assert.throws(() => decodeProxyList(new Uint8Array(3)), isProtocolError(/at least 4/));
  // count says 2 entries, payload holds 1.
  const one = payloadOf(encodeProxyList(SID, 0, [{ host: "a", port: 1 }])).slice();
  new DataView(one.buffer).setUint32(0, 2);
  assert.throws(() => decodeProxyList(one), isProtocolError(/LIST_PROXIES/));
});

Deno.test("decodeProxyList rejects a count over the bound before looking at the payload", () => {
  const payload = new Uint8Array(4);
  new DataView(payload.buffer).setUint32(0, MAX_PROXY_ENTRIES + 1);
  assert.throws(() => decodeProxyList(payload), isProtocolError(/exceeds/));
});

Deno.test("READ and WRITE decoders reject lengths over 32 MiB and offsets past 2^53", () => {
  const read = payloadOf(encodeReadRequest(SID, 1, 0, 1)).slice();
  const view = new DataView(read.buffer);
  view.setBigUint64(8, BigInt(MAX_IO_LENGTH + 1));
  assert.throws(() => decodeReadRequest(read), isProtocolError(/I\/O length/));
  view.setBigUint64(8, 1n);
  view.setBigUint64(0, 2n ** 63n);
  assert.throws(() => decodeReadRequest(read), isProtocolError(/offset .* out of range/));
  assert.throws(
    () => decodeWriteRequest(new Uint8Array(8 + MAX_IO_LENGTH + 1)),
    isProtocolError(/I\/O length/),
  );
  const size = payloadOf(encodeAttachReply(SID, 1, { imageName: "a", size: 1, readOnly: false }))
    .slice();
  new DataView(size.buffer).setBigUint64(256, 2n ** 64n - 1n);
  assert.throws(() => decodeAttachReply(size), isProtocolError(/image size/));
});

Deno.test("encoders refuse values that do not fit their fields", () => {
  assert.throws(
    () => encodeEmpty(new Uint8Array(31), Op.KEEPALIVE, 1),
    isProtocolError(/32 bytes/),
  );
  assert.throws(
    () => encodeHeader({ sessionId: SID, op: Op.WRITE, dataLen: MAX_DATA_LEN + 1, sequence: 1 }),
    isProtocolError(/exceeds/),
  );
  assert.throws(
    () => encodeLogin(SID, 1, { username: "u".repeat(33), passwordHash: hashPassword("p") }),
    isProtocolError(/username/),
  );
  assert.throws(
    () => encodeLogin(SID, 1, { username: "u", passwordHash: hashPassword("p").toUpperCase() }),
    isProtocolError(/lowercase hex/),
  );
  assert.throws(
    () => encodeAttachRequest(SID, 1, "n".repeat(257)),
    isProtocolError(/longer than 256/),
  );
  assert.throws(() => encodeAttachRequest(SID, 1, "a\0b"), isProtocolError(/NUL/));
  assert.throws(() => encodeReadRequest(SID, 1, -1, 1), isProtocolError(/offset/));
  assert.throws(
    () => encodeReadRequest(SID, 1, 0, MAX_IO_LENGTH + 1),
    isProtocolError(/I\/O length/),
  );
  assert.throws(
    () => encodeGreeting(SID, { proxyName: "p".repeat(65), idleTimeoutS: 1 }),
    isProtocolError(/proxy name/),
  );
  assert.throws(
    () => encodeProxyList(SID, 0, Array(MAX_PROXY_ENTRIES + 1).fill({ host: "a", port: 1 })),
    isProtocolError(/exceed/),
  );
  assert.equal(GREETING_SIZE, 68);
});
