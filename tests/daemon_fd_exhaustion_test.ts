/**
 * The descriptor-exhaustion attack on a real daemon process: a local user
 * opens more idle HTTP connections than the daemon has file descriptors (it
 * runs under `prlimit --nofile`), sends nothing on them, and keeps them open.
 * The daemon must stay up, a well-behaved client must still export an image
 * and read it over NBD, and `GET /api/health` must answer; the log stays short
 * (no stack, no Deno.serve notice).
 */
import assert from "node:assert/strict";
import { DaemonProcess, startIvbs, USER, writeConfig } from "../bench/rigs/daemon_harness.ts";
import { hasTool, runTool } from "./support/tools.ts";

const MIB = 1024 * 1024;
/** The daemon's descriptor limit (soft = hard, so start-up cannot raise it). */
const NOFILE = 96;
const ATTACK_CONNECTIONS = 2 * NOFILE;

/** Connects or gives up after a while (a full backlog leaves SYNs unanswered). */
async function connectOrNull(port: number): Promise<Deno.TcpConn | null> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const attempt = Deno.connect({ hostname: "127.0.0.1", port });
  const late = new Promise<null>((resolve) => timer = setTimeout(() => resolve(null), 3000));
  try {
    const conn = await Promise.race([attempt, late]);
    if (conn === null) attempt.then((c) => c.close(), () => {});
    return conn;
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
  }
}

const HAS_PRLIMIT = await hasTool("prlimit");
if (!HAS_PRLIMIT) {
  console.warn("daemon_fd_exhaustion_test: skipped, prlimit (util-linux) is missing");
}

Deno.test({
  name:
    "idle connections beyond the descriptor limit neither kill the daemon nor lock out a well-behaved client",
  ignore: !HAS_PRLIMIT,
  async fn() {
    const ivbs = await startIvbs([{ name: "disk", size: 8 * MIB }]);
    const { dir, path } = await writeConfig({
      http: { listen: "127.0.0.1:0" },
      ivbs: { proxies: ivbs.addresses(), connectTimeoutMs: 2000 },
      users: [USER],
    });
    // The export socket goes under the test's own directory.
    const stateDir = `${dir}/state`;
    await Deno.writeTextFile(
      path,
      JSON.stringify({ ...JSON.parse(await Deno.readTextFile(path)), stateDir }),
    );
    const daemon = await DaemonProcess.start(path, {
      wrapper: ["prlimit", `--nofile=${NOFILE}:${NOFILE}`],
    });
    const port = Number(new URL(daemon.url).port);
    const held: Deno.TcpConn[] = [];
    try {
      for (let i = 0; i < ATTACK_CONNECTIONS; i++) {
        const conn = await connectOrNull(port);
        if (conn) held.push(conn);
      }
      assert.ok(held.length > NOFILE, `only ${held.length} attack connections were accepted`);

      const health = await fetch(`${daemon.url}/api/health`);
      assert.equal(health.status, 200);
      assert.equal((await health.json()).status, "ok");

      const added = await fetch(`${daemon.url}/api/exports`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "vm", image: "disk", ...USER }),
      });
      const info = await added.json();
      assert.equal(added.status, 201, JSON.stringify(info));
      // A chunked body (what made Deno.serve print its request.signal notice at shutdown).
      const chunked = await fetch(`${daemon.url}/api/mounts`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: ReadableStream.from([new TextEncoder().encode("{}")]),
      });
      assert.equal(chunked.status, 400, await chunked.text());
      if (await hasTool("nbdinfo")) {
        const size = await runTool("nbdinfo", ["--size", info.uri]);
        assert.equal(size.code, 0, size.stderr);
        assert.equal(size.stdout.trim(), String(8 * MIB));
      }
    } finally {
      for (const conn of held) {
        try {
          conn.close();
        } catch {
          // The daemon closed it first.
        }
      }
      const { code, stderr } = await daemon.stop();
      if (Deno.env.get("SHOW_DAEMON_LOG")) console.log(stderr);
      await ivbs.close();
      await Deno.remove(dir, { recursive: true });
      assert.equal(code, 0, stderr);
      assert.doesNotMatch(stderr, /Uncaught|Too many open files.*\n.*at /);
      assert.doesNotMatch(stderr, /request\.signal|legacy behavior/);
      const acceptLines = stderr.split("\n").filter((l) => l.includes("accepting an HTTP"));
      assert.ok(
        acceptLines.length <= 2,
        `accept failures flood the log:\n${acceptLines.join("\n")}`,
      );
    }
  },
});
