/**
 * The daemon as a user runs it: `deno run -A main.ts serve --config FILE` in a
 * child process, against the IVBS test server, driven by the one-shot client
 * commands (each its own process), stopped with SIGTERM. Without /dev/nbd0
 * every real mount fails with NO_MODULE and the daemon stays up; with it (the
 * VM), mounts succeed and nothing stays attached after SIGTERM.
 */
import assert from "node:assert/strict";
import {
  attachedNbdDevices,
  DaemonProcess,
  ivbsnetd,
  kernelSkipReason,
  startIvbs,
  USER,
  writeConfig,
} from "./daemon_harness.ts";

const TOKEN = "process-test-token-1";
const MIB = 1024 * 1024;

Deno.test("serve runs against the IVBS test server, obeys the one-shot client and exits 0 on SIGTERM", async () => {
  const kernel = kernelSkipReason() === null;
  const ivbs = await startIvbs([{ name: "disk", size: 64 * MIB }]);
  const { dir, path } = await writeConfig({
    http: { listen: "127.0.0.1:0", token: TOKEN },
    ivbs: { proxies: ivbs.addresses(), connectTimeoutMs: 2000 },
    nbd: { devices: 4 },
    users: [USER],
    mounts: [
      { device: "auto", image: "disk", user: USER.username },
      { device: "nbd1", image: "no-such-image", user: USER.username },
    ],
  });
  const daemon = await DaemonProcess.start(path);
  try {
    const server = ["--server", daemon.url];
    const auth = [...server, "--token", TOKEN];

    const check = await ivbsnetd(["check", ...server]);
    assert.equal(check.code, 0, check.stderr);
    assert.match(check.stdout, /is up \(version/);

    const unauthorized = await ivbsnetd(["mount", ...server, "auto", "disk", USER.username, "x"]);
    assert.equal(unauthorized.code, 1);
    assert.match(unauthorized.stderr, /bearer token \(pass --token/);

    const mount = await ivbsnetd(
      ["mount", ...auth, "--password-stdin", "--json", "auto", "disk", USER.username],
      USER.password + "\n",
    );
    let mounted: string | null = null;
    if (kernel) {
      assert.equal(mount.code, 0, mount.stderr);
      mounted = JSON.parse(mount.stdout).device;
    } else {
      assert.equal(mount.code, 1, mount.stdout);
      assert.match(mount.stderr, /nbd kernel module is not loaded.*\[NO_MODULE\]/);
    }

    const list = await ivbsnetd(["list", ...server, "--json"]);
    assert.equal(list.code, 0, list.stderr);
    const images = (JSON.parse(list.stdout) as { image: string }[]).map((m) => m.image);
    assert.deepEqual(images, kernel ? ["disk", "disk"] : []);

    const all = await ivbsnetd(["list", ...server, "--all"]);
    assert.equal(all.code, 0, all.stderr);
    if (!kernel) assert.match(all.stdout, /No NBD devices \(the nbd kernel module is not loaded\)/);

    const unmount = await ivbsnetd(["unmount", ...auth, mounted ?? "nbd0"]);
    if (kernel) {
      assert.equal(unmount.code, 0, unmount.stderr);
    } else {
      assert.equal(unmount.code, 1);
      assert.match(unmount.stderr, /\/dev\/nbd0 does not exist \[UNKNOWN_DEVICE\]/);
    }

    const legacy = await fetch(`${daemon.url}/status/json`);
    assert.equal((await legacy.json()).Type, "Mounted");

    const still = await ivbsnetd(["check", ...server]);
    assert.equal(still.code, 0, "the daemon stays up after failed mounts");
  } finally {
    const { code, stdout, stderr } = await daemon.stop("SIGTERM");
    await ivbs.close();
    await Deno.remove(dir, { recursive: true });
    assert.equal(code, 0, stderr);
    assert.match(stderr, /configured mount failed device=\/dev\/nbd1 image=no-such-image/);
    assert.match(stderr, /shutting down reason=SIGTERM/);
    assert.match(stderr, /stopped; every device detached/);
    assert.ok(
      !stderr.includes(USER.password) && !stdout.includes(USER.password),
      "no password in output",
    );
    assert.ok(!stderr.includes(TOKEN), "no token in output");
  }
  if (kernel) assert.deepEqual(await attachedNbdDevices(), [], "no nbd device left attached");
});

Deno.test("the one-shot shutdown stops serve with exit code 0, then check exits 3", async () => {
  const ivbs = await startIvbs([{ name: "disk", size: MIB }]);
  const { dir, path } = await writeConfig({
    http: { listen: "127.0.0.1:0" },
    ivbs: { proxies: ivbs.addresses() },
  });
  const daemon = await DaemonProcess.start(path);
  try {
    const shutdown = await ivbsnetd(["shutdown", "--server", daemon.url]);
    assert.equal(shutdown.code, 0, shutdown.stderr);
    const { code, stderr } = await daemon.wait();
    assert.equal(code, 0, stderr);
    assert.match(stderr, /shutting down reason="POST \/api\/shutdown"/);
    const check = await ivbsnetd(["check", "--server", daemon.url]);
    assert.equal(check.code, 3);
    assert.match(check.stderr, /is not reachable: connection refused/);
  } finally {
    await daemon.stop();
    await ivbs.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve exits 2 with one line for a broken config file", async () => {
  const { dir, path } = await writeConfig({ nbd: { blockSize: 100 } });
  try {
    const run = await ivbsnetd(["serve", "--config", path]);
    assert.equal(run.code, 2);
    assert.equal(run.stderr.trim().split("\n").length, 1, run.stderr);
    assert.match(
      run.stderr,
      /^ivbsnetd serve: config .*ivbsnetd\.json: nbd\.blockSize: blockSize must be 512/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
