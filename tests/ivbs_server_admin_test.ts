/** IVBS test server: the admin HTTP API that tests and benchmarks drive. */
import assert from "node:assert/strict";
import { Status } from "../src/ivbs/wire.ts";
import { createAdminApp } from "../src/ivbs/server/admin.ts";
import { attached, withServer } from "./support/ivbs_raw_client.ts";
import { setLogLevel } from "../src/log.ts";

// Expected refusals are logged at info/warn; keep the test output readable.
setLogLevel("error");

Deno.test("admin API lists proxies and stops, stalls and restarts one", async () => {
  await withServer({}, async (server) => {
    const app = createAdminApp(server);
    const list = await (await app.request("/proxies")).json();
    assert.equal(list.length, 2);
    assert.deepEqual(list[0], { ...server.proxies[0] });
    assert.equal(list[0].running, true);

    const stopped = await app.request("/proxies/1/stop", { method: "POST" });
    assert.equal(stopped.status, 200);
    assert.equal((await stopped.json()).running, false);
    assert.equal(server.proxies[1].running, false);
    assert.equal(
      (await (await app.request("/proxies/1/start", { method: "POST" })).json()).running,
      true,
    );
    await app.request("/proxies/0/stall", { method: "POST" });
    assert.equal(server.proxies[0].stalled, true);
    await app.request("/proxies/0/unstall", { method: "POST" });
    assert.equal(server.proxies[0].stalled, false);
    assert.equal(
      (await (await app.request("/proxies/0/hold", { method: "POST" })).json()).holding,
      true,
    );
    assert.equal(server.proxies[0].holding, true);
    await app.request("/proxies/0/release", { method: "POST" });
    assert.equal(server.proxies[0].holding, false);
    assert.equal((await app.request("/proxies/0/drop", { method: "POST" })).status, 200);

    assert.equal((await app.request("/proxies/7/stop", { method: "POST" })).status, 404);
    assert.equal((await app.request("/proxies/0/explode", { method: "POST" })).status, 404);
  });
});

Deno.test("admin API injects a status given by name and validates the body", async () => {
  await withServer({}, async (server) => {
    const app = createAdminApp(server);
    const post = (body: unknown) =>
      app.request("/inject", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: typeof body === "string" ? body : JSON.stringify(body),
      });
    assert.equal((await post({ status: "TEMPORARY_ERROR", count: 1, ops: ["read"] })).status, 200);
    assert.equal((await post({ status: 12, count: 1, proxy: 1 })).status, 200);
    const client = await attached(server, "disk", 0);
    try {
      assert.equal((await client.read(0, 8)).header.status, Status.TEMPORARY_ERROR);
      assert.equal((await client.read(0, 8)).header.status, Status.OK);
    } finally {
      client.close();
    }
    const bad = await post({ status: "SOMETIMES", count: 1 });
    assert.equal(bad.status, 400);
    assert.match((await bad.json()).error, /unknown status "SOMETIMES"/);
    assert.equal((await post({ status: 10, count: 0 })).status, 400);
    assert.equal((await post({ status: 10, count: 1, proxy: 9 })).status, 404);
    assert.equal((await post("{not json")).status, 400);
    const stats = await (await app.request("/stats")).json();
    assert.equal(stats.injected, 1);
  });
});
