/** IVBS test server: how long a connection lives (idle timeout, bad ops, oversize frames). */
import assert from "node:assert/strict";
import { encodeEmpty, Op, Status } from "../src/ivbs/wire.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { attached, RawClient, withServer } from "./support/ivbs_raw_client.ts";
import { setLogLevel } from "../src/log.ts";

// Expected refusals are logged at info/warn; keep the test output readable.
setLogLevel("error");

Deno.test("a connection that sends nothing for idleTimeoutMs is closed", async () => {
  const clock = new ManualClock();
  await withServer({ idleTimeoutMs: 200, clock }, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      clock.advance(200);
      assert.equal(await client.next(), null);
    } finally {
      client.close();
    }
  });
});

Deno.test("keepalives keep a connection open past the idle timeout, and it closes once they stop", async () => {
  const clock = new ManualClock();
  await withServer({ idleTimeoutMs: 400, clock }, async (server) => {
    const client = await RawClient.connect(server.addresses()[0]);
    try {
      // 20 keepalives 50 ms apart: 1 s, well past 400 ms.
      for (let i = 0; i < 20; i++) {
        const reply = await client.call(encodeEmpty(client.sessionId, Op.KEEPALIVE, i));
        assert.equal(reply.header.sequence, i);
        clock.advance(50);
      }
      clock.advance(400);
      assert.equal(await client.next(), null);
    } finally {
      client.close();
    }
  });
});

Deno.test("an unknown op closes that connection while the server keeps serving others", async () => {
  await withServer({}, async (server) => {
    const bad = await attached(server);
    const good = await attached(server);
    try {
      const packet = encodeEmpty(bad.sessionId, Op.KEEPALIVE, 1);
      new DataView(packet.buffer).setUint32(32, 999); // op field
      await bad.send(packet);
      assert.equal(await bad.next(), null);
      assert.equal((await good.read(0, 512)).header.status, Status.OK);
    } finally {
      bad.close();
      good.close();
    }
  });
});

Deno.test("a data_len over the protocol limit closes the connection without allocating it", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server);
    try {
      const packet = encodeEmpty(client.sessionId, Op.WRITE, 1);
      new DataView(packet.buffer).setUint32(40, 0xffff_ffff); // data_len field
      await client.send(packet);
      assert.equal(await client.next(), null);
      const next = await attached(server);
      next.close();
    } finally {
      client.close();
    }
  });
});
