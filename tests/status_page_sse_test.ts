/**
 * The status page's live update in headless Chromium: the page follows
 * `GET /api/events` as Server-Sent Events and fetches `GET /status/live` when an
 * event arrives (its timer keeps refreshing the rates too). The daemon's side is played by a
 * small server that sends one SSE event (as the contract says: `id`, `event:
 * <level>`, `data: <JSON>`) and closes the stream with a long retry. Skips
 * where chromium is missing.
 */
import assert from "node:assert/strict";
import { REFRESH_MS, renderLive, renderStatusPage } from "../src/http/status_page.ts";
import { fakePageData } from "../bench/rigs/status_page_data.ts";
import { hasTool } from "./support/tools.ts";

const CHROMIUM = Deno.env.get("CHROMIUM") ?? "chromium";
const chromiumMissing = !(await hasTool(CHROMIUM));

Deno.test({
  name: "the status page follows the SSE stream and fetches its live part on an event",
  ignore: chromiumMissing,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const data = { ...fakePageData(1, 0), generatedAt: new Date() };
    const requests: string[] = [];
    const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (request) => {
      const path = new URL(request.url).pathname;
      // The browser asks for a favicon whenever it likes; the page's own requests are what count.
      if (path !== "/favicon.ico") {
        requests.push(`${path} ${request.headers.get("accept")?.split(",")[0]}`);
      }
      if (path === "/") {
        return new Response(renderStatusPage(data), { headers: { "content-type": "text/html" } });
      }
      if (path === "/status/live") {
        const live = renderLive({ ...data, mounts: [] }); // the event: the mount went away
        return new Response(live, { headers: { "content-type": "text/html" } });
      }
      if (path === "/api/events") {
        const event = { seq: 7, level: "warn", component: "mounts", message: "unmounted" };
        const body = `retry: 600000\n\nid: 7\nevent: warn\ndata: ${JSON.stringify(event)}\n\n`;
        return new Response(body, { headers: { "content-type": "text/event-stream" } });
      }
      return new Response("no", { status: 404 });
    });
    const profile = await Deno.makeTempDir({ prefix: "ivbsnetd-chromium-sse-" });
    try {
      const budget = REFRESH_MS / 2;
      const out = await new Deno.Command(CHROMIUM, {
        args: [
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          `--user-data-dir=${profile}`,
          "--dump-dom",
          `--virtual-time-budget=${budget}`,
          `http://127.0.0.1:${server.addr.port}/`,
        ],
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(90_000),
      }).output();
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
      const dom = new TextDecoder().decode(out.stdout);
      const live = requests.filter((r) => r.startsWith("/status/live"));
      assert.deepEqual(requests.slice(0, 3), [
        "/ text/html",
        "/api/events text/event-stream",
        "/status/live */*",
      ]);
      const div = dom.match(/<div id="live"[^>]*>/)?.[0] ?? "";
      assert.match(div, / data-events="[1-9]\d*"/, `the page got the event: ${div}`);
      // Refreshes for the event, plus whatever its timer did in the virtual time given.
      assert.match(div, new RegExp(` data-refreshes="${live.length}"`));
      assert.match(dom, /No image mounted\./, "and shows the new live part");
    } finally {
      await server.shutdown();
      await Deno.remove(profile, { recursive: true });
    }
  },
});
