/**
 * The control API as a hostile web page sees it: every mutating route, the 2013
 * `POST /` form included, fed the bodies a browser sends cross-origin without a
 * preflight (text/plain, form, multipart), with and without a configured token;
 * DNS rebinding through a hostile Host; and a preflight that must grant nothing.
 */
import assert from "node:assert/strict";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { MountTable } from "../src/daemon/mount_table.ts";
import { ExportTable } from "../src/daemon/export_table.ts";
import { type AppOptions, createApp } from "../src/http/app.ts";
import { EventLog } from "../src/daemon/events.ts";
import { hostAllowed } from "../src/http/guard.ts";
import { startHttpServer } from "../src/http/server.ts";
import { quietLog } from "./support/log.ts";

const TOKEN = "guard-test-token-77";
const PASSWORD = "pw-alice-guard";

/** A logger that keeps its warn lines (message and fields) as text. */
function warnLines() {
  const lines: string[] = [];
  const log = {
    ...quietLog,
    warn: (message: string, fields?: object) =>
      void lines.push(`${message} ${JSON.stringify(fields)}`),
  };
  return { lines, log };
}

async function setup(token?: string, extra: Partial<AppOptions> = {}) {
  const driver = new FakeMountDriver({
    devices: 4,
    images: { disk: { size: 1 << 20 } },
    users: { alice: PASSWORD },
  });
  const table = new MountTable(driver, { deviceCount: 4, log: quietLog });
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-guard-" });
  const exports = new ExportTable(driver, {
    settings: { socket: `${stateDir}/nbd.sock`, items: [] },
    stateDir,
    log: quietLog,
    serverLog: quietLog,
  });
  const shutdowns: string[] = [];
  const app = createApp({
    table,
    exports,
    token,
    requestShutdown: (reason) => shutdowns.push(reason),
    startedAt: Date.now(),
    log: quietLog,
    listen: { host: "127.0.0.1", port: 8080 },
    ...extra,
  });
  // Something to lose: one mount and one export made the legitimate way.
  const auth: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
  const json = { "content-type": "application/json", host: "127.0.0.1:8080", ...auth };
  const credentials = { image: "disk", username: "alice", password: PASSWORD };
  const mounted = await app.request("/api/mounts", {
    method: "POST",
    headers: json,
    body: JSON.stringify({ device: "nbd0", ...credentials }),
  });
  assert.equal(mounted.status, 201, await mounted.text());
  const exported = await app.request("/api/exports", {
    method: "POST",
    headers: json,
    body: JSON.stringify({ name: "keep", ...credentials }),
  });
  assert.equal(exported.status, 201, await exported.text());
  const cleanup = async () => {
    await exports.closeAll();
    await table.closeAll();
    await Deno.remove(stateDir, { recursive: true });
  };
  return { app, table, exports, shutdowns, cleanup };
}

const MOUNT_BODY = { device: "nbd1", image: "disk", username: "alice", password: PASSWORD };

/** Every route that changes state, with a JSON body that would work if let through. */
const MUTATING: { method: string; path: string; body?: unknown }[] = [
  { method: "POST", path: "/api/mounts", body: MOUNT_BODY },
  { method: "DELETE", path: "/api/mounts/nbd0" },
  {
    method: "POST",
    path: "/api/exports",
    body: { name: "evil", ...MOUNT_BODY, device: undefined },
  },
  { method: "DELETE", path: "/api/exports/keep" },
  { method: "POST", path: "/api/shutdown", body: { reason: "evil" } },
  {
    method: "POST",
    path: "/",
    body: { Command: "mount", Device: "nbd1", Image: "disk", User: "alice", Pass: PASSWORD },
  },
  { method: "POST", path: "/", body: { Command: "unmount", Device: "nbd0" } },
  { method: "POST", path: "/", body: { Command: "disc" } },
];

/** What a page can send without a preflight. */
const BROWSER_BODIES: { name: string; type: string; encode(body: unknown): string }[] = [
  { name: "text/plain", type: "text/plain;charset=UTF-8", encode: (b) => JSON.stringify(b ?? {}) },
  {
    // The classic trick: a form field whose name is JSON, so the body parses as JSON.
    name: "form",
    type: "application/x-www-form-urlencoded",
    encode: (b) => JSON.stringify({ ...(b as object ?? {}), x: "=" }),
  },
  {
    name: "multipart",
    type: "multipart/form-data; boundary=x",
    encode: (b) => JSON.stringify(b ?? {}),
  },
];

function assertNothingChanged(ctx: Awaited<ReturnType<typeof setup>>, what: string) {
  assert.deepEqual(ctx.shutdowns, [], `${what}: shutdown requested`);
  assert.deepEqual(ctx.table.list().map((m) => m.device), ["/dev/nbd0"], `${what}: mounts changed`);
  assert.deepEqual(ctx.exports.list().map((e) => e.name), ["keep"], `${what}: exports changed`);
}

for (const token of [undefined, TOKEN]) {
  const withToken = token ? "with a token configured" : "without a token";

  Deno.test(`cross-origin text/plain, form and multipart requests to every mutating route are refused (${withToken})`, async () => {
    const ctx = await setup(token);
    try {
      for (const route of MUTATING) {
        for (const kind of BROWSER_BODIES) {
          for (const origin of ["http://evil.example", "null", undefined]) {
            const headers: Record<string, string> = {
              host: "127.0.0.1:8080",
              "content-type": kind.type,
            };
            if (origin) headers.origin = origin;
            const what = `${route.method} ${route.path} ${kind.name} origin=${origin}`;
            const response = await ctx.app.request(route.path, {
              method: route.method,
              headers,
              body: kind.encode(route.body),
            });
            const expected = origin ? 403 : 415;
            assert.equal(response.status, expected, `${what}: ${await response.text()}`);
            assert.equal(response.headers.get("access-control-allow-origin"), null);
            assertNothingChanged(ctx, what);
          }
        }
      }
    } finally {
      await ctx.cleanup();
    }
  });

  Deno.test(`a foreign Origin is refused even with a JSON body (${withToken})`, async () => {
    const ctx = await setup(token);
    try {
      for (const route of MUTATING) {
        const headers: Record<string, string> = {
          host: "127.0.0.1:8080",
          origin: "http://localhost:3000",
          "content-type": "application/json",
        };
        if (token) headers.authorization = `Bearer ${token}`;
        const response = await ctx.app.request(route.path, {
          method: route.method,
          headers,
          body: route.body === undefined ? undefined : JSON.stringify(route.body),
        });
        assert.equal(response.status, 403, `${route.method} ${route.path}`);
        assertNothingChanged(ctx, `${route.method} ${route.path}`);
      }
      const site = await ctx.app.request("/api/shutdown", {
        method: "POST",
        headers: { host: "127.0.0.1:8080", "sec-fetch-site": "cross-site" },
      });
      assert.equal(site.status, 403);
      assertNothingChanged(ctx, "Sec-Fetch-Site: cross-site");
    } finally {
      await ctx.cleanup();
    }
  });

  Deno.test(`a hostile Host (DNS rebinding) is refused on reads and writes (${withToken})`, async () => {
    const ctx = await setup(token);
    try {
      for (const path of ["/api/mounts", "/api/health", "/status/json", "/", "/metrics"]) {
        const response = await ctx.app.request(path, { headers: { host: "evil.example:8080" } });
        assert.equal(response.status, 421, path);
        assert.doesNotMatch(await response.text(), /nbd0|disk/);
      }
      const shutdown = await ctx.app.request("/api/shutdown", {
        method: "POST",
        headers: { host: "rebind.evil.example:8080", "content-type": "application/json" },
        body: "{}",
      });
      assert.equal(shutdown.status, 421);
      assertNothingChanged(ctx, "hostile Host");
    } finally {
      await ctx.cleanup();
    }
  });
}

Deno.test("a preflight OPTIONS grants no CORS", async () => {
  const ctx = await setup();
  try {
    for (const path of ["/api/shutdown", "/api/mounts", "/"]) {
      const response = await ctx.app.request(path, {
        method: "OPTIONS",
        headers: {
          host: "127.0.0.1:8080",
          origin: "http://evil.example",
          "access-control-request-method": "POST",
          "access-control-request-headers": "content-type",
        },
      });
      await response.body?.cancel();
      assert.ok(response.status >= 400, `${path}: ${response.status}`);
      for (const [name] of response.headers) assert.doesNotMatch(name, /^access-control-/);
    }
  } finally {
    await ctx.cleanup();
  }
});

Deno.test("the daemon's own page, curl and the CLI still get through", async () => {
  const ctx = await setup();
  try {
    const page = await ctx.app.request("/api/mounts", {
      headers: { host: "127.0.0.1:8080", origin: "http://127.0.0.1:8080" },
    });
    assert.equal(page.status, 200);
    const bare = await ctx.app.request("/api/health", { headers: { host: "localhost:8080" } });
    assert.equal(bare.status, 200);
    const v6 = await ctx.app.request("/api/health", { headers: { host: "[::1]:8080" } });
    assert.equal(v6.status, 200);
    const emptyShutdown = await ctx.app.request("/api/shutdown", {
      method: "POST",
      headers: { host: "127.0.0.1:8080" },
    });
    assert.equal(emptyShutdown.status, 202);
    assert.equal(ctx.shutdowns.length, 1);
  } finally {
    await ctx.cleanup();
  }
});

Deno.test("hostAllowed: loopback names, the listen address, IP literals on a wildcard listen", () => {
  const local = { listen: { host: "127.0.0.1", port: 8080 } };
  assert.ok(hostAllowed("127.0.0.1:8080", local));
  assert.ok(hostAllowed("localhost", local));
  assert.ok(hostAllowed("LOCALHOST.:8080", local));
  assert.ok(!hostAllowed("10.0.0.5:8080", local));
  assert.ok(!hostAllowed("127.0.0.1.evil.example", local));
  assert.ok(!hostAllowed("evil.example", local));
  assert.ok(!hostAllowed("user@127.0.0.1", local));
  const wildcard = { listen: { host: "0.0.0.0", port: 8080 }, hostname: "storage7" };
  assert.ok(hostAllowed("10.0.0.5:8080", wildcard));
  assert.ok(hostAllowed("storage7:8080", wildcard));
  assert.ok(!hostAllowed("evil.example:8080", wildcard));
  assert.ok(hostAllowed("10.0.0.5", { listen: { host: "10.0.0.5", port: 80 } }));
});

Deno.test("every token refusal is 401 with a challenge, a warn line and an event naming route and reason", async () => {
  const events = new EventLog({ capacity: 50 });
  const { lines, log } = warnLines();
  const { app, cleanup } = await setup(TOKEN, { events, log });
  try {
    const json = { "content-type": "application/json", host: "127.0.0.1:8080" };
    const cases: [Record<string, string>, string][] = [
      [{}, "no bearer token"],
      [{ authorization: "Bearer not-the-token-1" }, "wrong bearer token"],
      [{ authorization: "Bearer two words" }, "malformed Authorization header"],
      [{ authorization: `Basic ${TOKEN}` }, "malformed Authorization header"],
    ];
    for (const [auth, reason] of cases) {
      const response = await app.request("/api/mounts/nbd0", {
        method: "DELETE",
        headers: { ...json, ...auth },
      });
      assert.equal(response.status, 401, reason);
      assert.deepEqual(await response.json(), { error: "missing or wrong bearer token" });
      assert.match(response.headers.get("www-authenticate") ?? "", /^Bearer /);
    }
    const legacy = await app.request("/", {
      method: "POST",
      headers: json,
      body: JSON.stringify({ Command: "disc" }),
    });
    assert.equal(legacy.status, 401, "the 2013 disc needs the token too");
    const refused = events.since().events.map((e) => `${e.level} ${e.component} ${e.message}`);
    assert.deepEqual(refused, [
      ...cases.map(([, reason]) => `warn http refused DELETE /api/mounts/nbd0: ${reason}`),
      "warn http refused POST /: no bearer token",
    ]);
    assert.equal(lines.length, 5, "one warn line each");
    assert.ok(lines.every((line) => !line.includes(TOKEN) && !line.includes("not-the-token")));
  } finally {
    await cleanup();
  }
});

Deno.test("guard refusals (foreign Host, cross-origin, non-JSON body) are warn events too", async () => {
  const events = new EventLog({ capacity: 50 });
  const { lines, log } = warnLines();
  const { app, cleanup } = await setup(undefined, { events, log });
  try {
    const rebinding = await app.request("/api/mounts", { headers: { host: "evil.example" } });
    assert.equal(rebinding.status, 421);
    const cross = await app.request("/api/shutdown", {
      method: "POST",
      headers: { host: "127.0.0.1:8080", origin: "http://evil.example" },
    });
    assert.equal(cross.status, 403);
    const form = await app.request("/api/shutdown", {
      method: "POST",
      headers: { host: "127.0.0.1:8080", "content-type": "text/plain" },
      body: "x",
    });
    assert.equal(form.status, 415);
    assert.deepEqual(events.since().events.map((e) => e.message), [
      'refused GET /api/mounts: foreign Host "evil.example"',
      "refused POST /api/shutdown: cross-origin requests are refused",
      "refused POST /api/shutdown: request body must be application/json",
    ]);
    assert.deepEqual(events.since().events.map((e) => e.fields.status), [421, 403, 415]);
    assert.equal(lines.length, 3);
  } finally {
    await cleanup();
  }
});

Deno.test("an absolute-form request is judged by the host it names, not by its Host field", async () => {
  const ctx = await setup();
  const server = startHttpServer({
    hostname: "127.0.0.1",
    port: 0,
    handler: (request) => ctx.app.fetch(request),
    log: quietLog,
  });
  const ask = async (head: string) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    await conn.write(new TextEncoder().encode(`${head}Connection: close\r\n\r\n`));
    const answer = await new Response(conn.readable).text();
    return answer.slice(0, answer.indexOf("\r\n"));
  };
  try {
    assert.equal(
      await ask("GET http://127.0.0.1:8080/api/health HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"),
      "HTTP/1.1 200 OK",
      "a loopback authority is served",
    );
    assert.equal(
      await ask("GET http://evil.example:8080/api/mounts HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"),
      "HTTP/1.1 421 Misdirected Request",
      "a foreign authority is refused though the Host field is loopback",
    );
    assertNothingChanged(ctx, "absolute form");
  } finally {
    await server.close();
    await ctx.cleanup();
  }
});
