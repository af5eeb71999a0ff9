/** The admission limiter every connection kind uses (src/io/admission.ts). */
import assert from "node:assert/strict";
import { Admission } from "../src/io/admission.ts";

/** Lets promise callbacks already due run. */
const settle = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

Deno.test("Admission admits requests up to maxRequests and then makes callers wait", async () => {
  const admission = new Admission(2, 1000);
  assert.equal(admission.tryAcquire(1, 0), true);
  assert.equal(admission.tryAcquire(1, 0), true);
  assert.equal(admission.tryAcquire(1, 0), false);
  let admitted = false;
  const third = admission.acquire(1, 0).then(() => admitted = true);
  await settle();
  assert.equal(admitted, false);
  assert.equal(admission.waiting, 1);
  admission.release(1, 0);
  await third;
  assert.equal(admission.requests, 2);
  assert.equal(admission.waiting, 0);
});

Deno.test("Admission bounds bytes in flight independently of the request count", () => {
  const admission = new Admission(100, 100);
  assert.equal(admission.tryAcquire(1, 60), true);
  assert.equal(admission.tryAcquire(1, 50), false);
  assert.equal(admission.tryAcquire(1, 40), true);
  assert.equal(admission.bytes, 100);
  assert.equal(admission.tryAcquire(0, 0), true, "a request without bytes needs no byte room");
});

Deno.test("Admission admits an oversize request alone and charges it the whole bound", async () => {
  const admission = new Admission(10, 100);
  assert.equal(admission.tryAcquire(1, 10), true);
  assert.equal(admission.tryAcquire(1, 500), false, "waits for the bytes in flight to return");
  let admitted = false;
  const big = admission.acquire(1, 500).then(() => admitted = true);
  admission.release(1, 10);
  await big;
  assert.equal(admitted, true);
  assert.equal(admission.bytes, 100, "charged maxBytes, not 500");
  assert.equal(admission.tryAcquire(1, 1), false, "nothing shares the bound with it");
  admission.release(1, 500);
  assert.equal(admission.bytes, 0, "release clamps the same way");
  assert.equal(admission.tryAcquire(1, 500), true, "alone from the start: admitted at once");
});

Deno.test("Admission wakes waiters in order and lets none overtake", async () => {
  const admission = new Admission(Infinity, 100);
  assert.equal(admission.tryAcquire(0, 60), true);
  const order: string[] = [];
  const first = admission.acquire(0, 50).then(() => order.push("first"));
  const second = admission.acquire(0, 10).then(() => order.push("second"));
  assert.equal(admission.tryAcquire(0, 10), false, "no overtaking while someone waits");
  assert.equal(admission.waiting, 2);
  admission.release(0, 60);
  await Promise.all([first, second]);
  assert.deepEqual(order, ["first", "second"]);
  assert.equal(admission.bytes, 60);
});

Deno.test("Admission keeps a small waiter behind a large one that does not fit yet", async () => {
  const admission = new Admission(Infinity, 100);
  admission.tryAcquire(0, 90);
  const order: string[] = [];
  const large = admission.acquire(0, 80).then(() => order.push("large"));
  const small = admission.acquire(0, 5).then(() => order.push("small"));
  admission.release(0, 30); // 60 in flight: 5 would fit, 80 does not
  await settle();
  assert.deepEqual(order, []);
  admission.release(0, 60);
  await Promise.all([large, small]);
  assert.deepEqual(order, ["large", "small"]);
});

Deno.test("Admission.rejectAll fails every waiter and takes nothing for them", async () => {
  const admission = new Admission(1, 10);
  admission.tryAcquire(1, 10);
  const waiting = admission.acquire(1, 5);
  admission.rejectAll(new Error("closing"));
  await assert.rejects(waiting, /closing/);
  assert.equal(admission.waiting, 0);
  assert.equal(admission.requests, 1);
  assert.equal(admission.bytes, 10);
});

Deno.test("Admission refuses bounds that cannot admit anything", () => {
  assert.throws(() => new Admission(0, 10), RangeError);
  assert.throws(() => new Admission(1.5, 10), RangeError);
  assert.throws(() => new Admission(1, 0), RangeError);
  assert.throws(() => new Admission(1, Number.NaN), RangeError);
});
