import assert from "node:assert/strict";
import { BackendError } from "../src/block/backend.ts";
import { IvbsMountError } from "../src/ivbs/errors.ts";
import type { IvbsTestServer, startIvbsServer } from "../src/ivbs/server/mod.ts";
import {
  IvbsSession,
  type IvbsSessionEvent,
  type IvbsSessionOptions,
} from "../src/ivbs/session.ts";
import { encodeHeader, MAX_IO_LENGTH, Op, Status } from "../src/ivbs/wire.ts";
import { captureLog, closedPort, fakeProxy } from "./support/ivbs_fake_proxy.ts";
import { MiB, USER, withServer as withTestServer } from "./support/ivbs_test_server.ts";
import { BlockModel, runWorkload } from "./support/ivbs_workload.ts";

/** The session tests' store: alice's writable disk, a read-only image and one only bob may attach. */
function withServer(
  options: Partial<Parameters<typeof startIvbsServer>[0]>,
  body: (server: IvbsTestServer) => Promise<void>,
): Promise<void> {
  return withTestServer({
    users: [USER, { username: "bob", password: "hunter2" }],
    images: [
      { name: "disk", size: 4 * MiB },
      { name: "ro", size: 1 * MiB, readOnly: true },
      { name: "private", size: 1 * MiB, users: ["bob"] },
    ],
    ...options,
  }, body);
}

function sessionOptions(
  server: IvbsTestServer,
  extra: Partial<IvbsSessionOptions> = {},
): IvbsSessionOptions {
  return { proxies: server.addresses(), image: "disk", ...USER, log: captureLog(), ...extra };
}

function isBackendError(errno: string, message?: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof BackendError, `expected BackendError, got ${error}`);
    assert.equal(error.errno, errno);
    if (message) assert.match(error.message, message);
    return true;
  };
}

function isMountError(code: string, message?: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof IvbsMountError, `expected IvbsMountError, got ${error}`);
    assert.equal(error.code, code);
    if (message) assert.match(error.message, message);
    return true;
  };
}

Deno.test("IvbsSession.open attaches an image and reports its size, mode and proxy", async () => {
  await withServer({}, async (server) => {
    const events: IvbsSessionEvent[] = [];
    const session = await IvbsSession.open(
      sessionOptions(server, { onEvent: (e) => events.push(e) }),
    );
    assert.equal(session.size, 4 * MiB);
    assert.equal(session.readOnly, false);
    assert.equal(session.image, "disk");
    const first = server.addresses()[0];
    assert.equal(session.proxy, `${first.host}:${first.port}`);
    assert.deepEqual(events.filter((e) => e.type !== "proxies-listed"), [
      { type: "connected", proxy: session.proxy, proxyName: "proxy-0", replayed: 0 },
    ]);
    await session.close();
    assert.equal(session.proxy, null);
  });
});

Deno.test("IvbsSession.open refuses a wrong password with LOGIN_DENIED and never shows it", async () => {
  await withServer({}, async (server) => {
    const log = captureLog();
    await assert.rejects(
      IvbsSession.open(sessionOptions(server, { password: "wrong-pass-123", log })),
      isMountError("LOGIN_DENIED", /refused login of user "alice": wrong username or password/),
    );
    const everything = JSON.stringify(log.lines);
    assert.ok(!everything.includes("wrong-pass-123"));
  });
});

Deno.test("IvbsSession.open reports an unknown image as IMAGE_NOT_FOUND", async () => {
  await withServer({}, async (server) => {
    await assert.rejects(
      IvbsSession.open(sessionOptions(server, { image: "nope" })),
      isMountError("IMAGE_NOT_FOUND", /IVBS image "nope" not found/),
    );
  });
});

Deno.test("IvbsSession.open reports an image the user may not use as ACCESS_DENIED", async () => {
  await withServer({}, async (server) => {
    await assert.rejects(
      IvbsSession.open(sessionOptions(server, { image: "private" })),
      isMountError("ACCESS_DENIED", /user "alice" may not use image "private"/),
    );
    const bob = await IvbsSession.open(sessionOptions(server, {
      image: "private",
      username: "bob",
      password: "hunter2",
    }));
    assert.equal(bob.size, 1 * MiB);
    await bob.close();
  });
});

Deno.test("IvbsSession.open fails with NO_PROXY naming every proxy when none listens", async () => {
  const ports = [closedPort(), closedPort()];
  await assert.rejects(
    IvbsSession.open({
      proxies: ports.map((port) => ({ host: "127.0.0.1", port })),
      image: "disk",
      ...USER,
      log: captureLog(),
    }),
    isMountError("NO_PROXY", new RegExp(`127.0.0.1:${ports[0]}: .*127.0.0.1:${ports[1]}: `)),
  );
  await assert.rejects(
    IvbsSession.open({ proxies: [], image: "disk", ...USER }),
    isMountError("NO_PROXY", /no usable IVBS proxy configured .*given: none/),
  );
});

Deno.test("IvbsSession.open refuses names IVBS cannot carry before contacting a proxy", async () => {
  await withServer({}, async (server) => {
    await assert.rejects(
      IvbsSession.open(sessionOptions(server, { image: "x".repeat(300) })),
      isMountError("IMAGE_NOT_FOUND", /image name is 300 bytes, longer than 256/),
    );
    await assert.rejects(
      IvbsSession.open(sessionOptions(server, { username: "u".repeat(40) })),
      isMountError("LOGIN_DENIED", /username is 40 bytes, longer than 32/),
    );
    assert.equal(server.stats.connectionsAccepted, 0);
  });
  await assert.rejects(
    IvbsSession.open({ proxies: [{ host: "127.0.0.1", port: 0 }], image: "disk", ...USER }),
    isMountError("NO_PROXY", /no usable IVBS proxy .*given: 127.0.0.1:0/),
  );
});

Deno.test("IvbsSession.open fails with PROTOCOL when the only proxy sends a bad header", async () => {
  const proxy = fakeProxy(async (peer) => {
    const bad = encodeHeader({
      sessionId: peer.sessionId,
      op: Op.GREETING,
      dataLen: 0,
      sequence: 0,
    });
    new DataView(bad.buffer).setUint32(32, 77);
    await peer.send(bad);
    await peer.next();
  });
  await assert.rejects(
    IvbsSession.open({ proxies: [proxy.address], image: "disk", ...USER, log: captureLog() }),
    isMountError("PROTOCOL", /unknown op 77/),
  );
  await proxy.close();
});

Deno.test("IvbsSession on a read-only image refuses writes with EPERM without sending them", async () => {
  await withServer({}, async (server) => {
    const session = await IvbsSession.open(sessionOptions(server, { image: "ro" }));
    assert.equal(session.readOnly, true);
    await assert.rejects(
      session.write(0, new Uint8Array(512)),
      isBackendError("EPERM", /read-only/),
    );
    assert.deepEqual(await session.read(0, 512), new Uint8Array(512));
    assert.equal(server.stats.requests.WRITE ?? 0, 0);
    await session.close();
  });
});

Deno.test("IvbsSession readOnly option mounts a writable image read-only", async () => {
  await withServer({}, async (server) => {
    const session = await IvbsSession.open(sessionOptions(server, { readOnly: true }));
    assert.equal(session.readOnly, true);
    await assert.rejects(session.write(0, new Uint8Array(1)), isBackendError("EPERM"));
    await session.close();
  });
});

Deno.test("IvbsSession serves 1,500 pipelined random reads and writes answered out of order, byte for byte", async () => {
  await withServer({ replyDelayMs: { min: 0, max: 4 } }, async (server) => {
    const session = await IvbsSession.open(sessionOptions(server));
    const model = new BlockModel(512, 2048, "bytes"); // the first 1 MiB of the image
    const result = await runWorkload(session, model, {
      blockSize: 512,
      blocks: 2048,
      ops: 1500,
      depth: 48,
      maxBlocksPerOp: 64,
      seed: 20240611,
      mode: "bytes",
    });
    assert.deepEqual(result.errors, []);
    assert.deepEqual(result.mismatches, []);
    assert.equal(result.reads + result.writes, 1500);
    assert.ok(result.reads > 500 && result.writes > 500);
    const whole = await session.read(0, 1 * MiB);
    assert.equal(model.check(0, whole), null);
    assert.equal(session.stats.inFlight, 0);
    await session.close();
  });
});

Deno.test("IvbsSession splits a request larger than 32 MiB at MAX_IO_LENGTH", async () => {
  const size = 40 * MiB;
  await withServer({ images: [{ name: "big", size }] }, async (server) => {
    const session = await IvbsSession.open(sessionOptions(server, { image: "big" }));
    const offset = 4097;
    const data = new Uint8Array(MAX_IO_LENGTH + 12_345);
    for (let i = 0; i < data.length; i += 4096) data[i] = (i / 4096) & 0xff;
    data[data.length - 1] = 0xee;
    await session.write(offset, data);
    assert.equal(server.stats.requests.WRITE, 2, "one WRITE of 32 MiB and one of the rest");
    const back = await session.read(offset, data.length);
    assert.equal(server.stats.requests.READ, 2);
    assert.equal(back.length, data.length);
    assert.ok(back.every((byte, i) => byte === data[i]), "data round-trips across the split");
    // Bytes on both sides of the split point, read in one small request.
    const seam = await session.read(offset + MAX_IO_LENGTH - 4096, 8192);
    assert.deepEqual(seam, data.subarray(MAX_IO_LENGTH - 4096, MAX_IO_LENGTH + 4096));
    await session.close();
  });
});

Deno.test("IvbsSession rejects ranges outside the image with EINVAL without sending them", async () => {
  await withServer({}, async (server) => {
    const session = await IvbsSession.open(sessionOptions(server));
    await assert.rejects(
      session.read(4 * MiB - 10, 11),
      isBackendError("EINVAL", /outside IVBS image "disk"/),
    );
    await assert.rejects(session.write(-1, new Uint8Array(1)), isBackendError("EINVAL"));
    await assert.rejects(session.read(0.5, 1), isBackendError("EINVAL"));
    assert.equal(server.stats.requests.READ ?? 0, 0);
    assert.equal((await session.read(4 * MiB, 0)).length, 0);
    await session.close();
  });
});

Deno.test("IvbsSession fails one request per PERMANENT_ERROR, INVALID_REQUEST or READ_ONLY and goes on", async () => {
  await withServer({}, async (server) => {
    const session = await IvbsSession.open(sessionOptions(server));
    server.injectStatus(Status.PERMANENT_ERROR, 1);
    await assert.rejects(session.read(0, 512), isBackendError("EIO", /PERMANENT_ERROR/));
    server.injectStatus(Status.INVALID_REQUEST, 1);
    await assert.rejects(session.read(0, 512), isBackendError("EINVAL", /INVALID_REQUEST/));
    server.injectStatus(Status.READ_ONLY, 1);
    await assert.rejects(
      session.write(0, new Uint8Array(512)),
      isBackendError("EPERM", /READ_ONLY/),
    );
    server.injectStatus(Status.ALREADY_EXISTS, 1);
    await assert.rejects(session.read(0, 512), isBackendError("EIO"));
    server.injectStatus(999, 1);
    await assert.rejects(session.read(0, 512), isBackendError("EIO", /status 999/));
    await session.write(0, new Uint8Array(512).fill(3));
    assert.deepEqual(await session.read(0, 512), new Uint8Array(512).fill(3));
    assert.equal(session.stats.failovers, 0);
    assert.equal(session.stats.retries, 0);
    await session.close();
  });
});

Deno.test("IvbsSession keeps at most maxInFlightBytes outstanding and queues the rest", async () => {
  await withServer({}, async (server) => {
    const session = await IvbsSession.open(sessionOptions(server, { maxInFlightBytes: 8192 }));
    const reads = Array.from({ length: 10 }, (_, i) => session.read(i * 4096, 4096));
    assert.equal(session.stats.inFlight, 2, "two 4 KiB reads fit in 8 KiB; eight wait");
    const results = await Promise.all(reads);
    assert.equal(results.length, 10);
    // A request larger than the bound still goes, alone.
    assert.equal((await session.read(0, 64 * 1024)).length, 64 * 1024);
    assert.equal(session.stats.reads, 11);
    await session.close();
  });
});

Deno.test("IvbsSession.close fails pending and later requests with ESHUTDOWN", async () => {
  await withServer({}, async (server) => {
    const session = await IvbsSession.open(sessionOptions(server, { maxInFlightBytes: 4096 }));
    server.stallProxy(0, true);
    const sent = assert.rejects(session.read(0, 4096), isBackendError("ESHUTDOWN", /closed/));
    const queued = assert.rejects(session.read(4096, 4096), isBackendError("ESHUTDOWN"));
    assert.equal(session.stats.inFlight, 1, "the second read waits for budget");
    await session.close();
    await sent;
    await queued;
    await assert.rejects(session.read(0, 1), isBackendError("ESHUTDOWN"));
    await session.close(); // idempotent
    server.stallProxy(0, false);
  });
});

Deno.test("IvbsSession counts completed reads and writes and their bytes", async () => {
  await withServer({}, async (server) => {
    const session = await IvbsSession.open(sessionOptions(server));
    await session.write(0, new Uint8Array(1000));
    await session.read(0, 300);
    await session.read(0, 200);
    const stats = session.stats;
    assert.equal(stats.writes, 1);
    assert.equal(stats.bytesWritten, 1000);
    assert.equal(stats.reads, 2);
    assert.equal(stats.bytesRead, 500);
    assert.equal(stats.inFlight, 0);
    await session.close();
  });
});
