/**
 * Restarting the daemon under a mounted, busy filesystem costs a pause and
 * never an error (netlink attachment, in the NBD VM): ext4 on a device the
 * kernel picked takes a continuous fio write+verify job (crc32c, iodepth 16)
 * while the daemon is killed with SIGKILL, or stopped with SIGTERM, and started
 * again; fio finishes with verification passing, no I/O error, and no nbd
 * error in the kernel log (bench/rigs/kernel_log.ts says which lines count).
 * Also: a device whose daemon never returns fails its I/O after D and can be
 * detached with nbd-client -d; a state file naming devices that are gone is
 * cleaned up with one log line per mount.
 *
 * FIO_MB (default 128, to keep the kernel suite near 15 min under TCG) sets the fio
 * file size; bench/restart_stall.ts runs bigger jobs.
 */
import assert from "node:assert/strict";
import {
  attachedNbdDevices,
  DaemonProcess,
  kernelSkipReason,
  startIvbs,
  USER,
  writeConfig,
} from "../../bench/rigs/daemon_harness.ts";
import {
  lifecycle,
  mountedOn,
  mounts,
  type RestartKind,
  restartUnderFio,
  until,
} from "../../bench/rigs/restart_rig.ts";
import { record, sh } from "./helpers.ts";

const MIB = 1024 * 1024;
const skip = kernelSkipReason();
if (skip) console.warn(`restart_test: skipped: ${skip}`);
const ignore = skip !== null;
const FIO_MB = Number(Deno.env.get("FIO_MB") ?? "128");

/** The run's figures for the report, and the assertions every restart kind must pass. */
async function restartPasses(kind: RestartKind, stopProxyDuringRestart = false): Promise<void> {
  const outcome = await restartUnderFio(kind, {
    fioMb: FIO_MB,
    requeueAfterS: 2,
    deadConnTimeoutS: 120,
    stopProxyDuringRestart,
  });
  if (outcome.stoppedProxy !== null) {
    const attached = [
      ...outcome.newLog.matchAll(/IVBS image attached (?:\S+=\S+ )*?image=disk proxy=(\S+)/g),
    ];
    assert.ok(attached.length > 0, "the new daemon logged in");
    assert.ok(
      attached.every(([, proxy]) => proxy !== outcome.stoppedProxy),
      `the new daemon logged in past the stopped proxy ${outcome.stoppedProxy}`,
    );
  }
  console.log([...lifecycle(outcome.oldLog), "--", ...lifecycle(outcome.newLog)].join("\n"));
  assert.equal(outcome.fioCode, 0, `fio failed: ${outcome.fioStderr}`);
  assert.equal(outcome.fioError, 0, "fio saw no I/O error");
  assert.ok(outcome.verifiedBytes >= FIO_MB * MIB, "the verify phase read everything back");
  assert.ok(outcome.sameDevice, "the new daemon serves the same device, same backend id");
  assert.deepEqual(outcome.kernelErrors, [], "no nbd or I/O error in the kernel log");
  assert.match(outcome.newLog, /taken over device=\/dev\/nbd\d+ image=disk/);
  if (kind !== "kill -9") {
    assert.match(outcome.oldLog, /left attached for the next daemon device=\/dev\/nbd\d+/);
  }
  assert.deepEqual(await attachedNbdDevices(), [], "SIGINT detached the device");
  await record(
    `restart (${kind}${
      stopProxyDuringRestart ? ", proxy stopped meanwhile" : ""
    }) under fio ${FIO_MB} MiB randwrite 64k qd16 + crc32c verify: ` +
      `0 errors, longest I/O stall ${outcome.stallMs.toFixed(0)} ms; device back ` +
      `${outcome.backMs.toFixed(0)} ms after the restart began (old daemon gone at ` +
      `${outcome.oldGoneMs.toFixed(0)} ms, new one listening at ` +
      `${outcome.listeningMs.toFixed(0)} ms)`,
  );
}

Deno.test({
  name: "kill -9 of the daemon under fio on ext4: a new daemon takes the device over, 0 errors",
  ignore,
  fn: () => restartPasses("kill -9"),
});

Deno.test({
  name:
    "SIGTERM (planned restart) under fio on ext4: the device waits for the next daemon, 0 errors",
  ignore,
  fn: () => restartPasses("SIGTERM"),
});

Deno.test({
  name:
    "SIGTERM while the IVBS proxy in use stops: the old daemon fails over as it drains, the new one logs in elsewhere, 0 errors",
  ignore,
  fn: () => restartPasses("SIGTERM", true),
});

Deno.test({
  name:
    "serve --replace (upgrade) under fio on ext4: the new daemon stops the old one once ready, 0 errors",
  ignore,
  fn: () => restartPasses("serve --replace"),
});

Deno.test({
  name: "a device whose daemon never returns fails its I/O after D and nbd-client -d detaches it",
  ignore,
  async fn() {
    const ivbs = await startIvbs([{ name: "disk", size: 64 * MIB }]);
    const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-state-" });
    const { dir, path } = await writeConfig({
      http: { listen: "127.0.0.1:0" },
      ivbs: { proxies: ivbs.addresses() },
      nbd: { attach: "netlink", deadConnTimeoutS: 3, requeueAfterS: 1 },
      users: [USER],
      mounts: [{ device: "auto", image: "disk", user: USER.username }],
      stateDir,
    });
    const daemon = await DaemonProcess.start(path);
    try {
      const { device } = await mountedOn(daemon.url);
      await daemon.stop("SIGKILL");
      const started = performance.now();
      const read = await sh(
        "dd",
        `if=${device}`,
        "of=/dev/null",
        "bs=4k",
        "count=1",
        "iflag=direct",
      );
      const waited = performance.now() - started;
      assert.notEqual(read.code, 0, "the read fails once nobody serves the device");
      assert.match(read.stderr, /Input\/output error/);
      assert.ok(waited >= 2_500, `it waited for a daemon first (${waited.toFixed(0)} ms)`);
      await record(
        `orphaned device: a read failed with EIO after ${waited.toFixed(0)} ms (D = 3 s)`,
      );
      assert.deepEqual(await attachedNbdDevices(), [device], "still attached until detached");
      const detach = await sh("nbd-client", "-d", device);
      assert.equal(detach.code, 0, detach.stderr);
      await until(
        "the device is released",
        async () => (await attachedNbdDevices()).includes(device) ? null : true,
        30_000,
      );
    } finally {
      await ivbs.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(stateDir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a state file whose devices are gone is cleaned up with one log line per mount",
  ignore,
  async fn() {
    const ivbs = await startIvbs([{ name: "disk", size: 16 * MIB }]);
    const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-state-" });
    const { dir, path } = await writeConfig({
      http: { listen: "127.0.0.1:0" },
      ivbs: { proxies: ivbs.addresses() },
      nbd: { attach: "netlink" },
      users: [USER],
      stateDir,
    });
    const options = { blockSize: 4096, timeoutS: 0, deadConnTimeoutS: 120 };
    const gone = [5, 6].map((index) => ({
      device: `/dev/nbd${index}`,
      index,
      backendId: `ivbsnetd:00000000000000${index}${index}`,
      image: "disk",
      username: USER.username,
      readOnly: false,
      sizeBytes: 16 * MIB,
      options,
    }));
    await Deno.writeTextFile(
      `${stateDir}/mounts.json`,
      JSON.stringify({ version: 1, pid: 999_999, writtenAt: "2026-01-01T00:00:00Z", mounts: gone }),
      { mode: 0o600 },
    );
    const daemon = await DaemonProcess.start(path);
    let stderr = "";
    try {
      await until("the state file is rewritten", async () => {
        try {
          await Deno.stat(`${stateDir}/mounts.json`);
          return null;
        } catch {
          return true;
        }
      }, 30_000);
      assert.deepEqual(await mounts(daemon.url), []);
    } finally {
      stderr = (await daemon.stop("SIGINT")).stderr;
      await ivbs.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(stateDir, { recursive: true });
    }
    const lines = stderr.split("\n").filter((l) => /device of the previous daemon is gone/.test(l));
    assert.equal(lines.length, 2, stderr);
    assert.match(lines.join("\n"), /device=\/dev\/nbd5/);
    assert.match(lines.join("\n"), /device=\/dev\/nbd6/);
  },
});
