import assert from "node:assert/strict";
import { IdleTimeout } from "../src/ivbs/server/idle_timeout.ts";
import { ManualClock } from "./support/manual_clock.ts";

/** An idle timeout of 1 s on a manual clock, recording when it fired. */
function idle(options: { stalled?: () => boolean } = {}) {
  const clock = new ManualClock();
  const fired: number[] = [];
  const timeout = new IdleTimeout(1_000, clock, options.stalled ?? (() => false), (idleMs) => {
    fired.push(idleMs);
  });
  timeout.start();
  return { clock, fired, timeout };
}

Deno.test("IdleTimeout fires once the client has been silent for the timeout, not before", () => {
  const { clock, fired } = idle();
  clock.advance(999);
  assert.deepEqual(fired, []);
  clock.advance(1);
  assert.deepEqual(fired, [1_000]);
  clock.advance(10_000);
  assert.equal(fired.length, 1, "once");
});

Deno.test("IdleTimeout counts from the client's last packet", () => {
  const { clock, fired, timeout } = idle();
  clock.advance(900);
  timeout.activity();
  clock.advance(900);
  assert.deepEqual(fired, []);
  clock.advance(100);
  assert.deepEqual(fired, [1_000]);
});

Deno.test("IdleTimeout does not count the time the reader was paused as idleness", () => {
  const { clock, fired, timeout } = idle();
  timeout.readerPaused();
  clock.advance(5_000);
  assert.deepEqual(fired, []);
  clock.advance(500);
  timeout.readerResumed();
  clock.advance(999);
  assert.deepEqual(fired, []);
  clock.advance(1);
  assert.deepEqual(fired, [1_000]);
});

Deno.test("IdleTimeout does not close a connection of a stalled proxy", () => {
  let stalled = true;
  const { clock, fired } = idle({ stalled: () => stalled });
  clock.advance(5_000);
  assert.deepEqual(fired, []);
  stalled = false;
  clock.advance(2_000);
  assert.equal(fired.length, 1);
});

Deno.test("IdleTimeout stopped never fires and leaves no timer behind", () => {
  const { clock, fired, timeout } = idle();
  timeout.stop();
  assert.equal(clock.pending, 0);
  clock.advance(10_000);
  assert.deepEqual(fired, []);
});
