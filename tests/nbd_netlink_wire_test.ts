import assert from "node:assert/strict";
import {
  decodeNetlinkMessages,
  encodeGetFamily,
  encodeNbdConnect,
  encodeNbdDisconnect,
  encodeNbdReconfigure,
  encodeNbdStatus,
  NbdCmd,
  NetlinkWireError,
  parseAttrs,
  parseFamily,
  parseNbdIndex,
  parseNbdStatus,
} from "../src/nbd/netlink_wire.ts";

/** "b4 00 00 00 10 00 …" → bytes. */
function hex(text: string): Uint8Array {
  const digits = text.replace(/\s+/g, "");
  return Uint8Array.from(digits.match(/../g)!, (pair) => parseInt(pair, 16));
}

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

Deno.test("encodeGetFamily asks the controller (type 0x10, cmd 3, version 2) for a family by name", () => {
  assert.equal(
    toHex(encodeGetFamily("nbd", 3)),
    // nlmsghdr: len 28, type 0x10, flags REQUEST|ACK, seq 3, pid 0
    "1c 00 00 00 10 00 05 00 03 00 00 00 00 00 00 00 " +
      // genlmsghdr: cmd GETFAMILY, version 2; attr FAMILY_NAME "nbd\0"
      "03 02 00 00 08 00 02 00 6e 62 64 00",
  );
});

/** The reply of Debian 6.1's kernel to GETFAMILY "nbd" (captured in the NBD VM). */
const FAMILY_REPLY = hex(
  "b4 00 00 00 10 00 00 00 03 00 00 00 a1 00 00 00 01 02 00 00 08 00 02 00 6e 62 64 00" +
    " 06 00 01 00 20 00 00 00 08 00 03 00 01 00 00 00 08 00 04 00 00 00 00 00 08 00 05 00" +
    " 0a 00 00 00 54 00 06 00 14 00 01 00 08 00 01 00 01 00 00 00 08 00 02 00 0a 00 00 00" +
    " 14 00 02 00 08 00 01 00 02 00 00 00 08 00 02 00 0a 00 00 00 14 00 03 00 08 00 01 00" +
    " 03 00 00 00 08 00 02 00 0a 00 00 00 14 00 04 00 08 00 01 00 05 00 00 00 08 00 02 00" +
    " 0a 00 00 00 24 00 07 00 20 00 01 00 08 00 02 00 09 00 00 00 11 00 01 00 6e 62 64 5f" +
    " 6d 63 5f 67 72 6f 75 70 00 00 00 00",
);

Deno.test("parseFamily reads the family id from the kernel's reply", () => {
  const [message] = decodeNetlinkMessages(FAMILY_REPLY);
  assert.equal(message.kind, "genl");
  if (message.kind !== "genl") return;
  assert.equal(message.seq, 3);
  assert.equal(message.cmd, 1); // CTRL_CMD_NEWFAMILY
  const family = parseFamily(message.attrs);
  assert.equal(family.id, 0x20);
  assert.equal(family.name, "nbd");
  assert.deepEqual(family, { id: 0x20, name: "nbd" });
});

Deno.test("an NLMSG_ERROR with 0 is an ack; with -errno an error naming that errno", () => {
  // Captured: the ack of GETFAMILY seq 3 (error 0, then the request's header).
  const ack = hex(
    "24 00 00 00 02 00 00 01 03 00 00 00 a1 00 00 00 00 00 00 00" +
      " 1c 00 00 00 10 00 05 00 03 00 00 00 00 00 00 00",
  );
  assert.deepEqual(decodeNetlinkMessages(ack), [{ kind: "ack", seq: 3 }]);
  const enoent = ack.slice();
  new DataView(enoent.buffer).setInt32(16, -2, true);
  assert.deepEqual(decodeNetlinkMessages(enoent), [{ kind: "error", seq: 3, errno: 2 }]);
});

Deno.test("decodeNetlinkMessages splits several messages in one datagram", () => {
  const ack = hex("14 00 00 00 02 00 00 00 07 00 00 00 00 00 00 00 00 00 00 00");
  const both = new Uint8Array(FAMILY_REPLY.length + ack.length);
  both.set(FAMILY_REPLY);
  both.set(ack, FAMILY_REPLY.length);
  assert.deepEqual(decodeNetlinkMessages(both).map((m) => m.kind), ["genl", "ack"]);
});

Deno.test("decodeNetlinkMessages rejects a truncated header and a length past the end", () => {
  assert.throws(() => decodeNetlinkMessages(FAMILY_REPLY.subarray(0, 10)), NetlinkWireError);
  assert.throws(() => decodeNetlinkMessages(FAMILY_REPLY.subarray(0, 100)), NetlinkWireError);
  const badAttr = hex("14 00 00 00 20 00 00 00 01 00 00 00 00 00 00 00 01 01 00 00 09 00 01 00");
  new DataView(badAttr.buffer).setUint32(0, badAttr.length, true);
  assert.throws(() => decodeNetlinkMessages(badAttr), NetlinkWireError);
});

Deno.test("encodeNbdConnect: u64 attributes take 8 bytes, SOCKETS nests SOCK_ITEM nests SOCK_FD", () => {
  const bytes = encodeNbdConnect(0x20, 9, {
    sizeBytes: 0x1_0000_0000, // 4 GiB: needs the high word
    blockSize: 4096,
    timeoutS: 0,
    serverFlags: 0x0001,
    clientFlags: 0,
    deadConnTimeoutS: 120,
    backendId: "ivbsnetd:ab",
    sockets: [7],
  });
  assert.equal(
    toHex(bytes),
    [
      "7c 00 00 00 20 00 05 00 09 00 00 00 00 00 00 00", // len 124, family 0x20, REQUEST|ACK, seq 9
      "01 01 00 00", // CONNECT, version 1
      "0c 00 02 00 00 00 00 00 01 00 00 00", // SIZE_BYTES u64 4 GiB
      "0c 00 03 00 00 10 00 00 00 00 00 00", // BLOCK_SIZE_BYTES u64 4096
      "0c 00 04 00 00 00 00 00 00 00 00 00", // TIMEOUT u64 0
      "0c 00 05 00 01 00 00 00 00 00 00 00", // SERVER_FLAGS u64 HAS_FLAGS
      "0c 00 06 00 00 00 00 00 00 00 00 00", // CLIENT_FLAGS u64 0: survives our exit
      "0c 00 08 00 78 00 00 00 00 00 00 00", // DEAD_CONN_TIMEOUT u64 120
      "10 00 0a 00 69 76 62 73 6e 65 74 64 3a 61 62 00", // BACKEND_IDENTIFIER "ivbsnetd:ab\0"
      "10 00 07 00 0c 00 01 00 08 00 01 00 07 00 00 00", // SOCKETS > SOCK_ITEM > SOCK_FD 7
    ].join(" "),
  );
  // Without an index the kernel picks the device; with one, INDEX (u32) comes first.
  const indexed = encodeNbdConnect(0x20, 9, {
    index: 3,
    sizeBytes: 4096,
    blockSize: 4096,
    timeoutS: 0,
    serverFlags: 1,
    clientFlags: 0,
    deadConnTimeoutS: 1,
    backendId: "x",
    sockets: [7],
  });
  assert.equal(toHex(indexed.subarray(20, 28)), "08 00 01 00 03 00 00 00");
});

Deno.test("encodeNbdReconfigure carries index, the same backend id and the new socket", () => {
  assert.equal(
    toHex(encodeNbdReconfigure(0x20, 4, { index: 2, backendId: "b", sockets: [11] })),
    [
      "34 00 00 00 20 00 05 00 04 00 00 00 00 00 00 00",
      "03 01 00 00", // RECONFIGURE
      "08 00 01 00 02 00 00 00", // INDEX 2
      "06 00 0a 00 62 00 00 00", // BACKEND_IDENTIFIER "b\0", padded to 8
      "10 00 07 00 0c 00 01 00 08 00 01 00 0b 00 00 00", // SOCKETS > SOCK_ITEM > SOCK_FD 11
    ].join(" "),
  );
});

Deno.test("encodeNbdDisconnect and encodeNbdStatus name the device by INDEX", () => {
  assert.equal(
    toHex(encodeNbdDisconnect(0x20, 5, 1)),
    "1c 00 00 00 20 00 05 00 05 00 00 00 00 00 00 00 02 01 00 00 08 00 01 00 01 00 00 00",
  );
  assert.equal(
    toHex(encodeNbdStatus(0x20, 6)),
    "14 00 00 00 20 00 05 00 06 00 00 00 00 00 00 00 05 01 00 00",
  );
  assert.equal(toHex(encodeNbdStatus(0x20, 6, 0).subarray(20)), "08 00 01 00 00 00 00 00");
});

Deno.test("the CONNECT reply's NBD_ATTR_INDEX is the device the kernel chose", () => {
  const reply = hex(
    "1c 00 00 00 20 00 00 00 09 00 00 00 a1 00 00 00 01 01 00 00 08 00 01 00 05 00 00 00",
  );
  const [message] = decodeNetlinkMessages(reply);
  assert.ok(message.kind === "genl" && message.cmd === NbdCmd.CONNECT);
  assert.equal(parseNbdIndex(message.attrs), 5);
});

Deno.test("parseNbdStatus reads DEVICE_LIST > DEVICE_ITEM > INDEX, CONNECTED (u8)", () => {
  const attrs = parseAttrs(hex(
    "2c 00 09 00" + // DEVICE_LIST
      " 14 00 01 00 08 00 01 00 00 00 00 00 05 00 02 00 01 00 00 00" + // nbd0 connected
      " 14 00 01 00 08 00 01 00 03 00 00 00 05 00 02 00 00 00 00 00", // nbd3 not
  ));
  assert.deepEqual(parseNbdStatus(attrs), [
    { index: 0, connected: true },
    { index: 3, connected: false },
  ]);
});

Deno.test("parseAttrs masks NLA_F_NESTED off the type and keeps it as a flag", () => {
  const [attr] = parseAttrs(hex("0c 00 07 80 08 00 01 00 07 00 00 00"));
  assert.equal(attr.type, 7);
  assert.equal(attr.nested, true);
});
