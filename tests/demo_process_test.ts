/**
 * `deno task demo` as a process stopped with SIGTERM (a service manager, a
 * terminal closing, `timeout`): it exits 0 having detached what it mounted,
 * closed its export and stopped its IVBS test server, and leaves neither a
 * listening proxy nor its temp directory behind. On a host with nbd and root
 * (the NBD VM) the demo also mounts a device, which must be detached after.
 */
import assert from "node:assert/strict";
import { attachedNbdDevices, kernelSkipReason, MAIN } from "../bench/rigs/daemon_harness.ts";

async function refused(host: string, port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: host, port });
    conn.close();
    return false;
  } catch (error) {
    return error instanceof Deno.errors.ConnectionRefused;
  }
}

Deno.test("the demo under SIGTERM detaches its device, stops its test server and exits 0", async () => {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, "demo", "--listen", "127.0.0.1:0", "--size-gib", "0.0625"],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", IVBSNETD_LOG: "info" },
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let banner = "";
  try {
    while (!/Ctrl-C or SIGTERM stops everything/.test(banner)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`the demo ended before running:\n${banner}\n${await stderr}`);
      banner += value;
    }
  } finally {
    reader.releaseLock();
  }
  const proxies = /IVBS proxies: (\S+), (\S+) /.exec(banner);
  assert.ok(proxies, banner);
  const addresses = [proxies[1], proxies[2]].map((a) => {
    const [host, port] = a.split(":");
    return { host, port: Number(port) };
  });
  const socket = /NBD export: +nbd\+unix:\/\/\/demo\?socket=(\S+)/.exec(banner)?.[1];
  assert.ok(socket, banner);
  const mounted = /mounted on (\/dev\/nbd\d+)/.exec(banner)?.[1] ?? null;
  if (kernelSkipReason() === null) assert.ok(mounted, `root with nbd: the demo mounts\n${banner}`);
  else assert.match(banner, /not mounting a device: /);
  for (const { host, port } of addresses) {
    assert.equal(await refused(host, port), false, "the test server listens while the demo runs");
  }

  child.kill("SIGTERM");
  const status = await child.status;
  await child.stdout.cancel().catch(() => {});
  const log = await stderr;
  assert.equal(status.code, 0, log);
  assert.match(log, /shutting down reason="SIGTERM: the demo detaches its device and stops"/);
  assert.match(log, /keepDevices=false/);
  assert.match(log, /stopped; every device detached, every export closed/);
  for (const { host, port } of addresses) {
    assert.equal(await refused(host, port), true, `proxy ${host}:${port} still listens`);
  }
  const stateDir = socket.slice(0, socket.lastIndexOf("/"));
  await assert.rejects(Deno.stat(stateDir), Deno.errors.NotFound, "temp directory removed");
  if (mounted !== null) {
    assert.ok(!(await attachedNbdDevices()).includes(mounted), `${mounted} left attached`);
  }
});
