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
} from "../bench/rigs/daemon_harness.ts";
import { hasTool, runTool } from "./support/tools.ts";
import { eventually } from "./support/wait.ts";

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
      // --json: the error is JSON on stdout too.
      const refused = JSON.parse(mount.stdout);
      assert.match(refused.error, /nbd kernel module is not loaded/);
      assert.equal(refused.code, "NO_MODULE");
    }

    const list = await ivbsnetd(["list", ...server, "--json"]);
    assert.equal(list.code, 0, list.stderr);
    // Configured mounts that are not up are listed, failing (and retried).
    const listed = JSON.parse(list.stdout) as { image: string; state: string }[];
    assert.deepEqual(
      listed.map((m) => `${m.image}:${m.state}`).sort(),
      kernel
        ? ["disk:mounted", "disk:mounted", "no-such-image:failing"]
        : ["disk:failing", "no-such-image:failing"],
    );

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
    assert.match(
      stderr,
      /WARN +\[reconcile\] mount failing; retrying with backoff device=\/dev\/nbd1 image=no-such-image/,
    );
    if (!kernel) {
      // The refused API mount is a warn line (and event) naming it.
      assert.match(
        stderr,
        /WARN +\[daemon\] mount refused device=auto image=disk .*code=NO_MODULE/,
      );
    }
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

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("serve exports an IVBS image to nbdinfo and qemu-io, takes exports from the one-shot client and removes its socket on SIGTERM", async () => {
  const tools = { nbdinfo: await hasTool("nbdinfo"), qemuIo: await hasTool("qemu-io") };
  for (const [tool, present] of Object.entries(tools)) {
    if (!present) {
      console.warn(`daemon_process_test: ${tool} is not installed; its steps are skipped`);
    }
  }
  const ivbs = await startIvbs([{ name: "disk", size: 64 * MIB }, {
    name: "small",
    size: 8 * MIB,
  }]);
  const base = await Deno.makeTempDir({ prefix: "ivbsnetd-export-test-" });
  const stateDir = `${base}/state`;
  const socket = `${stateDir}/nbd.sock`;
  const uri = (name: string) => `nbd+unix:///${name}?socket=${socket}`;
  const { dir, path } = await writeConfig({
    http: { listen: "127.0.0.1:0", token: TOKEN },
    ivbs: { proxies: ivbs.addresses(), connectTimeoutMs: 2000 },
    users: [USER],
    stateDir,
    exports: {
      items: [
        { name: "vm1", image: "disk", user: USER.username },
        { name: "broken", image: "no-such-image", user: USER.username },
      ],
    },
  });
  const daemon = await DaemonProcess.start(path);
  let stopped = false;
  try {
    const server = ["--server", daemon.url];
    const auth = [...server, "--token", TOKEN];
    // Configured exports are added right after the HTTP server starts; wait for them to settle.
    let names: string[] = [];
    await eventually("the configured exports settled", async () => {
      const list = await ivbsnetd(["export-list", ...server, "--json"]);
      assert.equal(list.code, 0, list.stderr);
      const exports = JSON.parse(list.stdout) as { name: string; state: string }[];
      names = exports.filter((e) => e.state === "ready").map((e) => e.name);
      return names.length > 0 && exports.every((e) => ["ready", "failing"].includes(e.state));
    });
    assert.deepEqual(names, ["vm1"], "the export of a missing image failed alone");
    assert.equal((await Deno.stat(stateDir)).mode! & 0o777, 0o700, "state dir is 0700");
    assert.equal((await Deno.stat(socket)).mode! & 0o777, 0o600, "socket is 0600");

    const added = await ivbsnetd(
      ["export-add", ...auth, "--password-stdin", "vm2", "small", USER.username],
      USER.password + "\n",
    );
    assert.equal(added.code, 0, added.stderr);
    assert.equal(added.stdout.trim(), `exported small as vm2 (8.0 MiB, read-write): ${uri("vm2")}`);

    if (tools.nbdinfo) {
      const size = await runTool("nbdinfo", ["--size", uri("vm1")]);
      assert.equal(size.code, 0, size.stderr);
      assert.equal(size.stdout.trim(), String(64 * MIB));
      const listed = await runTool("nbdinfo", ["--list", `nbd+unix:///?socket=${socket}`]);
      assert.equal(listed.code, 0, listed.stderr);
      assert.match(listed.stdout, /export="vm1"/);
      assert.match(listed.stdout, /export="vm2"/);
      const unknown = await runTool("nbdinfo", ["--size", uri("nope")]);
      assert.notEqual(unknown.code, 0, "an unknown export name is refused");
      assert.match(unknown.stderr, /nope|unknown|not found/i);
    }
    if (tools.qemuIo) {
      const write = await runTool("qemu-io", [
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 1M 2M",
        "-c",
        "aio_write -P 0x3c 8M 512k",
        "-c",
        "aio_write -P 0x3d 9M 512k",
        "-c",
        "aio_flush",
        uri("vm1"),
      ]);
      assert.equal(write.code, 0, write.stderr);
      assert.match(write.stdout, /wrote 2097152\/2097152 bytes at offset 1048576/);
      // A second client gets its own IVBS session: the data it sees comes back from IVBS.
      const read = await runTool("qemu-io", [
        "-f",
        "raw",
        "-c",
        "read -P 0x5a 1M 2M",
        "-c",
        "read -P 0x3c 8M 512k",
        "-c",
        "read -P 0x3d 9M 512k",
        "-c",
        "read -P 0 0 1M",
        uri("vm1"),
      ]);
      assert.equal(read.code, 0, read.stderr);
      assert.doesNotMatch(read.stdout, /Pattern verification failed/);
      assert.equal(read.stdout.match(/^read \d+\/\d+ bytes/gm)?.length, 4, read.stdout);
    }

    const metrics = await (await fetch(`${daemon.url}/metrics`)).text();
    assert.match(metrics, /^ivbsnetd_export_clients\{export="vm1",image="disk"\} 0$/m);
    if (tools.qemuIo) {
      assert.match(
        metrics,
        /^ivbsnetd_export_io_bytes_total\{export="vm1",image="disk",direction="write"\} 3145728$/m,
      );
    }

    const removed = await ivbsnetd(["export-remove", ...auth, "vm2"]);
    assert.equal(removed.code, 0, removed.stderr);
    const again = await ivbsnetd(["export-remove", ...auth, "vm2"]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /no export named "vm2" \(exports: vm1\) \[UNKNOWN_EXPORT\]/);
    if (tools.nbdinfo) {
      const gone = await runTool("nbdinfo", ["--size", uri("vm2")]);
      assert.notEqual(gone.code, 0, "a removed export is refused");
      const still = await runTool("nbdinfo", ["--size", uri("vm1")]);
      assert.equal(still.code, 0, "the other export keeps serving");
    }

    const result = await daemon.stop("SIGTERM");
    stopped = true;
    assert.equal(result.code, 0, result.stderr);
    assert.match(
      result.stderr,
      /export failing; retrying with backoff export=broken image=no-such-image .*code=IMAGE_NOT_FOUND/,
    );
    assert.match(result.stderr, /stopped; every device detached, every export closed/);
    assert.ok(!(await exists(socket)), "the socket is removed at shutdown");
    assert.ok(
      !result.stderr.includes(USER.password) && !result.stdout.includes(USER.password),
      "no password in output",
    );
    assert.ok(!result.stderr.includes(TOKEN), "no token in output");
  } finally {
    if (!stopped) await daemon.stop();
    await ivbs.close();
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(base, { recursive: true });
  }
});
