import assert from "node:assert/strict";
import { ByteBudget } from "../src/ivbs/byte_budget.ts";
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

Deno.test("ByteBudget admits up to its limit and wakes waiters in order as bytes return", async () => {
  const budget = new ByteBudget(100);
  assert.equal(budget.tryTake(60), true);
  assert.equal(budget.tryTake(50), false);
  const order: string[] = [];
  const first = budget.take(50).then(() => order.push("first"));
  const second = budget.take(10).then(() => order.push("second"));
  assert.equal(budget.tryTake(10), false, "no overtaking while someone waits");
  assert.equal(budget.waiting, 2);
  budget.release(60);
  await Promise.all([first, second]);
  assert.deepEqual(order, ["first", "second"]);
  assert.equal(budget.used, 60);
});

Deno.test("ByteBudget.rejectAll fails every waiter", async () => {
  const budget = new ByteBudget(10);
  budget.tryTake(10);
  const waiting = budget.take(5);
  budget.rejectAll(new Error("closing"));
  await assert.rejects(waiting, /closing/);
  assert.equal(budget.waiting, 0);
  assert.throws(() => new ByteBudget(0), RangeError);
});
