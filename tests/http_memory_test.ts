/**
 * The read buffer's bound, measured on a real `ivbsnetd serve` process: one
 * chunked body of 64 MB made of 1-byte chunks with 1,000-byte chunk
 * extensions (what grew the daemon by 94 MiB before chunk framing counted
 * against a limit) grows the daemon's resident set by less than 32 MiB.
 */
import assert from "node:assert/strict";
import { DaemonProcess, startIvbs, writeConfig } from "../bench/rigs/daemon_harness.ts";

const MIB = 1024 * 1024;
const encoder = new TextEncoder();

async function rssBytes(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  assert.ok(kib, "no VmRSS in /proc/PID/status");
  return Number(kib) * 1024;
}

/** Sends `total` bytes of 1-byte chunks with long extensions; stops when the server hangs up. */
async function sendLongExtensions(port: number, total: number): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reading = (async () => {
    const buffer = new Uint8Array(4096);
    try {
      while (await conn.read(buffer) !== null) { /* drain the answer */ }
    } catch {
      // Reset by the server: it stopped reading.
    }
  })();
  const chunk = `1;${"e".repeat(1000)}\r\nx\r\n`;
  const batch = encoder.encode(chunk.repeat(Math.floor(MIB / chunk.length)));
  let sent = 0;
  try {
    await conn.write(
      encoder.encode(
        `POST /api/mounts HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
          "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
      ),
    );
    while (sent < total) {
      let done = 0;
      while (done < batch.length) done += await conn.write(batch.subarray(done));
      sent += batch.length;
    }
    await conn.write(encoder.encode("0\r\n\r\n"));
  } catch {
    // The server closed the connection: what it read so far is all it could cost.
  }
  try {
    conn.closeWrite();
  } catch {
    // Already closed.
  }
  await reading;
  try {
    conn.close();
  } catch {
    // Already closed.
  }
  return sent;
}

Deno.test("a 64 MB chunked body of 1,000-byte extensions grows the daemon by less than 32 MiB", async () => {
  const ivbs = await startIvbs([]);
  const { dir, path } = await writeConfig({
    stateDir: "/nonexistent-unused",
    http: { listen: "127.0.0.1:0" },
    ivbs: { proxies: ivbs.addresses() },
  });
  await Deno.writeTextFile(
    path,
    JSON.stringify({ ...JSON.parse(await Deno.readTextFile(path)), stateDir: `${dir}/state` }),
  );
  const daemon = await DaemonProcess.start(path);
  try {
    const port = Number(new URL(daemon.url).port);
    // Warm up (JIT, first allocations) so the baseline is the steady state.
    for (let i = 0; i < 50; i++) await (await fetch(`${daemon.url}/api/health`)).text();
    const before = await rssBytes(daemon.pid);
    const sent = await sendLongExtensions(port, 64 * 1000 * 1000);
    const health = await fetch(`${daemon.url}/api/health`);
    assert.equal(health.status, 200, "the daemon still answers");
    await health.text();
    const growth = await rssBytes(daemon.pid) - before;
    console.log(
      `RSS ${(before / MIB).toFixed(1)} MiB before, growth ${(growth / MIB).toFixed(1)} MiB ` +
        `after the client sent ${(sent / MIB).toFixed(1)} MiB`,
    );
    assert.ok(growth < 32 * MIB, `the daemon grew by ${(growth / MIB).toFixed(1)} MiB`);
  } finally {
    await daemon.stop();
    await ivbs.close();
    await Deno.remove(dir, { recursive: true });
  }
});
