/**
 * Render time of the status page with 16 mounts, each with six minutes of
 * graph points (72 per series), 3 proxies and 25 events: the whole page (GET /)
 * and its live part (GET /status/live, what the page fetches every 2 s).
 *
 *   deno bench -A bench/status_page_bench.ts
 * @module
 */
import { renderLive, renderStatusPage } from "../src/http/status_page.ts";
import { fakePageData } from "./rigs/status_page_data.ts";

const data = fakePageData(16, 72);

Deno.bench("status page, 16 mounts with graphs (GET /)", { group: "page", baseline: true }, () => {
  renderStatusPage({ ...data, generatedAt: new Date() });
});

Deno.bench("live part, 16 mounts with graphs (GET /status/live)", { group: "page" }, () => {
  renderLive({ ...data, generatedAt: new Date() });
});
