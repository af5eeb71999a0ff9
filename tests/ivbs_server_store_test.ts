/** IVBS test server: image stores (memory, file-backed) and server options. */
import assert from "node:assert/strict";
import { Status } from "../src/ivbs/wire.ts";
import { ServerConfigError, startIvbsServer } from "../src/ivbs/server/mod.ts";
import { ImageConfigError, MemoryStore } from "../src/ivbs/server/store.ts";
import { attached, MiB, pattern, USERS } from "./support/ivbs_raw_client.ts";
import { setLogLevel } from "../src/log.ts";

// Expected refusals are logged at info/warn; keep the test output readable.
setLogLevel("error");

Deno.test("a file-backed image keeps its data across a server restart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ivbs-server-test-" });
  try {
    const options = { users: USERS, ports: [0], dataDir: dir, listProxiesIntervalMs: 0 };
    const data = pattern(5000, 9);
    let server = await startIvbsServer({ ...options, images: [{ name: "disk", size: 8 * MiB }] });
    try {
      const client = await attached(server);
      assert.equal((await client.write(MiB - 10, data)).header.status, Status.OK);
      client.close();
    } finally {
      await server.close();
    }
    assert.equal((await Deno.stat(`${dir}/disk.img`)).size, 8 * MiB);

    server = await startIvbsServer(options); // no images option: the file is found on attach
    try {
      const client = await attached(server);
      const read = await client.read(MiB - 20, 5020);
      assert.deepEqual(read.payload.subarray(0, 10), new Uint8Array(10));
      assert.deepEqual(read.payload.subarray(10, 5010), data);
      assert.deepEqual(read.payload.subarray(5010), new Uint8Array(10));
      assert.deepEqual(await server.images(), [{ name: "disk", size: 8 * MiB, readOnly: false }]);
      client.close();
    } finally {
      await server.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MemoryStore trims the last chunk to the image size and rejects bad names", async () => {
  const store = new MemoryStore();
  const image = await store.create({ name: "small", size: 100 });
  await image.write(90, pattern(10, 1));
  const back = new Uint8Array(100).fill(0xee);
  await image.readInto(0, back);
  assert.deepEqual(back.subarray(0, 90), new Uint8Array(90));
  assert.deepEqual(back.subarray(90), pattern(10, 1));
  await assert.rejects(
    async () => await store.create({ name: "../etc", size: 1 }),
    ImageConfigError,
  );
  await assert.rejects(async () => await store.create({ name: "x", size: -1 }), ImageConfigError);
  await store.close();
});

Deno.test("startIvbsServer rejects bad options with ServerConfigError and leaves nothing running", async () => {
  await assert.rejects(startIvbsServer({ users: USERS, ports: [70000] }), ServerConfigError);
  await assert.rejects(
    startIvbsServer({
      users: [{ username: "a", password: "1" }, { username: "a", password: "2" }],
    }),
    ServerConfigError,
  );
  await assert.rejects(
    startIvbsServer({ users: USERS, ports: [0], images: [{ name: "a/b", size: 1 }] }),
    ImageConfigError,
  );
  const first = await startIvbsServer({ users: USERS, ports: [0], listProxiesIntervalMs: 0 });
  try {
    const taken = first.proxies[0].port;
    await assert.rejects(
      startIvbsServer({ users: USERS, ports: [0, taken] }),
      (error: Error & { code?: string }) =>
        error.code === "LISTEN" && error.message.includes(String(taken)),
    );
  } finally {
    await first.close();
  }
});
