import assert from "node:assert/strict";
import { backoffDelay, proxyLabel, ProxyList } from "../src/ivbs/proxy_list.ts";

const a = { host: "127.0.0.1", port: 1001 };
const b = { host: "127.0.0.1", port: 1002 };
const c = { host: "127.0.0.1", port: 1003 };

function clock() {
  let now = 0;
  return { now: () => now, advance: (ms: number) => now += ms };
}

Deno.test("ProxyList tries the newest LIST_PROXIES first, then configured ones, without duplicates", () => {
  const list = new ProxyList([a, b]);
  assert.deepEqual(list.candidates(), [a, b]);
  list.updateListed([c, b]);
  assert.deepEqual(list.candidates(), [c, b, a]);
  list.updateListed([a]);
  assert.deepEqual(list.candidates(), [a, b], "a newer list replaces the older one");
});

Deno.test("ProxyList moves recently failed proxies to the end, oldest failure first, and forgets them", () => {
  const time = clock();
  const list = new ProxyList([a, b, c], { failureMemoryMs: 1_000, now: time.now });
  list.markFailed(b);
  time.advance(10);
  list.markFailed(a);
  assert.deepEqual(list.candidates(), [c, b, a]);
  assert.equal(list.recentlyFailed(a), true);
  time.advance(1_000);
  assert.deepEqual(list.candidates(), [a, b, c], "failures are forgotten after the memory");
  list.markFailed(c);
  list.markHealthy(c);
  assert.deepEqual(list.candidates(), [a, b, c]);
});

Deno.test("ProxyList drops unusable addresses from configuration and LIST_PROXIES", () => {
  const list = new ProxyList([a, { host: "", port: 1 }, { host: "h", port: 0 }]);
  list.updateListed([{ host: "x", port: 70000 }, b]);
  assert.deepEqual(list.candidates(), [b, a]);
});

Deno.test("proxyLabel brackets IPv6 literals", () => {
  assert.equal(proxyLabel(a), "127.0.0.1:1001");
  assert.equal(proxyLabel({ host: "::1", port: 11417 }), "[::1]:11417");
});

Deno.test("backoffDelay doubles per round, stays within maxMs and jitters the upper half", () => {
  const backoff = { initialMs: 100, maxMs: 1_000 };
  assert.equal(backoffDelay(backoff, 1, () => 0), 50);
  assert.equal(backoffDelay(backoff, 1, () => 1), 100);
  assert.equal(backoffDelay(backoff, 3, () => 1), 400);
  assert.equal(backoffDelay(backoff, 5, () => 1), 1_000);
  assert.equal(backoffDelay(backoff, 500, () => 1), 1_000, "huge rounds do not overflow");
  assert.equal(backoffDelay(backoff, 500, () => 0), 500);
});
