/**
 * The status page in headless Chromium (Debian's `chromium`), while a load runs
 * through an NBD export and the proxy it uses is stopped: the proxies table
 * shows that proxy's state, the events list the failover, and a graph has data
 * points. Skips with a message where chromium is missing.
 *
 * With IVBSNETD_SCREENSHOT=PATH set, the page's screenshot is also written to
 * PATH (docs/status-page.png is made that way).
 */
import assert from "node:assert/strict";
import { createApp } from "../src/http/app.ts";
import { exportKey } from "../src/daemon/history.ts";
import type { Daemon } from "../src/daemon/daemon.ts";
import { hasTool } from "./support/tools.ts";
import { NbdTestClient, runLoad } from "./support/nbd_test_client.ts";
import { operatorFixture, quietLog, USER } from "./support/operator_fixture.ts";
import { eventually } from "./support/wait.ts";

const CHROMIUM = Deno.env.get("CHROMIUM") ?? "chromium";
const chromiumMissing = !(await hasTool(CHROMIUM));
if (chromiumMissing) {
  console.log(
    `status page browser test skipped: ${CHROMIUM} is not installed (apt-get install chromium)`,
  );
}

function serveHttp(daemon: Daemon): { url: string; close(): Promise<void> } {
  const app = createApp({
    table: daemon.table,
    exports: daemon.exports,
    requestShutdown: () => {},
    startedAt: daemon.startedAt,
    log: quietLog,
    events: daemon.events,
    proxies: daemon.proxies,
    history: daemon.history,
  });
  // Headless Chromium's virtual time stands still while a fetch is open, and the
  // page's event stream never ends: here the page gets a stream that ends at once
  // (with a long retry), so the page falls back to its timer. The stream's own
  // path is tested in status_page_sse_test.ts and http_event_stream_test.ts.
  const handler = (request: Request) =>
    /text\/event-stream/.test(request.headers.get("accept") ?? "")
      ? new Response("retry: 600000\n\n", { headers: { "content-type": "text/event-stream" } })
      : app.fetch(request);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  return { url: `http://127.0.0.1:${server.addr.port}/`, close: () => server.shutdown() };
}

/** Runs headless chromium on `url` with a fresh profile; returns its stdout. */
async function chromium(url: string, profile: string, extra: string[]): Promise<string> {
  const command = new Deno.Command(CHROMIUM, {
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--hide-scrollbars",
      `--user-data-dir=${profile}`,
      ...extra,
      url,
    ],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(90_000),
  });
  // Deno's resource sanitizer cannot see the child exit; output() waits for it.
  const out = await command.output();
  const stdout = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`chromium exited ${out.code}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return stdout;
}

Deno.test({
  name: "the status page in Chromium shows a stopped proxy, the failover and graphs with points",
  ignore: chromiumMissing,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const fixture = await operatorFixture({ historyIntervalMs: 250, historyPoints: 40 });
    const { daemon, server, label } = fixture;
    const http = serveHttp(daemon);
    const stopLoad = new AbortController();
    let client: NbdTestClient | undefined;
    let load: Promise<number> | undefined;
    try {
      const info = await daemon.exports.add({ name: "vm1", image: "disk", ...USER });
      await daemon.exports.add({ name: "backup", image: "disk", ...USER, readOnly: true });
      client = await NbdTestClient.connect(info.socket, "vm1");
      load = runLoad(client, stopLoad.signal);
      const key = exportKey("vm1");
      await eventually(
        "graph points with traffic",
        () => daemon.history.points(key).filter((p) => p.readBytesPerSec > 0).length >= 4,
      );

      const used = daemon.proxies.list().find((p) => p.usedBy.includes("export vm1"));
      assert.ok(used, "the export's client uses a proxy");
      const stopped = server.proxies.findIndex((_, i) => label(i) === used.address);
      await server.stopProxy(stopped);
      await eventually(
        "the failover event",
        () => daemon.events.since().events.find((e) => e.message === "failover"),
      );
      // The graphs span 10 s (40 points of 250 ms): fill most of it, failover included.
      await eventually(
        "more graph points after the failover",
        () => daemon.history.points(key).length >= 32,
        60_000, // 8 s of samples; generous on a busy machine
      );

      const profile = await Deno.makeTempDir({ prefix: "ivbsnetd-chromium-" });
      try {
        // Enough virtual time for the page's own refresh (fetch + swap) to run once.
        const dom = await chromium(http.url, profile, [
          "--dump-dom",
          "--virtual-time-budget=3000",
        ]);
        if (Deno.env.get("IVBSNETD_DUMP_DOM")) {
          await Deno.writeTextFile(Deno.env.get("IVBSNETD_DUMP_DOM")!, dom);
        }
        const row = dom.match(
          new RegExp(`<tr data-proxy="${used.address.replace(/[.[\]]/g, "\\$&")}">.*?</tr>`),
        )?.[0];
        assert.ok(row, "the stopped proxy has a row in the proxies table");
        assert.match(row, /class="state backoff">backoff until \d\d:\d\d:\d\d</);
        assert.match(row, /<td>1 \/ 0<\/td>/, "one failover away from it");
        const events = dom.slice(dom.indexOf('<table id="events">'));
        assert.match(events, /<td>export vm1<\/td><td>failover<\/td>/);
        assert.ok(events.includes(`from=${used.address}`), "the failover names the stopped proxy");
        const points = [...dom.matchAll(/data-points="(\d+)"/g)].map((m) => Number(m[1]));
        assert.ok(points.some((n) => n >= 10), `a graph has data points: ${points}`);
        assert.match(dom, /<div id="live"[^>]* data-refreshes="\d+"/, "the page refreshed itself");
        assert.match(dom, /<section id="attention">.*<b>proxy [^<]+<\/b> backoff/s, "on top");
        assert.match(dom, /<span id="error"><\/span>/, "and found the daemon");

        const shot = Deno.env.get("IVBSNETD_SCREENSHOT") ?? `${profile}/status-page.png`;
        await chromium(http.url, profile, [
          `--screenshot=${shot}`,
          "--window-size=1360,1500",
        ]);
        const png = await Deno.readFile(shot);
        assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], "a PNG was written");
      } finally {
        await Deno.remove(profile, { recursive: true });
      }
    } finally {
      stopLoad.abort();
      const served = await load?.catch((error) => {
        throw new Error(`the load saw an error: ${error}`);
      });
      assert.ok((served ?? 0) > 0);
      client?.close();
      await http.close();
      await fixture.cleanup();
    }
  },
});
