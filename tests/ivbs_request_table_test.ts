import assert from "node:assert/strict";
import { type Chunk, RequestTable } from "../src/ivbs/request_table.ts";
import {
  decodeHeader,
  decodeReadRequest,
  HEADER_SIZE,
  Op,
  WRITE_PREFIX_SIZE,
} from "../src/ivbs/wire.ts";

/** A table whose requests record how they were answered. */
function table() {
  const requests = new RequestTable();
  const outcomes = new Map<number, string>();
  const add = (kind: "READ" | "WRITE", offset: number, buffer: Uint8Array, deadline = Infinity) => {
    const chunk: Chunk = requests.add(
      kind,
      offset,
      buffer,
      deadline,
      () => outcomes.set(chunk.id, "ok"),
      (error) => outcomes.set(chunk.id, error.message),
    );
    return chunk;
  };
  return { requests, outcomes, add };
}

Deno.test("RequestTable encodes a READ with its range and lands it in the caller's buffer", () => {
  const { add } = table();
  const target = new Uint8Array(4096);
  const chunk = add("READ", 8192, target);
  assert.equal(decodeHeader(chunk.packet).op, Op.READ);
  assert.deepEqual(decodeReadRequest(chunk.packet.subarray(HEADER_SIZE)), {
    offset: 8192,
    length: 4096,
  });
  assert.equal(chunk.target, target);
  assert.equal(chunk.body, undefined);
});

Deno.test("RequestTable sends every WRITE from the caller's buffer, after a header-and-offset packet", () => {
  const { add } = table();
  for (const size of [512, 4096, 1024 * 1024]) {
    const data = new Uint8Array(size).fill(9);
    const chunk = add("WRITE", 4096, data);
    assert.equal(chunk.body, data, `${size} bytes: not copied into the packet`);
    assert.equal(chunk.packet.length, HEADER_SIZE + WRITE_PREFIX_SIZE);
    assert.equal(decodeHeader(chunk.packet).dataLen, WRITE_PREFIX_SIZE + size);
  }
});

Deno.test("RequestTable answers a request once: a late second answer is ignored", () => {
  const { requests, outcomes, add } = table();
  const chunk = add("READ", 0, new Uint8Array(512));
  assert.equal(requests.size, 1);
  requests.finish(chunk);
  requests.finish(chunk, new Error("late"));
  assert.equal(outcomes.get(chunk.id), "ok");
  assert.equal(chunk.done, true);
  assert.equal(requests.size, 0);
});

Deno.test("RequestTable replays parked requests in the order they were parked, each once", () => {
  const { requests, add } = table();
  const a = add("READ", 0, new Uint8Array(512));
  const b = add("READ", 512, new Uint8Array(512));
  const c = add("READ", 1024, new Uint8Array(512));
  requests.park(c);
  requests.park(a);
  requests.park(b);
  requests.park(a); // parked twice (two losses before a connection): replayed once
  assert.equal(requests.waitingCount, 3);
  assert.deepEqual(requests.takeWaiting().map((chunk) => chunk.id), [c.id, a.id, b.id]);
  assert.equal(requests.waitingCount, 0);
  assert.deepEqual(requests.takeWaiting(), []);
  assert.equal(requests.size, 3, "taking them to replay does not answer them");
});

Deno.test("RequestTable forgets a parked request once it is answered", () => {
  const { requests, add } = table();
  const a = add("READ", 0, new Uint8Array(512));
  const b = add("READ", 512, new Uint8Array(512));
  requests.park(a);
  requests.park(b);
  requests.finish(a, new Error("timed out"));
  assert.deepEqual(requests.takeWaiting(), [b]);
});

Deno.test("RequestTable reports requests past their deadline oldest first and keeps those in time", () => {
  const { requests, add } = table();
  const first = add("READ", 0, new Uint8Array(512), 100);
  const second = add("WRITE", 0, new Uint8Array(512), 200);
  add("READ", 0, new Uint8Array(512), 300);
  assert.equal(requests.nextDeadline(), 100);
  assert.deepEqual(requests.expired(99), []);
  assert.deepEqual(requests.expired(200), [first, second]);
  requests.finish(first, new Error("timed out"));
  assert.equal(requests.nextDeadline(), 200);
});

Deno.test("RequestTable with no requests has no deadline", () => {
  const { requests, add } = table();
  assert.equal(requests.nextDeadline(), undefined);
  const chunk = add("READ", 0, new Uint8Array(512), Infinity);
  assert.equal(requests.nextDeadline(), Infinity);
  requests.finish(chunk);
  assert.equal(requests.nextDeadline(), undefined);
});

Deno.test("RequestTable fails every request, parked or sent, with one error", () => {
  const { requests, outcomes, add } = table();
  const sent = add("READ", 0, new Uint8Array(512));
  const parked = add("WRITE", 0, new Uint8Array(512));
  requests.park(parked);
  requests.failAll(new Error("session closed"));
  assert.equal(outcomes.get(sent.id), "session closed");
  assert.equal(outcomes.get(parked.id), "session closed");
  assert.equal(requests.size, 0);
  assert.equal(requests.waitingCount, 0);
});
