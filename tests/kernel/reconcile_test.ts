/**
 * A configured kernel mount left alone at boot: `serve` starts while no IVBS
 * proxy is up (the mount is desired, failing, retried), IVBS starts seconds
 * later on the configured port, and /dev/nbdX is attached and readable within
 * the reconcile backoff's maximum, with one "failing" and one "ready" event.
 * Then the device is detached behind the daemon's back (`nbd-client -d`) and
 * the daemon attaches it again. Needs root and /dev/nbd0 (run inside
 * /work/shared/vm/nbd-vm); skips with the reason otherwise.
 */
import assert from "node:assert/strict";
import {
  attachedNbdDevices,
  DaemonProcess,
  kernelSkipReason,
  USER,
  writeConfig,
} from "../../bench/rigs/daemon_harness.ts";
import { startIvbsServer } from "../../src/ivbs/server/mod.ts";
import { hasTool, runTool } from "../support/tools.ts";
import { eventually } from "../support/wait.ts";
import { quiet, readBlock } from "./helpers.ts";
import { type EventView, freePort, getJson } from "../support/daemon_api.ts";

const MIB = 1024 * 1024;
const BACKOFF = { initialMs: 500, maxMs: 4_000 };
/** The attempt itself under emulation (connect, login, netlink attach). */
const ATTEMPT_SLACK_MS = 15_000;
const skip = kernelSkipReason();
if (skip) console.warn(`reconcile_test: skipped: ${skip}`);

interface MountView {
  device: string;
  image: string;
  state: string;
  reason?: string;
  attempts?: number;
}

Deno.test({
  name:
    "a configured kernel mount waits for IVBS that starts later and is attached within the backoff's maximum",
  ignore: skip !== null,
  async fn() {
    assert.deepEqual(await attachedNbdDevices(), [], "no nbd device attached before the test");
    const port = freePort();
    const { dir, path } = await writeConfig({
      http: { listen: "127.0.0.1:0" },
      ivbs: { proxies: [{ host: "127.0.0.1", port }], connectTimeoutMs: 2_000 },
      nbd: { devices: 8 },
      users: [USER],
      stateDir: "/run/ivbsnetd-reconcile-test",
      reconcile: { backoff: BACKOFF },
      mounts: [{ device: "auto", image: "data", user: USER.username }],
    });
    const daemon = await DaemonProcess.start(path);
    let ivbs: Awaited<ReturnType<typeof startIvbsServer>> | null = null;
    let stopped = false;
    const mountsNow = async () =>
      (await getJson<{ mounts: MountView[] }>(`${daemon.url}/api/mounts`)).mounts;
    const eventsNow = async () =>
      (await getJson<{ events: EventView[] }>(`${daemon.url}/api/events`)).events;
    try {
      const failing = await eventually("mount failing", async () => {
        const [mount] = await mountsNow();
        return mount?.state === "failing" ? mount : null;
      }, 120_000);
      assert.equal(failing.device, "auto");
      assert.match(failing.reason!, /127\.0\.0\.1/);

      await new Promise((resolve) => setTimeout(resolve, 3_000));
      ivbs = await startIvbsServer({
        users: [USER],
        images: [{ name: "data", size: 16 * MIB }],
        ports: [port],
        listProxiesIntervalMs: 0,
        log: quiet,
      });
      const upAt = Date.now();
      const mounted = await eventually("mounted", async () => {
        const [mount] = await mountsNow();
        return mount?.state === "mounted" ? mount : null;
      }, 120_000);
      assert.match(mounted.device, /^\/dev\/nbd\d+$/);
      assert.ok((await attachedNbdDevices()).includes(mounted.device), "attached in the kernel");
      assert.equal((await readBlock(mounted.device, 0, MIB)).length, MIB, "readable");

      const events = (await eventsNow()).filter((e) => e.component === "reconcile");
      assert.deepEqual(events.map((e) => [e.level, e.message]), [
        ["info", "mount attaching"],
        ["warn", "mount failing; retrying with backoff"],
        ["info", "mount ready"],
      ], "failing and ready once each, however many retries");
      assert.equal(events[1].fields.code, "NO_PROXY");
      assert.equal(events[2].device, mounted.device);
      const tookMs = Date.parse(events[2].time) - upAt;
      console.log(
        `reconcile_test: ${mounted.device} attached ${tookMs} ms after IVBS came up ` +
          `(backoff max ${BACKOFF.maxMs} ms, ${events[2].fields.attempts} attempts)`,
      );
      assert.ok(tookMs <= BACKOFF.maxMs + ATTEMPT_SLACK_MS, `attached ${tookMs} ms after IVBS`);

      // Detached behind the daemon's back: it is lost, and attached again.
      if (await hasTool("nbd-client")) {
        const detach = await runTool("nbd-client", ["-d", mounted.device]);
        assert.equal(detach.code, 0, detach.stderr);
        const again = await eventually("mounted again", async () => {
          const messages = (await eventsNow()).map((e) => e.message);
          const [mount] = await mountsNow();
          return messages.includes("mount lost; reconciling") && mount?.state === "mounted"
            ? mount
            : null;
        }, 120_000);
        assert.equal((await readBlock(again.device, 0, MIB)).length, MIB, "readable again");
      } else {
        console.warn("reconcile_test: nbd-client missing; the lost-device step is skipped");
      }

      const result = await daemon.stop("SIGINT");
      stopped = true;
      assert.equal(result.code, 0, result.stderr);
      assert.ok(!result.stderr.includes(USER.password), "no password in the log");
    } finally {
      if (!stopped) await daemon.stop("SIGINT");
      await ivbs?.close();
      await Deno.remove(dir, { recursive: true });
    }
    assert.deepEqual(await attachedNbdDevices(), [], "nothing left attached");
  },
});
