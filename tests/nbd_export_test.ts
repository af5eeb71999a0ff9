/**
 * NBD exports driven by the clients people use (Debian's nbdinfo, qemu-img,
 * qemu-io, nbdcopy), plus raw bytes for what no polite client sends. Tests
 * needing a tool skip when it is missing.
 */
import assert from "node:assert/strict";
import { createHash, randomFillSync } from "node:crypto";
import { type Backend, MemoryBackend } from "../src/block/backend.ts";
import {
  type ExportDefinition,
  type ExportServer,
  ExportServerError,
  shareBackend,
  startExportServer,
} from "../src/nbd/export_server.ts";
import { IHAVEOPT, NBD_MAGIC, Opt, OPTION_REPLY_MAGIC, Rep } from "../src/nbd/handshake.ts";
import { Command, decodeReply, encodeRequest, NbdError, REPLY_SIZE } from "../src/nbd/wire.ts";
import { IvbsSession } from "../src/ivbs/session.ts";
import { startIvbsServer } from "../src/ivbs/server/mod.ts";
import type { Logger } from "../src/log.ts";
import { UsageError } from "../src/args.ts";
import { parseCommandLine } from "../src/command_line.ts";
import { EXPORT } from "../src/commands/definitions.ts";
import { exportCommand } from "../src/commands/export.ts";
import { hasTool, runTool } from "./support/tools.ts";
import { eventually } from "./support/wait.ts";
import { memoryLog } from "./support/log.ts";

const MiB = 1024 * 1024;

const TOOLS = {
  nbdinfo: await hasTool("nbdinfo"),
  qemuImg: await hasTool("qemu-img"),
  qemuIo: await hasTool("qemu-io"),
  nbdcopy: await hasTool("nbdcopy"),
};
for (const [tool, present] of Object.entries(TOOLS)) {
  if (!present) {
    console.warn(`nbd_export_test: ${tool} is not installed; tests using it are skipped`);
  }
}

/** qemu-img arguments copying raw `from` to raw `to` (-n: `to` exists, do not create it). */
function rawCopy(from: string, to: string, ...flags: string[]): string[] {
  return ["convert", ...flags, "-f", "raw", "-O", "raw", from, to];
}

async function runOk(command: string, args: string[]): Promise<string> {
  const result = await runTool(command, args);
  assert.equal(result.code, 0, `${command} ${args.join(" ")} failed:\n${result.stderr}`);
  return result.stdout;
}

/** Runs `body` with a temp dir and an export server on a unix socket in it. */
async function withExports(
  exports: ExportDefinition[],
  body: (server: ExportServer, dir: string) => Promise<void>,
  extra: {
    tcp?: boolean;
    maxClients?: number;
    log?: Logger;
    idleEvictMs?: number;
    handshakeTimeoutMs?: number;
  } = {},
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "nbd_export_test_" });
  const log = extra.log ?? memoryLog();
  const server = await startExportServer({
    socketPath: `${dir}/nbd.sock`,
    tcp: extra.tcp ? { port: 0 } : undefined,
    exports,
    maxClients: extra.maxClients,
    idleEvictMs: extra.idleEvictMs,
    handshakeTimeoutMs: extra.handshakeTimeoutMs,
    log,
  });
  try {
    await body(server, dir);
  } catch (error) {
    // The server's side of the story, for diagnosis.
    if ("lines" in log) {
      const lines = (log as { lines: string[] }).lines;
      console.error(lines.filter((line) => /^(warn|error)/.test(line)).join("\n"));
    }
    throw error;
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

function uri(dir: string, name: string): string {
  return `nbd+unix:///${name}?socket=${dir}/nbd.sock`;
}

function memoryExport(name: string, size: number, readOnly = false): ExportDefinition {
  return { name, open: shareBackend(new MemoryBackend(size, { readOnly })) };
}

async function sha256(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path);
  for await (const chunk of file.readable) hash.update(chunk);
  return hash.digest("hex");
}

async function writeRandomFile(path: string, size: number): Promise<void> {
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  const chunk = new Uint8Array(4 * MiB);
  for (let done = 0; done < size; done += chunk.length) {
    randomFillSync(chunk);
    let written = 0;
    while (written < chunk.length) written += await file.write(chunk.subarray(written));
  }
}

/** A raw NBD client over the export's unix socket, for bytes no real client sends. */
class RawClient {
  private constructor(readonly conn: Deno.UnixConn) {}

  static async connect(dir: string): Promise<RawClient> {
    const client = new RawClient(
      await Deno.connect({ transport: "unix", path: `${dir}/nbd.sock` }),
    );
    const greeting = await client.read(18);
    const view = new DataView(greeting.buffer);
    assert.equal(view.getBigUint64(0), NBD_MAGIC);
    assert.equal(view.getBigUint64(8), IHAVEOPT);
    await client.write(new Uint8Array([0, 0, 0, 3])); // FIXED_NEWSTYLE | NO_ZEROES
    return client;
  }

  async read(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const got = await this.conn.read(out.subarray(filled));
      if (got === null) throw new Error(`EOF after ${filled} of ${n} bytes`);
      filled += got;
    }
    return out;
  }

  async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) done += await this.conn.write(bytes.subarray(done));
  }

  async option(option: number, data: Uint8Array): Promise<void> {
    const bytes = new Uint8Array(16 + data.length);
    const view = new DataView(bytes.buffer);
    view.setBigUint64(0, IHAVEOPT);
    view.setUint32(8, option);
    view.setUint32(12, data.length);
    bytes.set(data, 16);
    await this.write(bytes);
  }

  /** Reads option replies up to the final one; returns the final reply's type. */
  async finalReply(): Promise<number> {
    for (;;) {
      const header = await this.read(20);
      const view = new DataView(header.buffer);
      assert.equal(view.getBigUint64(0), OPTION_REPLY_MAGIC);
      const type = view.getUint32(12);
      await this.read(view.getUint32(16));
      if (type !== Rep.INFO && type !== Rep.SERVER) return type;
    }
  }

  async go(name: string): Promise<number> {
    await this.option(Opt.GO, goData(name));
    return await this.finalReply();
  }

  /** A READ in the transmission phase; resolves with the data. */
  async readAt(offset: number, length: number): Promise<Uint8Array> {
    await this.write(encodeRequest({ type: Command.READ, handle: 1n, offset, length }));
    const reply = decodeReply(await this.read(REPLY_SIZE));
    assert.equal(reply.error, 0);
    return await this.read(length);
  }

  /** A WRITE in the transmission phase; resolves with the reply's NBD error code. */
  async writeRaw(offset: number, data: Uint8Array): Promise<number> {
    const request = encodeRequest({ type: Command.WRITE, handle: 2n, offset, length: data.length });
    await this.write(new Uint8Array([...request, ...data]));
    return decodeReply(await this.read(REPLY_SIZE)).error;
  }

  async writeAt(offset: number, data: Uint8Array): Promise<void> {
    assert.equal(await this.writeRaw(offset, data), 0);
  }

  /** True when the server closed the connection. */
  async closedByServer(): Promise<boolean> {
    try {
      return await this.conn.read(new Uint8Array(16)) === null;
    } catch {
      return true;
    }
  }

  close(): void {
    this.conn.close();
  }
}

function goData(name: string): Uint8Array {
  const nameBytes = new TextEncoder().encode(name);
  const data = new Uint8Array(4 + nameBytes.length + 2);
  new DataView(data.buffer).setUint32(0, nameBytes.length);
  data.set(nameBytes, 4);
  return data;
}

Deno.test({
  name: "nbdinfo --list lists every export with its size",
  ignore: !TOOLS.nbdinfo,
  fn: () =>
    withExports(
      [memoryExport("disk", 64 * MiB), memoryExport("small", MiB, true)],
      async (_, dir) => {
        const out = await runOk("nbdinfo", ["--list", "--json", uri(dir, "")]);
        const listed = JSON.parse(out) as {
          exports: { "export-name": string; "export-size": number; is_read_only: boolean }[];
        };
        const summary = listed.exports.map((
          e,
        ) => [e["export-name"], e["export-size"], e.is_read_only]);
        assert.deepEqual(summary, [["disk", 64 * MiB, false], ["small", MiB, true]]);
      },
    ),
});

Deno.test({
  name: "qemu-img convert copies a 256 MiB image out and back with equal checksums",
  ignore: !TOOLS.qemuImg,
  fn: () =>
    withExports([memoryExport("disk", 256 * MiB)], async (server, dir) => {
      await writeRandomFile(`${dir}/in.img`, 256 * MiB);
      await runOk("qemu-img", rawCopy(`${dir}/in.img`, uri(dir, "disk"), "-n"));
      await runOk("qemu-img", rawCopy(uri(dir, "disk"), `${dir}/out.img`));
      assert.equal(await sha256(`${dir}/out.img`), await sha256(`${dir}/in.img`));
      const [disk] = server.exports();
      assert.equal(disk.stats.bytesWritten, 256 * MiB);
      assert.ok(disk.stats.bytesRead >= 256 * MiB);
      assert.equal(disk.stats.errors, 0);
    }),
});

Deno.test({
  name: "qemu-io pipelined writes then reads verify their patterns",
  ignore: !TOOLS.qemuIo,
  fn: () =>
    withExports([memoryExport("disk", 16 * MiB)], async (_, dir) => {
      const out = await runOk("qemu-io", [
        "-f",
        "raw",
        ...["-c", "aio_write -P 0xab 0 1M", "-c", "aio_write -P 0xcd 1M 1M"],
        ...["-c", "aio_write -P 0xef 5M 64k", "-c", "aio_flush"],
        ...["-c", "read -P 0xab 0 1M", "-c", "read -P 0xcd 1M 1M", "-c", "read -P 0xef 5M 64k"],
        ...["-c", "read -P 0x00 2M 3M"],
        uri(dir, "disk"),
      ]);
      assert.doesNotMatch(out, /Pattern verification failed/);
      assert.equal(out.match(/^read /gm)?.length, 4);
    }),
});

Deno.test({
  name: "a read-only export refuses qemu-io writes",
  ignore: !TOOLS.qemuIo,
  fn: () =>
    withExports([memoryExport("ro", MiB, true)], async (_, dir) => {
      const result = await runTool("qemu-io", ["-f", "raw", "-c", "write 0 4k", uri(dir, "ro")]);
      assert.notEqual(result.code, 0);
      // qemu sees NBD_FLAG_READ_ONLY and will not open the export for writing.
      assert.match(result.stdout + result.stderr, /Permission denied|read-only/i);
      // A client that ignores the flag gets EPERM.
      const raw = await RawClient.connect(dir);
      try {
        assert.equal(await raw.go("ro"), Rep.ACK);
        assert.equal(await raw.writeRaw(0, new Uint8Array(512)), NbdError.EPERM);
      } finally {
        raw.close();
      }
    }),
});

Deno.test({
  name: "clients sharing an export see each other's writes (nbdcopy)",
  ignore: !TOOLS.nbdcopy,
  fn: () =>
    withExports([memoryExport("disk", 4 * MiB)], async (_, dir) => {
      const writer = await RawClient.connect(dir);
      try {
        assert.equal(await writer.go("disk"), Rep.ACK);
        await writer.writeAt(MiB, new Uint8Array(4096).fill(0x42));
        await runOk("nbdcopy", [uri(dir, "disk"), `${dir}/copy.img`]);
        const copy = await Deno.readFile(`${dir}/copy.img`);
        assert.equal(copy.length, 4 * MiB);
        assert.ok(copy.subarray(MiB, MiB + 4096).every((b) => b === 0x42));
        assert.equal(copy[MiB - 1], 0);
      } finally {
        writer.close();
      }
    }),
});

Deno.test({
  name: "an unknown export gets ERR_UNKNOWN and the server keeps serving other clients",
  ignore: !TOOLS.nbdinfo,
  fn: () =>
    withExports([memoryExport("disk", MiB)], async (_, dir) => {
      const busy = await RawClient.connect(dir);
      try {
        assert.equal(await busy.go("disk"), Rep.ACK);
        const failed = await runTool("nbdinfo", [uri(dir, "nope")]);
        assert.notEqual(failed.code, 0);
        // libnbd reports NBD_REP_ERR_UNKNOWN as ENOENT.
        assert.match(failed.stderr, /No such file or directory for export: nope|no export named/);
        // The client already in transmission is untouched; new clients still get in.
        await busy.writeAt(0, new Uint8Array([1, 2, 3, 4]));
        assert.deepEqual([...await busy.readAt(0, 4)], [1, 2, 3, 4]);
        assert.match(await runOk("nbdinfo", ["--size", uri(dir, "disk")]), /^1048576$/m);
      } finally {
        busy.close();
      }
    }),
});

Deno.test({
  name: "a malformed option gets ERR_INVALID, bad magic is dropped, and others are served",
  ignore: !TOOLS.nbdinfo,
  fn: () => {
    const log = memoryLog();
    return withExports([memoryExport("disk", MiB)], async (_, dir) => {
      const raw = await RawClient.connect(dir);
      try {
        const bad = goData("disk");
        new DataView(bad.buffer).setUint32(0, 0xffff); // name length past the option's end
        await raw.option(Opt.GO, bad);
        assert.equal(await raw.finalReply(), Rep.ERR_INVALID);
        await raw.write(new Uint8Array(16).fill(0x77)); // not IHAVEOPT
        assert.ok(await raw.closedByServer());
      } finally {
        raw.close();
      }
      assert.match(await runOk("nbdinfo", ["--size", uri(dir, "disk")]), /^1048576$/m);
      assert.ok(log.lines.some((line) => /handshake failed.*PROTOCOL/.test(line)));
    }, { log });
  },
});

Deno.test({
  name: "a TCP export on 127.0.0.1 serves nbdinfo",
  ignore: !TOOLS.nbdinfo,
  fn: () =>
    withExports([memoryExport("disk", 2 * MiB)], async (server) => {
      const { hostname, port } = server.tcpAddress!;
      const out = await runOk("nbdinfo", ["--size", `nbd://${hostname}:${port}/disk`]);
      assert.match(out, /^2097152$/m);
    }, { tcp: true }),
});

Deno.test("the export socket is mode 0600 and removed on close", async () => {
  let path = "";
  await withExports([memoryExport("disk", MiB)], async (server) => {
    path = server.socketPath!;
    const info = await Deno.stat(path);
    assert.ok(info.isSocket);
    assert.equal(info.mode! & 0o777, 0o600);
  });
  await assert.rejects(Deno.lstat(path), Deno.errors.NotFound);
});

Deno.test("a stale socket file is replaced, a live one or a plain file is refused", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nbd_export_test_" });
  const path = `${dir}/nbd.sock`;
  try {
    Deno.listen({ transport: "unix", path }).close(); // leaves a socket file nobody serves
    const server = await startExportServer({ socketPath: path, log: memoryLog() });
    try {
      await assert.rejects(
        startExportServer({ socketPath: path, log: memoryLog() }),
        (error) => error instanceof ExportServerError && error.code === "SOCKET_IN_USE",
      );
    } finally {
      await server.close();
    }
    await Deno.writeTextFile(`${dir}/file`, "not a socket");
    await assert.rejects(
      startExportServer({ socketPath: `${dir}/file`, log: memoryLog() }),
      (error) => error instanceof ExportServerError && error.code === "NOT_A_SOCKET",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("TCP on a non-loopback address and an empty or duplicate name are refused", async () => {
  await assert.rejects(
    startExportServer({ tcp: { hostname: "0.0.0.0", port: 0 }, log: memoryLog() }),
    (error) => error instanceof ExportServerError && error.code === "NOT_LOOPBACK",
  );
  await assert.rejects(
    startExportServer({ log: memoryLog() }),
    (error) => error instanceof ExportServerError && error.code === "NO_LISTENER",
  );
  await withExports([memoryExport("disk", MiB)], (server) => {
    assert.throws(
      () => server.addExport(memoryExport("disk", MiB)),
      (error) => error instanceof ExportServerError && error.code === "DUPLICATE",
    );
    assert.throws(
      () => server.addExport(memoryExport("", MiB)),
      (error) => error instanceof ExportServerError && error.code === "INVALID_NAME",
    );
    return Promise.resolve();
  });
});

/** An export whose backends count how often they are opened and closed. */
function countingExport(name: string): ExportDefinition & { opened: number; closed: number } {
  const shared = new MemoryBackend(MiB);
  const entry = {
    name,
    opened: 0,
    closed: 0,
    async open(): Promise<Backend> {
      entry.opened++;
      const view = await shareBackend(shared)();
      return {
        ...view,
        size: view.size,
        readOnly: view.readOnly,
        close: () => {
          entry.closed++;
          return Promise.resolve();
        },
      };
    },
  };
  return entry;
}

Deno.test("close() disconnects clients in transmission and closes their backends", async () => {
  const disk = countingExport("disk");
  const dir = await Deno.makeTempDir({ prefix: "nbd_export_test_" });
  const server = await startExportServer({
    socketPath: `${dir}/nbd.sock`,
    exports: [disk],
    log: memoryLog(),
  });
  const clients = [await RawClient.connect(dir), await RawClient.connect(dir)];
  try {
    for (const client of clients) assert.equal(await client.go("disk"), Rep.ACK);
    assert.deepEqual(server.exports().map((e) => e.clients), [2]);
    await server.close();
    for (const client of clients) assert.ok(await client.closedByServer());
    assert.deepEqual([disk.opened, disk.closed], [2, 2]);
    assert.equal(server.clients().length, 0);
  } finally {
    for (const client of clients) client.close();
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("removeExport disconnects that export's clients only", async () => {
  const a = countingExport("a");
  const b = countingExport("b");
  await withExports([a, b], async (server, dir) => {
    const onA = await RawClient.connect(dir);
    const onB = await RawClient.connect(dir);
    try {
      assert.equal(await onA.go("a"), Rep.ACK);
      assert.equal(await onB.go("b"), Rep.ACK);
      assert.equal(await server.removeExport("a"), true);
      assert.ok(await onA.closedByServer());
      assert.equal(a.closed, 1);
      assert.equal((await onB.readAt(0, 8)).length, 8);
      assert.deepEqual(server.exports().map((e) => e.name), ["b"]);
      assert.equal(await server.removeExport("a"), false);
    } finally {
      onA.close();
      onB.close();
    }
  });
});

Deno.test("connections beyond maxClients are closed at once", async () => {
  await withExports([memoryExport("disk", MiB)], async (_, dir) => {
    const first = await RawClient.connect(dir);
    const second = await Deno.connect({ transport: "unix", path: `${dir}/nbd.sock` });
    try {
      const buffer = new Uint8Array(18);
      assert.equal(await second.read(buffer), null, "no greeting for the extra client");
      assert.equal(await first.go("disk"), Rep.ACK);
    } finally {
      first.close();
      second.close();
    }
  }, { maxClients: 1 });
});

// ---- IVBS-backed exports ---------------------------------------------------

const IMAGE = { name: "vm", size: 256 * MiB };

/** An export whose every client gets its own IVBS session (fast failover backoff), kept in `sessions`. */
function sessionExport(
  ivbs: Awaited<ReturnType<typeof startIvbsServer>>,
  name: string,
  image: string,
  sessions: IvbsSession[],
): ExportDefinition {
  return {
    name,
    open: async () => {
      const session = await IvbsSession.open({
        proxies: ivbs.addresses(),
        image,
        ...USER,
        backoff: { initialMs: 10, maxMs: 100 },
        log: memoryLog(),
      });
      sessions.push(session);
      return session;
    },
  };
}
const USER = { username: "alice", password: "s3cret" };
const WRONG_PASSWORD = "not-alices-pass-7f3a";

Deno.test({
  name: "an IVBS export fails over when its proxy stops mid qemu-img convert",
  ignore: !TOOLS.qemuImg,
  fn: async () => {
    const ivbs = await startIvbsServer({
      users: [USER],
      images: [IMAGE],
      listProxiesIntervalMs: 0,
      log: memoryLog(),
    });
    const sessions: IvbsSession[] = [];
    const exportDef = sessionExport(ivbs, "vm", IMAGE.name, sessions);
    try {
      await withExports([exportDef], async (_, dir) => {
        await writeRandomFile(`${dir}/in.img`, IMAGE.size);
        const convert = new Deno.Command("qemu-img", {
          args: rawCopy(`${dir}/in.img`, uri(dir, "vm"), "-n"),
          stdout: "null",
          stderr: "piped",
        }).spawn();
        // Wait until the copy is under way, then stop the proxy this client uses.
        await eventually("16 WRITEs under way", () => (ivbs.stats.requests["WRITE"] ?? 0) >= 16);
        const inUse = sessions.at(-1)!.proxy!;
        const index = ivbs.proxies.findIndex((p) => `${p.host}:${p.port}` === inUse);
        assert.ok(index >= 0, `proxy ${inUse} is one of the server's`);
        await ivbs.stopProxy(index);
        const result = await convert.output();
        assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
        const session = sessions.at(-1)!;
        assert.ok(session.stats.failovers >= 1, "the session failed over");
        assert.notEqual(session.proxy, inUse);

        await runOk("qemu-img", rawCopy(uri(dir, "vm"), `${dir}/out.img`));
        assert.equal(await sha256(`${dir}/out.img`), await sha256(`${dir}/in.img`));
      });
    } finally {
      await ivbs.close();
    }
  },
});

Deno.test({
  name: "each client of an IVBS export gets its own session, closed when it leaves",
  ignore: !TOOLS.qemuIo,
  fn: async () => {
    const ivbs = await startIvbsServer({
      users: [USER],
      images: [{ name: "small", size: 8 * MiB }],
      listProxiesIntervalMs: 0,
      log: memoryLog(),
    });
    let opened = 0;
    const exportDef: ExportDefinition = {
      name: "small",
      open: () => {
        opened++;
        return IvbsSession.open({
          proxies: ivbs.addresses(),
          image: "small",
          ...USER,
          log: memoryLog(),
        });
      },
    };
    try {
      await withExports([exportDef], async (server, dir) => {
        await runOk("qemu-io", ["-f", "raw", "-c", "write -P 0x5c 4M 1M", uri(dir, "small")]);
        await runOk("qemu-io", ["-f", "raw", "-c", "read -P 0x5c 4M 1M", uri(dir, "small")]);
        assert.equal(opened, 2);
        // Both clients have exited; their sessions close as we notice the EOF.
        await eventually("export clients gone", () => server.clients().length === 0);
        await eventually(
          "IVBS connections closed",
          () => ivbs.proxies.reduce((n, p) => n + p.connections, 0) === 0,
        );
      });
    } finally {
      await ivbs.close();
    }
  },
});

Deno.test("an IVBS export with a wrong password answers ERR_UNKNOWN and logs the cause", async () => {
  const ivbs = await startIvbsServer({
    users: [USER],
    images: [{ name: "small", size: MiB }],
    listProxiesIntervalMs: 0,
    log: memoryLog(),
  });
  const log = memoryLog();
  const exportDef: ExportDefinition = {
    name: "small",
    open: () =>
      IvbsSession.open({
        proxies: ivbs.addresses(),
        image: "small",
        username: USER.username,
        password: WRONG_PASSWORD,
        log: memoryLog(),
      }),
  };
  try {
    await withExports([exportDef], async (_, dir) => {
      const raw = await RawClient.connect(dir);
      try {
        assert.equal(await raw.go("small"), Rep.ERR_UNKNOWN);
      } finally {
        raw.close();
      }
    }, { log });
    assert.ok(log.lines.some((line) => line.startsWith("warn cannot open export backend")));
    assert.ok(log.lines.every((line) => !line.includes(WRONG_PASSWORD)), "no password in the log");
  } finally {
    await ivbs.close();
  }
});

// ---- the `ivbsnetd export` command -----------------------------------------

/** The exports a command line asks for, through the command's definition. */
function parseExportArgs(args: string[]) {
  return exportCommand(parseCommandLine(EXPORT, args).values);
}

Deno.test("parseExportArgs pairs names with images and defaults names to image names", () => {
  const ivbs = ["--user", "u", "--password-file", "/p", "--proxy", "127.0.0.1:11417"];
  const paired = parseExportArgs([
    "--socket",
    "/s",
    ...["--name", "a", "--image", "img-a", "--name", "b", "--image", "img-b"],
    ...ivbs,
  ]);
  assert.deepEqual(paired.names, ["a", "b"]);
  assert.deepEqual(paired.source, {
    kind: "ivbs",
    images: ["img-a", "img-b"],
    username: "u",
    passwordFile: "/p",
    proxies: [{ host: "127.0.0.1", port: 11417 }],
  });
  const defaulted = parseExportArgs(["--tcp", "127.0.0.1:0", "--image", "disk0", ...ivbs]);
  assert.deepEqual(defaulted.names, ["disk0"]);
  assert.deepEqual(defaulted.tcp, { hostname: "127.0.0.1", port: 0 });
  const memory = parseExportArgs(["--socket", "/s", "--name", "m", "--memory", "256M"]);
  assert.deepEqual(memory.source, { kind: "memory", size: 256 * MiB });
});

Deno.test("parseExportArgs names the flag that is wrong", () => {
  const cases: [string[], RegExp][] = [
    [["--name", "a", "--memory", "1M"], /--socket PATH and\/or --tcp/],
    [["--socket", "/s", "--memory", "1M"], /--memory needs at least one --name/],
    [["--socket", "/s", "--name", "a"], /exactly one source/],
    [["--socket", "/s", "--name", "a", "--memory", "lots"], /size "lots"/],
    [["--socket", "/s", "--name", "a", "--name", "a", "--memory", "1M"], /"a" is given twice/],
    [["--socket", "/s", "--image", "x", "--user", "u", "--password-file", "/p"], /--proxy/],
    [["--socket", "/s", "--image", "x", "--name", "a", "--name", "b"], /2 --name for 1 --image/],
    [["--tcp", "localhost", "--name", "a", "--memory", "1M"], /--tcp "localhost" is not HOST:PORT/],
    [["--socket", "/s", "--bogus"], /bogus/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseExportArgs(args), (error) => {
      assert.ok(error instanceof UsageError, `${args.join(" ")}: ${error}`);
      assert.match(error.message, message);
      return true;
    });
  }
});

const MAIN = new URL("../main.ts", import.meta.url).pathname;

function startExportCommand(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", MAIN, "export", ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

Deno.test({
  name: "ivbsnetd export serves a memory disk to qemu-io and exits 0 on SIGTERM",
  ignore: !TOOLS.qemuIo,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nbd_export_test_" });
    const socket = `${dir}/nbd.sock`;
    const child = startExportCommand(["--socket", socket, "--name", "m", "--memory", "8M"]);
    try {
      await eventually("the export socket", () => {
        try {
          return Deno.statSync(socket).isSocket === true;
        } catch {
          return false;
        }
      });
      const out = await runOk("qemu-io", [
        ...["-f", "raw", "-c", "aio_write -P 0x3c 1M 1M", "-c", "aio_flush"],
        ...["-c", "read -P 0x3c 1M 1M", `nbd+unix:///m?socket=${socket}`],
      ]);
      assert.doesNotMatch(out, /Pattern verification failed/);
    } finally {
      child.kill("SIGTERM");
      const result = await child.output();
      const stderr = new TextDecoder().decode(result.stderr);
      assert.equal(result.code, 0, stderr);
      assert.match(stderr, /export totals export=m reads=1 writes=1/);
      await assert.rejects(Deno.lstat(socket), Deno.errors.NotFound);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("ivbsnetd export exits 1 with one clear line when IVBS login is refused", async () => {
  const ivbs = await startIvbsServer({
    users: [USER],
    images: [{ name: "small", size: MiB }],
    listProxiesIntervalMs: 0,
    log: memoryLog(),
  });
  const dir = await Deno.makeTempDir({ prefix: "nbd_export_test_" });
  try {
    await Deno.writeTextFile(`${dir}/password`, `${WRONG_PASSWORD}\n`, { mode: 0o600 });
    const [proxy] = ivbs.addresses();
    const result = await startExportCommand([
      ...["--socket", `${dir}/nbd.sock`, "--image", "small", "--user", USER.username],
      ...["--password-file", `${dir}/password`, "--proxy", `${proxy.host}:${proxy.port}`],
    ]).output();
    const stderr = new TextDecoder().decode(result.stderr);
    assert.equal(result.code, 1, stderr);
    assert.match(stderr, /^ivbsnetd export: .*(denied|refused)/im);
    assert.ok(!stderr.includes(WRONG_PASSWORD), "no password in the output");
  } finally {
    await ivbs.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a client holding the only slot silently after the handshake gives it up to a newcomer", async () => {
  const log = memoryLog();
  await withExports([memoryExport("disk", MiB)], async (_server, dir) => {
    const squatter = await RawClient.connect(dir);
    assert.equal(await squatter.go("disk"), Rep.ACK);
    // The squatter now sends nothing. With the slot policy at 0 ms it is idle long enough.
    const newcomer = await RawClient.connect(dir);
    assert.equal(await newcomer.go("disk"), Rep.ACK);
    assert.deepEqual(await newcomer.readAt(0, 512), new Uint8Array(512));
    assert.ok(await squatter.closedByServer(), "the idle client lost its slot");
    newcomer.close();
  }, { maxClients: 1, idleEvictMs: 0, log });
  assert.equal(
    log.lines.filter((l) => l.includes("idle too long closed to make room")).length,
    1,
    log.lines.join("\n"),
  );
});

Deno.test("a slot idle for less than the limit is kept; refusals are logged once, not once per client", async () => {
  const log = memoryLog();
  await withExports([memoryExport("disk", MiB)], async (_server, dir) => {
    const holder = await RawClient.connect(dir);
    assert.equal(await holder.go("disk"), Rep.ACK);
    for (let i = 0; i < 5; i++) {
      const refused = await Deno.connect({ transport: "unix", path: `${dir}/nbd.sock` });
      assert.equal(await refused.read(new Uint8Array(18)), null, "closed without a greeting");
      refused.close();
    }
    assert.deepEqual(await holder.readAt(0, 512), new Uint8Array(512), "the holder still works");
    holder.close();
  }, { maxClients: 1, idleEvictMs: 3_600_000, log });
  const refusals = log.lines.filter((l) => l.includes("too many clients"));
  assert.equal(refusals.length, 1, refusals.join("\n"));
});

Deno.test("a client that never starts the handshake is closed at the handshake deadline", async () => {
  await withExports([memoryExport("disk", MiB)], async (_server, dir) => {
    const silent = await Deno.connect({ transport: "unix", path: `${dir}/nbd.sock` });
    const buffer = new Uint8Array(64);
    let total = 0;
    for (;;) {
      const n = await silent.read(buffer).catch(() => null);
      if (n === null) break;
      total += n;
    }
    assert.equal(total, 18, "the greeting, then the server hung up");
    silent.close();
  }, { handshakeTimeoutMs: 30 });
});

Deno.test({
  name: "nbdinfo --json shows can_multi_conn on memory and IVBS exports",
  ignore: !TOOLS.nbdinfo,
  fn: async () => {
    const ivbs = await startIvbsServer({
      users: [USER],
      images: [{ name: "small", size: 8 * MiB }],
      listProxiesIntervalMs: 0,
      log: memoryLog(),
    });
    const ivbsExport: ExportDefinition = {
      name: "small",
      open: () =>
        IvbsSession.open({ proxies: ivbs.addresses(), image: "small", ...USER, log: memoryLog() }),
    };
    try {
      await withExports([memoryExport("mem", MiB), ivbsExport], async (_, dir) => {
        for (const name of ["mem", "small"]) {
          const info = JSON.parse(await runOk("nbdinfo", ["--json", uri(dir, name)])) as {
            exports: { can_multi_conn: boolean; can_flush: boolean }[];
          };
          assert.equal(info.exports[0].can_multi_conn, true, name);
          assert.equal(info.exports[0].can_flush, false, `${name}: no volatile cache to flush`);
        }
      });
    } finally {
      await ivbs.close();
    }
  },
});

/** 64 MiB: 256 of nbdcopy's 256 KiB requests each way, enough for several kills. */
const MULTI_IMAGE = { name: "multi", size: 64 * MiB };

Deno.test({
  name: "nbdcopy --connections=4 into an IVBS export and back keeps sha256 through proxy kills",
  ignore: !TOOLS.nbdcopy,
  fn: async () => {
    const ivbs = await startIvbsServer({
      ports: [0, 0, 0],
      users: [USER],
      images: [MULTI_IMAGE],
      listProxiesIntervalMs: 0,
      log: memoryLog(),
    });
    const sessions: IvbsSession[] = [];
    const exportDef = sessionExport(ivbs, "vm", MULTI_IMAGE.name, sessions);
    try {
      await withExports([exportDef], async (server, dir) => {
        await writeRandomFile(`${dir}/in.img`, MULTI_IMAGE.size);
        const into = await copyWhileKillingProxies(
          ivbs,
          ["--connections=4", "--threads=4", `${dir}/in.img`, uri(dir, "vm")],
        );
        const back = await copyWhileKillingProxies(
          ivbs,
          ["--connections=4", "--threads=4", uri(dir, "vm"), `${dir}/out.img`],
        );
        assert.equal(await sha256(`${dir}/out.img`), await sha256(`${dir}/in.img`));
        // Each nbdcopy connection had a session of its own. (nbdcopy opens no more
        // connections than threads, hence --threads=4 on a 2-core host.)
        assert.ok(sessions.length >= 8, `${sessions.length} sessions for 2 copies x 4 connections`);
        assert.ok(into.kills >= 1 && back.kills >= 1, `kills: ${into.kills} + ${back.kills}`);
        const failovers = sessions.reduce((n, s) => n + s.stats.failovers, 0);
        assert.ok(failovers >= 1, "some session failed over");
        const [vm] = server.exports();
        assert.equal(vm.stats.errors, 0);
        console.log(
          `nbdcopy x4: ${sessions.length} sessions, ${into.kills}+${back.kills} proxy kills, ` +
            `${failovers} failovers, sha256 equal`,
        );
      });
    } finally {
      await ivbs.close();
    }
  },
});

/**
 * Runs nbdcopy with `args` while stopping a proxy every 32 requests the IVBS
 * server serves and starting it again 32 requests later, round robin over
 * the proxies; resolves once nbdcopy exited 0, with the number of kills.
 */
async function copyWhileKillingProxies(
  ivbs: Awaited<ReturnType<typeof startIvbsServer>>,
  args: string[],
): Promise<{ kills: number }> {
  const copy = new Deno.Command("nbdcopy", { args, stdout: "null", stderr: "piped" }).spawn();
  let done = false;
  const output = copy.output().finally(() => done = true);
  const served = () => (ivbs.stats.requests["WRITE"] ?? 0) + (ivbs.stats.requests["READ"] ?? 0);
  const waitServed = async (more: number) => {
    const target = served() + more;
    await eventually(`${more} more requests served`, () => done || served() >= target, 60_000);
  };
  let kills = 0;
  for (let next = 0; !done; next = (next + 1) % ivbs.proxies.length) {
    await waitServed(32);
    if (done) break;
    await ivbs.stopProxy(next);
    kills++;
    await waitServed(32);
    await ivbs.startProxy(next);
  }
  const result = await output;
  assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
  return { kills };
}
