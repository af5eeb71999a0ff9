/**
 * sd_notify: the daemon tells systemd it is ready with one datagram to
 * $NOTIFY_SOCKET, a path or an "@" abstract address. A python3 datagram
 * listener plays systemd (the test skips where python3 is missing).
 */
import assert from "node:assert/strict";
import { notifySystemd } from "../src/daemon/sd_notify.ts";
import { hasTool } from "./support/tools.ts";
import { DaemonProcess, startIvbs, USER, writeConfig } from "../bench/rigs/daemon_harness.ts";

const HAS_PYTHON = await hasTool("python3");
if (!HAS_PYTHON) console.warn("sd_notify_test: python3 is not installed; skipped");

/** A stand-in for systemd: binds `address`, prints "bound", then the first datagram. */
async function withListener(
  address: string,
  send: () => void | Promise<void>,
): Promise<string> {
  const script = [
    "import os, socket, sys",
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)",
    "a = sys.argv[1]",
    "if not a.startswith('@') and os.path.exists(a): os.unlink(a)",
    "s.bind('\\0' + a[1:] if a.startswith('@') else a)",
    "print('bound', flush=True)",
    "s.settimeout(10)",
    "print(s.recv(4096).decode(), flush=True)",
  ].join("\n");
  const child = new Deno.Command("python3", {
    args: ["-c", script, address],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("bound\n")) {
    const { value, done } = await lines.read();
    if (done) throw new Error(`listener exited early: ${seen}`);
    seen += value;
  }
  await send();
  for (;;) {
    const { value, done } = await lines.read();
    if (done) break;
    seen += value;
  }
  assert.ok((await child.status).success);
  return seen.slice("bound\n".length).trim();
}

Deno.test("without $NOTIFY_SOCKET there is nobody to notify", () => {
  assert.equal(notifySystemd("READY=1", undefined), false);
  assert.equal(notifySystemd("READY=1", ""), false);
});

Deno.test({
  name: "READY=1 reaches a listener on a socket path",
  ignore: !HAS_PYTHON,
  fn: async () => {
    const dir = await Deno.makeTempDir();
    try {
      const path = `${dir}/notify`;
      const got = await withListener(path, () => assert.ok(notifySystemd("READY=1", path)));
      assert.equal(got, "READY=1");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "an @ address is systemd's abstract-namespace socket",
  ignore: !HAS_PYTHON,
  fn: async () => {
    const name = `@ivbsnetd-test-${crypto.randomUUID()}`;
    const got = await withListener(
      name,
      () => assert.ok(notifySystemd("READY=1\nSTATUS=3 mounts", name)),
    );
    assert.equal(got, "READY=1\nSTATUS=3 mounts");
  },
});

Deno.test("a named socket nobody listens on is an error, not silence", () => {
  assert.throws(
    () => notifySystemd("READY=1", "/nonexistent/ivbsnetd-notify"),
    /connect\(.*ENOENT/,
  );
});

Deno.test({
  name:
    "serve says READY=1 to systemd once its configured exports are up, STOPPING=1 on the way out",
  ignore: !HAS_PYTHON,
  fn: async () => {
    const ivbs = await startIvbs([{ name: "disk", size: 1024 * 1024 }]);
    const base = await Deno.makeTempDir({ prefix: "ivbsnetd-notify-" });
    const { dir, path } = await writeConfig({
      http: { listen: "127.0.0.1:0" },
      ivbs: { proxies: ivbs.addresses() },
      users: [USER],
      stateDir: `${base}/state`,
      exports: { items: [{ name: "vm1", image: "disk", user: USER.username }] },
    });
    const notify = `${base}/notify`;
    let daemon: DaemonProcess | null = null;
    try {
      const ready = await withListener(notify, async () => {
        daemon = await DaemonProcess.start(path, { env: { NOTIFY_SOCKET: notify } });
      });
      assert.equal(ready, "READY=1\nSTATUS=1 ready");
      const exports = await (await fetch(`${daemon!.url}/api/exports`)).json();
      assert.equal(exports.exports[0].state, "ready", "ready means the export is up");
      const stopping = await withListener(notify, async () => {
        assert.equal((await daemon!.stop("SIGINT")).code, 0);
      });
      assert.equal(stopping, "STOPPING=1");
      daemon = null;
    } finally {
      await (daemon as DaemonProcess | null)?.stop();
      await ivbs.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(base, { recursive: true });
    }
  },
});
