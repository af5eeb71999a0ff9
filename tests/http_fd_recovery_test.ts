/**
 * Cap recovery after a descriptor shortage, on a real process: the server
 * holds a few idle clients, its free descriptors are taken (accept fails with
 * EMFILE), then given back. Afterwards the full cap is there again: as many
 * idle clients as the cap allows are held open at once, and every one of them
 * is answered (none was closed to fit a cap lowered for good).
 */
import assert from "node:assert/strict";
import { hasTool } from "./support/tools.ts";

const CAP = 8;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const CHILD = new URL("./support/http_fd_child.ts", import.meta.url).pathname;

/** One request on a kept-alive connection; its answer's body (Content-Length framed). */
async function ask(conn: Deno.Conn, path: string): Promise<string> {
  await conn.write(encoder.encode(`GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`));
  let text = "";
  const buffer = new Uint8Array(4096);
  for (;;) {
    const end = text.indexOf("\r\n\r\n");
    if (end >= 0) {
      const length = Number(/content-length: (\d+)/i.exec(text)?.[1] ?? 0);
      if (text.length >= end + 4 + length) return text.slice(end + 4, end + 4 + length);
    }
    const n = await conn.read(buffer);
    if (n === null) throw new Error(`connection closed before the answer to ${path}`);
    text += decoder.decode(buffer.subarray(0, n));
  }
}

const HAS_PRLIMIT = await hasTool("prlimit");

Deno.test({
  name: "after an EMFILE episode the full connection cap is back",
  ignore: !HAS_PRLIMIT,
  async fn() {
    const child = new Deno.Command("prlimit", {
      args: ["--nofile=200:200", Deno.execPath(), "run", "-A", CHILD, String(CAP)],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const stderr = new Response(child.stderr).text();
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    while (!/port (\d+)/.test(out)) {
      const { value, done } = await lines.read();
      if (done) throw new Error(`child exited: ${out}\n${await stderr}`);
      out += value;
    }
    const port = Number(/port (\d+)/.exec(out)![1]);
    const held: Deno.Conn[] = [];
    const connect = async () => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      held.push(conn);
      return conn;
    };
    try {
      // Four idle clients, then the descriptors are taken.
      for (let i = 0; i < 4; i++) assert.equal(await ask(await connect(), `/${i}`), `ok /${i}`);
      assert.match(await ask(held[0], "/hog"), /^held \d+$/);
      // Newcomers now meet EMFILE on accept (they wait in the backlog meanwhile).
      const waiting = [connect(), connect()];
      const conns = await Promise.all(waiting);
      await ask(held[1], "/ping"); // the server keeps serving what it has
      assert.equal(await ask(held[0], "/release"), "released");
      // The two newcomers get in once descriptors are back; then fill the cap.
      for (const conn of conns) assert.equal(await ask(conn, "/late"), "ok /late");
      while (held.length < CAP) await connect();
      const answers = await Promise.all(held.map((conn, i) => ask(conn, `/all${i}`)));
      assert.deepEqual(answers, held.map((_, i) => `ok /all${i}`), "all clients up to the cap");
    } finally {
      for (const conn of held) {
        try {
          conn.close();
        } catch {
          // Closed by the server.
        }
      }
      child.kill("SIGTERM");
      await child.status;
      await lines.cancel();
      const log = await stderr;
      if (Deno.env.get("SHOW_CHILD_LOG")) console.log(log);
    }
  },
});
