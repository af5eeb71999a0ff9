/**
 * Issue 4 in the kernel: ext4 on /dev/nbdN through `ivbsnetd attach` takes a
 * sustained 512 MiB write while the IVBS proxy serving it is stopped and
 * restarted, its connections dropped, and the server answers USE_ANOTHER_PROXY
 * and EXPIRED. The copy completes, its checksum holds after a remount with
 * cold caches, and the kernel logs no error for the device. Runs inside the
 * NBD VM (`deno task test:kernel`); skips elsewhere.
 */
import assert from "node:assert/strict";
import { findFreeDevice } from "../../src/nbd/devices.ts";
import { MiB, record, run, sh, sha256, skipReason, within } from "./helpers.ts";
import {
  applyFault,
  deviceErrors,
  devicePidPresent,
  FAILOVER_LINE,
  type Fault,
  FAULTS,
  type LineChild,
  markKernelLog,
  RETRY_LINE,
  type ServerProcess,
  sleep,
  startAttachProcess,
  startServerProcess,
} from "../../bench/rigs/failover_rig.ts";

const skip = skipReason();
if (skip) console.log(`SKIP kernel failover test: ${skip}`);

const COPY_MIB = 512;
/** Pause between faults: several land in one copy, each failover has time to finish. */
const FAULT_GAP_MS = 2_000;
/** How long a stopped proxy stays down. */
const DOWN_MS = 1_500;
/** Bounds that turn a hang into a failure (the VM emulates: generous). */
const COPY_LIMIT_MS = 240_000;
const DETACH_LIMIT_MS = 120_000;

/**
 * Faults the server in turn until `running()` turns false; returns what it did.
 * The first fault waits until writes reach the server, so it hits the copy.
 */
async function faultWhile(
  server: ServerProcess,
  running: () => boolean,
): Promise<Record<Fault | "servingStops", number>> {
  const done: Record<Fault | "servingStops", number> = {
    "stop": 0,
    "use-another-proxy": 0,
    "expired": 0,
    "drop": 0,
    "servingStops": 0,
  };
  const pause = async (ms: number) => {
    for (let waited = 0; waited < ms && running(); waited += 100) await sleep(100);
  };
  const writesAtStart = (await server.stats()).requests["WRITE"] ?? 0;
  while (running() && ((await server.stats()).requests["WRITE"] ?? 0) < writesAtStart + 64) {
    await sleep(100);
  }
  for (let i = 0; running(); i++) {
    const fault = FAULTS[i % FAULTS.length];
    const hit = await applyFault(server, fault, i, DOWN_MS);
    if (fault === "stop" && hit.wasServing) done.servingStops++;
    done[fault]++;
    await pause(FAULT_GAP_MS);
  }
  return done;
}

Deno.test({
  name: "ext4 on /dev/nbdN keeps a 512 MiB copy intact while its IVBS proxies fail over, " +
    "with no I/O error in dmesg",
  ignore: skip !== null,
  async fn() {
    const started = performance.now();
    const kernelLog = await markKernelLog();
    const tmp = await Deno.makeTempDir({ prefix: "failover-" });
    const mnt = `${tmp}/mnt`;
    await Deno.mkdir(mnt);
    const passwordFile = `${tmp}/password`;
    const usersFile = `${tmp}/users.json`;
    const password = "failover-test-password";
    await Deno.writeTextFile(passwordFile, `${password}\n`, { mode: 0o600 });
    await Deno.writeTextFile(usersFile, JSON.stringify([{ username: "alice", password }]), {
      mode: 0o600,
    });

    let server: ServerProcess | undefined;
    let attach: LineChild | undefined;
    let device = "";
    let mounted = false;
    let copy: Deno.ChildProcess | undefined;
    let copyDone: Promise<Deno.CommandOutput> | undefined;
    try {
      device = (await findFreeDevice()) ?? assert.fail("no free /dev/nbdN");
      server = await startServerProcess({
        proxies: 3,
        image: "disk",
        size: "1G",
        user: "alice",
        usersFile,
      });
      attach = await startAttachProcess({
        device,
        image: "disk",
        user: "alice",
        passwordFile,
        proxies: server.proxies,
      });
      await run("mkfs.ext4", "-q", "-F", device);
      await run("mount", device, mnt);
      mounted = true;

      await run(
        "dd",
        "if=/dev/urandom",
        `of=${tmp}/source`,
        "bs=1M",
        `count=${COPY_MIB}`,
        "status=none",
      );
      const sourceSum = await sha256(`${tmp}/source`);

      const copyStarted = performance.now();
      copy = new Deno.Command("dd", {
        args: [`if=${tmp}/source`, `of=${mnt}/copy`, "bs=1M", "conv=fsync", "status=none"],
        stdout: "null",
        stderr: "piped",
      }).spawn();
      let copying = true;
      copyDone = copy.output().then((out) => {
        copying = false;
        return out;
      });
      const faults = await faultWhile(server, () => copying);
      const copied = await within(COPY_LIMIT_MS, "the copy", copyDone);
      copy = copyDone = undefined;
      const copySeconds = (performance.now() - copyStarted) / 1000;
      assert.equal(copied.code, 0, `dd failed: ${new TextDecoder().decode(copied.stderr)}`);
      assert.ok(
        faults.servingStops >= 1,
        `the copy ended before the proxy serving it was stopped (faults: ${
          JSON.stringify(faults)
        }): copy more data`,
      );

      await run("sync");
      const copySum = await sha256(`${mnt}/copy`);
      await run("umount", mnt);
      mounted = false;
      await Deno.writeTextFile("/proc/sys/vm/drop_caches", "3\n");
      await run("mount", device, mnt);
      mounted = true;
      const remountSum = await sha256(`${mnt}/copy`);
      const size = (await Deno.stat(`${mnt}/copy`)).size;
      await run("umount", mnt);
      mounted = false;

      const logged = await kernelLog.since();
      // The mount logs a line naming the device: proof the filter sees this run's lines.
      assert.ok(
        logged.some((line) => line.includes(device.replace("/dev/", ""))),
        `dmesg shows no line about ${device} since the start:\n${logged.slice(-20).join("\n")}`,
      );
      const errors = deviceErrors(logged, device);
      const failovers = attach.count(FAILOVER_LINE);
      const stats = await server.stats();
      await record(
        `failover test on ${device}: ${size / MiB} MiB copied in ${copySeconds.toFixed(1)} s ` +
          `under faults ${JSON.stringify(faults)}; failovers logged ${failovers}, ` +
          `retries logged ${attach.count(RETRY_LINE)}, statuses injected ${stats.injected}, ` +
          `connections accepted ${stats.connectionsAccepted}; sha256 source ${sourceSum}, ` +
          `copy ${copySum}, after remount ${remountSum}; kernel errors ${errors.length}`,
      );
      assert.equal(size, COPY_MIB * MiB);
      assert.equal(copySum, sourceSum, "the copy differs from the source");
      assert.equal(remountSum, sourceSum, "the copy differs after remount with cold caches");
      assert.deepEqual(errors, [], `the kernel logged errors for ${device}`);
      assert.ok(
        failovers >= faults.servingStops,
        `${failovers} failovers logged for ${faults.servingStops} stops of the serving proxy:\n` +
          attach.tail(),
      );
      assert.ok(stats.injected > 0, "no injected status reached a request");

      const status = await within(DETACH_LIMIT_MS, "detach", attach.stop("SIGTERM"));
      assert.equal(status.code, 0, `attach exited ${status.code}:\n${attach.tail()}`);
      assert.equal(await devicePidPresent(device), false, `${device} still has a pid file`);
      await record(
        `failover test total ${((performance.now() - started) / 1000).toFixed(1)} s`,
      );
    } finally {
      if (copy) {
        try {
          copy.kill("SIGKILL");
        } catch {
          // Already gone.
        }
        await copyDone;
      }
      if (mounted) await sh("umount", "-l", mnt);
      await attach?.stop("SIGTERM", DETACH_LIMIT_MS);
      if (device && await devicePidPresent(device)) {
        await sh("nbd-client", "-d", device).catch(() => undefined);
      }
      await server?.stop();
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
