import assert from "node:assert/strict";
import {
  Command,
  CommandFlag,
  commandName,
  decodeReply,
  decodeRequest,
  encodeReply,
  encodeRequest,
  errnoFor,
  errorName,
  hasRequestPayload,
  NbdError,
  nbdErrorFor,
  NbdProtocolError,
  REPLY_SIZE,
  REQUEST_SIZE,
  TransmissionFlag,
  transmissionFlagNames,
} from "../src/nbd/wire.ts";

function hex(text: string): Uint8Array {
  const clean = text.replace(/\s+/g, "");
  return Uint8Array.from(clean.match(/../g)!.map((byte) => parseInt(byte, 16)));
}

// A WRITE with FUA, handle 0x0102030405060708, offset 1 MiB, length 4096.
const WRITE_FIXTURE = hex(`
  25609513 0001 0001 0102030405060708 0000000000100000 00001000
`);
// An EPERM reply to handle 0xdeadbeefcafef00d.
const REPLY_FIXTURE = hex(`67446698 00000001 deadbeefcafef00d`);

Deno.test("decodeRequest reads the fixed WRITE fixture field by field", () => {
  assert.equal(WRITE_FIXTURE.length, REQUEST_SIZE);
  assert.deepEqual(decodeRequest(WRITE_FIXTURE), {
    flags: CommandFlag.FUA,
    type: Command.WRITE,
    handle: 0x0102030405060708n,
    offset: 1024 * 1024,
    length: 4096,
  });
});

Deno.test("encodeRequest produces the fixture bytes", () => {
  const bytes = encodeRequest({
    type: Command.WRITE,
    flags: CommandFlag.FUA,
    handle: 0x0102030405060708n,
    offset: 1024 * 1024,
    length: 4096,
  });
  assert.deepEqual(bytes, WRITE_FIXTURE);
});

Deno.test("encodeRequest writes into a given buffer at an offset", () => {
  const target = new Uint8Array(3 + REQUEST_SIZE);
  encodeRequest({ type: Command.DISC, handle: 9n }, target, 3);
  assert.deepEqual(target.subarray(0, 3), new Uint8Array(3));
  assert.equal(decodeRequest(target.subarray(3)).type, Command.DISC);
});

Deno.test("decodeRequest rejects bad magic", () => {
  const bytes = WRITE_FIXTURE.slice();
  bytes[3] = 0x14;
  assert.throws(() => decodeRequest(bytes), (e: unknown) => {
    assert.ok(e instanceof NbdProtocolError);
    assert.equal(e.code, "NBD_PROTOCOL");
    assert.match(e.message, /bad NBD request magic 0x25609514/);
    return true;
  });
});

Deno.test("decodeRequest rejects truncated input", () => {
  assert.throws(() => decodeRequest(WRITE_FIXTURE.subarray(0, 27)), /short NBD request: 27 of 28/);
});

Deno.test("decodeRequest keeps unknown commands for the serve loop to answer", () => {
  const bytes = encodeRequest({ type: 77, handle: 1n });
  assert.equal(decodeRequest(bytes).type, 77);
  assert.equal(commandName(77), "command 77");
});

Deno.test("encodeRequest refuses a length that does not fit in a u32", () => {
  assert.throws(
    () => encodeRequest({ type: Command.READ, handle: 1n, length: 2 ** 32 }),
    NbdProtocolError,
  );
  assert.throws(() => encodeRequest({ type: Command.READ, handle: 1n, offset: -1 }), /offset -1/);
});

Deno.test("encodeReply produces the fixture bytes and decodeReply reads them back", () => {
  assert.deepEqual(encodeReply(0xdeadbeefcafef00dn, NbdError.EPERM), REPLY_FIXTURE);
  assert.equal(REPLY_FIXTURE.length, REPLY_SIZE);
  assert.deepEqual(decodeReply(REPLY_FIXTURE), {
    error: NbdError.EPERM,
    handle: 0xdeadbeefcafef00dn,
  });
});

Deno.test("decodeReply rejects bad magic and truncated input", () => {
  const bad = REPLY_FIXTURE.slice();
  bad[0] = 0;
  assert.throws(() => decodeReply(bad), /bad NBD reply magic/);
  assert.throws(() => decodeReply(REPLY_FIXTURE.subarray(0, 15)), /short NBD reply/);
});

Deno.test("nbdErrorFor maps every data-path errno to the NBD code of the same name", () => {
  const expected = {
    EPERM: 1,
    EIO: 5,
    ENOMEM: 12,
    EINVAL: 22,
    ENOSPC: 28,
    EOVERFLOW: 75,
    ENOTSUP: 95,
    ESHUTDOWN: 108,
  };
  for (const [errno, code] of Object.entries(expected)) {
    assert.equal(nbdErrorFor(errno), code, errno);
    assert.equal(errnoFor(code), errno);
    assert.equal(errorName(code), errno);
  }
});

Deno.test("nbdErrorFor turns an unknown errno into EIO, and errnoFor reads unknown codes as EINVAL", () => {
  assert.equal(nbdErrorFor("EWHATEVER"), NbdError.EIO);
  assert.equal(nbdErrorFor("OK"), NbdError.EIO);
  assert.equal(errnoFor(0), null);
  assert.equal(errnoFor(4242), "EINVAL");
  assert.equal(errorName(4242), "error 4242");
});

Deno.test("transmission flag values match linux/nbd.h", () => {
  assert.equal(TransmissionFlag.HAS_FLAGS, 1);
  assert.equal(TransmissionFlag.READ_ONLY, 2);
  assert.equal(TransmissionFlag.SEND_FLUSH, 4);
  assert.equal(TransmissionFlag.SEND_FUA, 8);
  assert.equal(TransmissionFlag.SEND_TRIM, 32);
  assert.equal(TransmissionFlag.SEND_WRITE_ZEROES, 64);
  assert.equal(transmissionFlagNames(0b1000011), "HAS_FLAGS|READ_ONLY|SEND_WRITE_ZEROES");
});

Deno.test("only WRITE carries a request payload", () => {
  for (const type of Object.values(Command)) {
    assert.equal(hasRequestPayload(type), type === Command.WRITE, commandName(type));
  }
});
