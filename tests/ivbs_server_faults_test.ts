/** IVBS test server: injected faults (stop, stall, held replies, drops, injected statuses). */
import assert from "node:assert/strict";
import {
  encodeEmpty,
  encodeReadRequest,
  encodeWriteRequest,
  Op,
  Status,
} from "../src/ivbs/wire.ts";
import { ManualClock } from "./support/manual_clock.ts";
import {
  attached,
  pattern,
  RawClient,
  settlesWithin,
  withServer,
} from "./support/ivbs_raw_client.ts";
import { setLogLevel } from "../src/log.ts";

// Expected refusals are logged at info/warn; keep the test output readable.
setLogLevel("error");

Deno.test("stopProxy closes its connections and port; startProxy listens on the same port", async () => {
  await withServer({}, async (server) => {
    const port = server.proxies[0].port;
    const client = await attached(server, "disk", 0);
    const other = await attached(server, "disk", 1);
    try {
      await server.stopProxy(0);
      assert.equal(server.proxies[0].running, false);
      assert.equal(server.proxies[0].connections, 0);
      assert.equal(await client.next(), null);
      await assert.rejects(
        Deno.connect({ hostname: "127.0.0.1", port }),
        Deno.errors.ConnectionRefused,
      );
      assert.deepEqual(server.addresses(), [{ host: "127.0.0.1", port: server.proxies[1].port }]);
      assert.equal((await other.read(0, 512)).header.status, Status.OK);

      await server.startProxy(0);
      assert.equal(server.proxies[0].port, port);
      assert.equal(server.proxies[0].running, true);
      const again = await attached(server, "disk", 0);
      assert.equal((await again.read(0, 512)).header.status, Status.OK);
      again.close();
    } finally {
      client.close();
      other.close();
    }
  });
});

Deno.test("stallProxy keeps connections open but answers nothing, keepalive included, until unstalled", async () => {
  const clock = new ManualClock();
  await withServer({ idleTimeoutMs: 200, clock }, async (server) => {
    const client = await attached(server, "disk", 0);
    let late: RawClient | undefined;
    try {
      server.stallProxy(0, true);
      assert.equal(server.proxies[0].stalled, true);
      await client.send(encodeEmpty(client.sessionId, Op.KEEPALIVE, 9));
      const reply = client.reply();
      // Twice the idle timeout: a stalled proxy does not close idle connections.
      clock.advance(400);
      // Silence has no event to wait for: a short real wait, far above a loopback answer.
      assert.equal(await settlesWithin(reply, 100), false, "a stalled proxy answered");
      const connecting = RawClient.connect(server.addresses()[0]);
      assert.equal(await settlesWithin(connecting, 100), false, "a stalled proxy sent GREETING");
      assert.equal(server.proxies[0].connections, 2);

      server.stallProxy(0, false);
      assert.equal((await reply).header.sequence, 9);
      late = await connecting;
      assert.equal(late.greeting.header.op, Op.GREETING);
    } finally {
      client.close();
      late?.close();
    }
  });
});

Deno.test("holdReplies holds READ/WRITE replies back but answers KEEPALIVE, until released", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server, "disk", 0);
    try {
      server.holdReplies(0, true);
      assert.equal(server.proxies[0].holding, true);
      const write = client.nextSequence();
      const read = client.nextSequence();
      await client.send(encodeWriteRequest(client.sessionId, write, 0, pattern(512, 5)));
      await client.send(encodeReadRequest(client.sessionId, read, 0, 512));
      // Unheld, the WRITE and READ replies would leave before the keepalive's.
      for (const sequence of [99, 100]) {
        const keepalive = await client.call(encodeEmpty(client.sessionId, Op.KEEPALIVE, sequence));
        assert.equal(keepalive.header.op, Op.KEEPALIVE, "the keepalive overtook the held replies");
        assert.equal(keepalive.header.sequence, sequence);
      }
      const held = client.reply();

      server.holdReplies(0, false);
      const replies = [await held, await client.reply()];
      const bySequence = new Map(replies.map((r) => [r.header.sequence, r]));
      assert.equal(bySequence.get(write)?.header.status, Status.OK);
      assert.equal(bySequence.get(read)?.header.status, Status.OK);
      assert.equal(bySequence.get(read)?.payload.length, 512);
    } finally {
      client.close();
    }
  });
});

Deno.test("dropConnections closes current connections and keeps listening", async () => {
  await withServer({}, async (server) => {
    const a = await attached(server, "disk", 0);
    const b = await attached(server, "disk", 1);
    try {
      server.dropConnections(0);
      assert.equal(await a.next(), null);
      assert.equal((await b.read(0, 512)).header.status, Status.OK);
      const again = await attached(server, "disk", 0);
      again.close();
      server.dropConnections();
      assert.equal(await b.next(), null);
    } finally {
      a.close();
      b.close();
    }
  });
});

Deno.test("injectStatus answers the next N data requests with the status and no data", async () => {
  await withServer({}, async (server) => {
    const client = await attached(server);
    try {
      await client.write(0, pattern(512, 3));
      server.injectStatus(Status.TEMPORARY_ERROR, 2);
      // KEEPALIVE is not a data request: not matched without an ops filter.
      assert.equal(
        (await client.call(encodeEmpty(client.sessionId, Op.KEEPALIVE, 1))).header.status,
        Status.OK,
      );
      for (let i = 0; i < 2; i++) {
        const reply = await client.read(0, 512);
        assert.deepEqual([reply.header.status, reply.header.dataLen], [Status.TEMPORARY_ERROR, 0]);
      }
      const served = await client.read(0, 512);
      assert.equal(served.header.status, Status.OK);
      assert.deepEqual(served.payload, pattern(512, 3));
      assert.equal(server.stats.injected, 2);
    } finally {
      client.close();
    }
  });
});

Deno.test("injectStatus filters by proxy and by op, and an injected WRITE stores nothing", async () => {
  await withServer({}, async (server) => {
    const on0 = await attached(server, "disk", 0);
    const on1 = await attached(server, "disk", 1);
    try {
      server.injectStatus(Status.USE_ANOTHER_PROXY, 1, { proxy: 1, ops: [Op.WRITE] });
      server.injectStatus(Status.EXPIRED, 1, { ops: [Op.KEEPALIVE] });
      assert.equal((await on0.write(0, pattern(8, 1))).header.status, Status.OK);
      assert.equal((await on1.read(0, 8)).header.status, Status.OK);
      assert.equal((await on1.write(0, pattern(8, 2))).header.status, Status.USE_ANOTHER_PROXY);
      assert.deepEqual((await on1.read(0, 8)).payload, pattern(8, 1));
      const keepalive = await on0.call(encodeEmpty(on0.sessionId, Op.KEEPALIVE, 3));
      assert.deepEqual([keepalive.header.op, keepalive.header.status], [
        Op.KEEPALIVE,
        Status.EXPIRED,
      ]);
      assert.equal(server.stats.injected, 2);
    } finally {
      on0.close();
      on1.close();
    }
  });
});
