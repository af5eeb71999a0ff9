/**
 * The shared accept loop (src/io/listener.ts) on a manual clock and scripted
 * sockets: the cap holds whatever the clients do, only connections silent for
 * the minimum time are evicted, and a descriptor shortage backs off and leaves
 * the full cap in place.
 */
import assert from "node:assert/strict";
import {
  type AcceptSource,
  Listener,
  type ListenerOptions,
  type Slot,
} from "../src/io/listener.ts";
import { ManualClock } from "./support/manual_clock.ts";
import { memoryLog } from "./support/log.ts";

class FakeConn {
  closed = false;
  /** The serving side notices the close (as a real reader sees EOF). */
  onClose = () => {};
  constructor(readonly name: string) {}
  close(): void {
    this.closed = true;
    this.onClose();
  }
}

/** A listening socket the test feeds: `connect` queues a client, `fail` an accept error. */
class FakeSource implements AcceptSource<FakeConn> {
  readonly #backlog: (FakeConn | Error)[] = [];
  #waiting: PromiseWithResolvers<FakeConn> | null = null;
  closed = false;
  /** Accept calls made so far (a loop waiting at the cap makes none). */
  accepts = 0;

  connect(name: string): FakeConn {
    const conn = new FakeConn(name);
    this.#push(conn);
    return conn;
  }

  fail(error: Error): void {
    this.#push(error);
  }

  /** Clients still in the backlog. */
  get backlog(): number {
    return this.#backlog.length;
  }

  #push(item: FakeConn | Error): void {
    const waiting = this.#waiting;
    if (waiting) {
      this.#waiting = null;
      if (item instanceof Error) waiting.reject(item);
      else waiting.resolve(item);
    } else {
      this.#backlog.push(item);
    }
  }

  accept(): Promise<FakeConn> {
    this.accepts++;
    if (this.closed) return Promise.reject(new Deno.errors.BadResource("closed"));
    const next = this.#backlog.shift();
    if (next instanceof Error) return Promise.reject(next);
    if (next) return Promise.resolve(next);
    this.#waiting = Promise.withResolvers();
    return this.#waiting.promise;
  }

  close(): void {
    this.closed = true;
    this.#waiting?.reject(new Deno.errors.BadResource("closed"));
    this.#waiting = null;
  }
}

/** Lets promise callbacks and the accept loop run (no time passes on the manual clock). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 0));
}

interface Served {
  conn: FakeConn;
  slot: Slot;
  /** Ends the connection's serve task. */
  end(): void;
}

function setup(options: Partial<ListenerOptions<FakeConn>> = {}) {
  const clock = new ManualClock();
  const source = new FakeSource();
  const served: Served[] = [];
  const refused: FakeConn[] = [];
  const log = memoryLog();
  let peak = 0;
  const listener: Listener<FakeConn> = new Listener<FakeConn>({
    sources: [source],
    maxConnections: 2,
    minIdleMs: 1_000,
    noun: "test connection",
    log,
    clock,
    serve: (conn, slot) => {
      const done = Promise.withResolvers<void>();
      served.push({ conn, slot, end: () => done.resolve() });
      conn.onClose = () => done.resolve();
      peak = Math.max(peak, listener.size);
      return done.promise;
    },
    refuse: (conn) => {
      refused.push(conn);
    },
    ...options,
  });
  return { clock, source, served, refused, log, listener, peak: () => peak };
}

Deno.test("at the cap newcomers wait in the backlog until a slot frees", async () => {
  const { source, served, listener, peak } = setup({ minIdleMs: Infinity });
  for (const name of ["a", "b", "c", "d"]) source.connect(name);
  await settle();
  assert.deepEqual(served.map((s) => s.conn.name), ["a", "b"]);
  assert.equal(source.backlog, 2, "c and d were never accepted");
  served[0].end();
  await settle();
  assert.deepEqual(served.map((s) => s.conn.name), ["a", "b", "c"]);
  assert.equal(peak(), 2);
  await listener.close();
});

Deno.test("a connection silent for the minimum time makes room; a younger one does not", async () => {
  const { clock, source, served, listener, log } = setup();
  source.connect("a");
  source.connect("b");
  await settle();
  served[0].slot.touch();
  clock.advance(500);
  served[1].slot.touch(); // b was active 500 ms after a
  source.connect("c");
  clock.advance(499);
  await settle();
  assert.equal(served.length, 2, "no connection has been silent for 1 s yet");
  clock.advance(1);
  await settle();
  assert.deepEqual(served.map((s) => s.conn.name), ["a", "b", "c"]);
  assert.ok(served[0].conn.closed, "a, silent the longest, was evicted");
  assert.ok(served[0].slot.cut);
  assert.ok(!served[1].conn.closed);
  assert.equal(listener.size, 2);
  assert.equal(log.lines.filter((l) => l.includes("idle too long")).length, 1);
  await listener.close();
});

Deno.test("busy connections are never evicted, however long they are silent", async () => {
  const { clock, source, served, listener } = setup();
  source.connect("a");
  source.connect("b");
  await settle();
  for (const s of served) s.slot.setBusy(true); // e.g. answers the client never reads
  source.connect("c");
  clock.advance(3_600_000);
  await settle();
  assert.equal(served.length, 2);
  assert.equal(source.backlog, 1, "c waits in the backlog");
  served[1].slot.setBusy(false);
  clock.advance(999);
  await settle();
  assert.equal(served.length, 2, "b has been quiet for less than the minimum");
  clock.advance(1);
  await settle();
  assert.deepEqual(served.map((s) => s.conn.name), ["a", "b", "c"]);
  assert.ok(served[1].conn.closed && !served[0].conn.closed);
  await listener.close();
});

Deno.test("a newcomer accepted while every slot turned busy is refused: the count never passes the cap", async () => {
  const { clock, source, served, refused, listener, peak } = setup();
  source.connect("a");
  source.connect("b");
  await settle();
  clock.advance(1_000); // both evictable: the loop is back in accept()
  await settle();
  assert.equal(source.accepts, 3);
  for (const s of served) s.slot.setBusy(true); // then both start answering pipelined requests
  source.connect("c");
  await settle();
  assert.deepEqual(refused.map((c) => c.name), ["c"]);
  assert.ok(refused[0].closed);
  assert.equal(served.length, 2);
  assert.equal(peak(), 2);
  assert.equal(listener.size, 2);
  await listener.close();
});

Deno.test("with whenFull: refuse, a newcomer at the cap is turned away at once", async () => {
  const { source, served, refused, listener, log } = setup({ whenFull: "refuse" });
  source.connect("a");
  source.connect("b");
  for (let i = 0; i < 5; i++) source.connect(`x${i}`);
  await settle();
  assert.equal(served.length, 2);
  assert.equal(refused.length, 5, "a just-accepted connection is not idle: nobody was evicted");
  assert.ok(!served[0].conn.closed && !served[1].conn.closed);
  assert.equal(log.lines.filter((l) => l.includes("too many clients")).length, 1, "logged once");
  await listener.close();
});

Deno.test("a descriptor shortage backs off on the clock, frees a silent slot, and leaves the full cap", async () => {
  const emfile = () => Object.assign(new Error("Too many open files (os error 24)"), {});
  const { clock, source, served, listener, log } = setup({ maxConnections: 3 });
  source.connect("a");
  await settle();
  clock.advance(1_000); // a is silent long enough to be given back
  source.fail(emfile());
  source.fail(emfile());
  source.fail(emfile());
  await settle();
  assert.ok(served[0].conn.closed, "the silent connection gave its descriptor back");
  const acceptsAfterFirst = source.accepts;
  clock.advance(49);
  await settle();
  assert.equal(source.accepts, acceptsAfterFirst, "no retry before the 50 ms backoff");
  clock.advance(1);
  await settle();
  clock.advance(100); // second backoff
  await settle();
  for (const name of ["b", "c", "d"]) source.connect(name);
  clock.advance(200);
  await settle();
  assert.deepEqual(served.map((s) => s.conn.name), ["a", "b", "c", "d"]);
  assert.equal(listener.size, 3, "all three slots are usable again after the shortage");
  assert.equal(
    log.lines.filter((l) => l.includes("accepting an test connection failed")).length,
    1,
  );
  await listener.close();
});

Deno.test("stopAccepting ends the loops and leaves connections; close cuts them", async () => {
  const { source, served, listener } = setup();
  source.connect("a");
  await settle();
  await listener.stopAccepting();
  assert.ok(source.closed);
  assert.ok(!served[0].conn.closed);
  await listener.close();
  assert.ok(served[0].conn.closed);
  assert.equal(listener.size, 0);
});
