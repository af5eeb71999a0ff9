/** IVBS test server: GREETING, LOGIN and ATTACH_TO_IMAGE, spoken to in raw bytes. */
import assert from "node:assert/strict";
import {
  decodeAttachReply,
  decodeGreeting,
  GREETING_SIZE,
  Op,
  SESSION_ID_SIZE,
  Status,
} from "../src/ivbs/wire.ts";
import { MiB, RawClient, withServer } from "./support/ivbs_raw_client.ts";
import { setLogLevel } from "../src/log.ts";

// Expected refusals are logged at info/warn; keep the test output readable.
setLogLevel("error");

Deno.test("GREETING is the first packet: new session id, proxy name, idle timeout in whole seconds", async () => {
  await withServer({ idleTimeoutMs: 1500 }, async (server) => {
    const a = await RawClient.connect(server.addresses()[0]);
    const b = await RawClient.connect(server.addresses()[1]);
    try {
      const { header, payload } = a.greeting;
      assert.equal(header.op, Op.GREETING);
      assert.equal(header.status, Status.OK);
      assert.equal(header.sequence, 0);
      assert.equal(header.dataLen, GREETING_SIZE);
      assert.equal(header.sessionId.length, SESSION_ID_SIZE);
      assert.ok(header.sessionId.some((byte) => byte !== 0), "session id is all zeroes");
      assert.notDeepEqual(a.sessionId, b.sessionId);
      assert.deepEqual(decodeGreeting(payload), { proxyName: "proxy-0", idleTimeoutS: 2 });
      assert.equal(decodeGreeting(b.greeting.payload).proxyName, "proxy-1");
      assert.equal(server.stats.connectionsAccepted, 2);
    } finally {
      a.close();
      b.close();
    }
  });
});

Deno.test("LOGIN accepts the right password and denies a wrong one or an unknown user", async () => {
  await withServer({}, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      assert.equal(await client.login("alice", "wrong"), Status.PERMISSION_DENIED);
      assert.equal(await client.login("mallory", "alice-pw"), Status.PERMISSION_DENIED);
      assert.equal(await client.login("alice", "alice-pw"), Status.OK);
    } finally {
      client.close();
    }
  });
});

Deno.test("ATTACH_TO_IMAGE before LOGIN answers NOT_LOGGEDIN", async () => {
  await withServer({}, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      assert.equal((await client.attach("disk")).header.status, Status.NOT_LOGGEDIN);
    } finally {
      client.close();
    }
  });
});

Deno.test("ATTACH_TO_IMAGE refuses an unknown image and a user the image does not allow", async () => {
  await withServer({}, async (server) => {
    const alice = await RawClient.connect(server.addresses()[0]);
    const bob = await RawClient.connect(server.addresses()[0]);
    try {
      assert.equal(await alice.login("alice", "alice-pw"), Status.OK);
      assert.equal((await alice.attach("nope")).header.status, Status.NOT_FOUND);
      assert.equal((await alice.attach("private")).header.status, Status.PERMISSION_DENIED);
      assert.equal(await bob.login("bob", "bob-pw"), Status.OK);
      assert.equal((await bob.attach("private")).header.status, Status.OK);
    } finally {
      alice.close();
      bob.close();
    }
  });
});

Deno.test("ATTACH_TO_IMAGE replies name, size and the read-only flag in 265 bytes", async () => {
  await withServer({}, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      await client.login("alice", "alice-pw");
      const rw = await client.attach("disk");
      assert.equal(rw.header.dataLen, 265);
      assert.deepEqual(decodeAttachReply(rw.payload), {
        imageName: "disk",
        size: 16 * MiB,
        readOnly: false,
      });
      const other = await RawClient.connect(server.addresses()[0]);
      try {
        await other.login("alice", "alice-pw");
        const ro = await other.attach("golden");
        assert.deepEqual(decodeAttachReply(ro.payload), {
          imageName: "golden",
          size: MiB,
          readOnly: true,
        });
        assert.equal((await other.write(0, new Uint8Array(512))).header.status, Status.READ_ONLY);
        assert.equal((await other.read(0, 512)).header.status, Status.OK);
      } finally {
        other.close();
      }
    } finally {
      client.close();
    }
  });
});
