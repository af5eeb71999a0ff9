/**
 * The CSI plugin end to end in the NBD VM: the real daemon (`ivbsnetd serve`,
 * netlink devices) and the real CSI process (`ivbsnetd csi`) as child
 * processes, an IVBS test server in this process, real mkfs and mounts, and a
 * grpc-js client playing kubelet. The daemon's config names no user: every
 * credential arrives as NodeStageVolume secrets, as in Kubernetes.
 *
 * Run: deno check tests/kernel/ && /work/shared/vm/nbd-vm --mem 3G --timeout 1800 --
 *      deno test -A --no-check tests/kernel/csi_test.ts
 */
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import {
  attachedNbdDevices,
  DaemonProcess,
  kernelSkipReason,
  MAIN,
  startIvbs,
  USER,
  writeConfig,
} from "../../bench/rigs/daemon_harness.ts";
import { errorLines, logMark } from "../../bench/rigs/kernel_log.ts";
import { mounts, startFio, until } from "../../bench/rigs/restart_rig.ts";
import { loadCsi } from "../../src/csi/server.ts";
import { Code } from "../../src/csi/status.ts";
import { record, run, sh } from "./helpers.ts";
import { pathExists, rpc, rpcError } from "../support/csi_fixture.ts";

const MIB = 1024 * 1024;
const FIO_MB = 128;
const skip = kernelSkipReason();
if (skip) console.warn(`csi_test: skipped: ${skip}`);

const SECRETS = { username: USER.username, password: USER.password };
const EXT4 = {
  mount: { fsType: "ext4", mountFlags: [] },
  accessMode: { mode: "SINGLE_NODE_WRITER" },
};
const BLOCK = { block: {}, accessMode: { mode: "SINGLE_NODE_WRITER" } };

/** A TCP port free now (bound, then released), so a restarted daemon keeps its URL. */
function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** `ivbsnetd csi` as a child process; its stderr is kept for the test's checks. */
class CsiProcess {
  private constructor(readonly child: Deno.ChildProcess, readonly stderr: Promise<string>) {}

  static async start(socket: string, server: string): Promise<CsiProcess> {
    try {
      await Deno.remove(socket);
    } catch {
      // Not there yet.
    }
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        MAIN,
        "csi",
        "--endpoint",
        `unix://${socket}`,
        "--node-id",
        "vm",
        "--server",
        server,
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const csi = new CsiProcess(child, new Response(child.stderr).text());
    await until("the CSI socket appears", async () => (await Deno.lstat(socket)).isSocket || null);
    return csi;
  }

  async stop(signal: Deno.Signal): Promise<string> {
    try {
      this.child.kill(signal);
    } catch {
      // Already gone.
    }
    await this.child.status;
    return await this.stderr;
  }
}

/** The mount points under `dir` in this process's mount table. */
async function mountsUnder(dir: string): Promise<string[]> {
  const text = await Deno.readTextFile("/proc/self/mountinfo");
  return text.split("\n").map((line) => line.split(" ")[4]).filter((p) => p?.startsWith(dir));
}

/** The daemon, the CSI process and a gRPC Node client over one IVBS test server. */
interface Stack {
  dir: string;
  daemon: DaemonProcess;
  csi: CsiProcess;
  node: grpc.Client;
  /** CSI processes' logs so far (the one running is added by `close`). */
  csiLogs: string[];
  stage(volumeId: string, staging: string, capability?: object): Promise<unknown>;
  publish(volumeId: string, staging: string, target: string, capability?: object): Promise<unknown>;
  unpublish(volumeId: string, target: string): Promise<unknown>;
  unstage(volumeId: string, staging: string): Promise<unknown>;
  /** A new staging directory (kubelet makes it). */
  stagingDir(name: string): Promise<string>;
  restartDaemon(signal: Deno.Signal): Promise<string>;
  restartCsi(): Promise<void>;
  /** Stops everything; resolves with every log of the CSI processes and the daemon. */
  close(): Promise<string[]>;
}

async function startStack(images: { name: string; size: number }[]): Promise<Stack> {
  const ivbs = await startIvbs(images);
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-csi-state-" });
  const { dir, path } = await writeConfig({
    http: { listen: `127.0.0.1:${freePort()}` },
    ivbs: { proxies: ivbs.addresses() },
    nbd: { attach: "netlink", deadConnTimeoutS: 120, requeueAfterS: 2 },
    stateDir,
  });
  const socket = `${dir}/csi.sock`;
  const endpoint = `unix://${socket}`;
  const proto = loadCsi();
  const daemon = await DaemonProcess.start(path);
  const stack: Stack = {
    dir,
    daemon,
    csi: await CsiProcess.start(socket, daemon.url),
    node: new proto.Node(endpoint, grpc.credentials.createInsecure()),
    csiLogs: [],
    stage: (volumeId, staging, capability = EXT4) =>
      rpc(stack.node, "NodeStageVolume", {
        volumeId,
        stagingTargetPath: staging,
        volumeCapability: capability,
        secrets: SECRETS,
      }),
    publish: (volumeId, staging, target, capability = EXT4) =>
      rpc(stack.node, "NodePublishVolume", {
        volumeId,
        stagingTargetPath: staging,
        targetPath: target,
        volumeCapability: capability,
      }),
    unpublish: (volumeId, target) =>
      rpc(stack.node, "NodeUnpublishVolume", { volumeId, targetPath: target }),
    unstage: (volumeId, staging) =>
      rpc(stack.node, "NodeUnstageVolume", { volumeId, stagingTargetPath: staging }),
    stagingDir: async (name) => {
      await Deno.mkdir(`${dir}/${name}`);
      return `${dir}/${name}`;
    },
    restartDaemon: async (signal) => {
      const { stderr } = await stack.daemon.stop(signal);
      stack.daemon = await DaemonProcess.start(path);
      return stderr;
    },
    restartCsi: async () => {
      stack.csiLogs.push(await stack.csi.stop("SIGKILL"));
      stack.node.close();
      stack.csi = await CsiProcess.start(socket, stack.daemon.url);
      stack.node = new proto.Node(endpoint, grpc.credentials.createInsecure());
    },
    close: async () => {
      stack.node.close();
      stack.csiLogs.push(await stack.csi.stop("SIGTERM"));
      // After a failure: lazy unmounts (a busy one goes once its users do), then the daemon
      // detaches what it serves; a device it could not take over is disconnected directly.
      for (const mountPoint of (await mountsUnder(dir)).reverse()) {
        await sh("umount", "-l", mountPoint);
      }
      const last = await stack.daemon.stop("SIGINT");
      for (const device of await attachedNbdDevices()) await sh("nbd-client", "-d", device);
      await ivbs.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(stateDir, { recursive: true });
      return [...stack.csiLogs, last.stderr];
    },
  };
  return stack;
}

function assertNoPassword(logs: string[]): void {
  for (const log of logs) assert.ok(!log.includes(USER.password), "the IVBS password is in no log");
}

Deno.test({
  name:
    "CSI in the VM: ext4 staged twice without reformat, stats, CSI restart, block, wrong password",
  ignore: skip !== null,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async (t) => {
    const stack = await startStack([
      { name: "vol-ext4", size: 256 * MIB },
      { name: "vol-block", size: 64 * MIB },
    ]);
    const { dir } = stack;
    let logs: string[] = [];
    try {
      await t.step(
        "ext4: stage, publish, write; unstage; stage again: the file is still there",
        async () => {
          const staging = await stack.stagingDir("stage-ext4");
          const target = `${dir}/pod-a/volume`;
          await stack.stage("vol-ext4", staging);
          await stack.publish("vol-ext4", staging, target);
          await Deno.writeTextFile(`${target}/hello.txt`, "written through CSI\n");
          await run("sync");
          await stack.unpublish("vol-ext4", target);
          assert.equal(await pathExists(target), false, "unpublish removed the target");
          await stack.unstage("vol-ext4", staging);
          assert.deepEqual(await attachedNbdDevices(), [], "unstage detached the device");
          assert.deepEqual(await mountsUnder(dir), []);

          await stack.stage("vol-ext4", staging);
          await stack.publish("vol-ext4", staging, target);
          assert.equal(await Deno.readTextFile(`${target}/hello.txt`), "written through CSI\n");
          await record(
            "csi: ext4 volume staged twice, the file written before survived (no reformat)",
          );
        },
      );

      await t.step(
        "volume stats: bytes and inodes of the published filesystem, condition normal",
        async () => {
          const stats = await rpc<{
            usage: { unit: string; total: number; used: number }[];
            volumeCondition: { abnormal: boolean };
          }>(stack.node, "NodeGetVolumeStats", {
            volumeId: "vol-ext4",
            volumePath: `${dir}/pod-a/volume`,
          });
          const bytes = stats.usage.find((u) => u.unit === "BYTES")!;
          const inodes = stats.usage.find((u) => u.unit === "INODES")!;
          assert.ok(
            bytes.total > 200 * MIB && bytes.total <= 256 * MIB,
            `bytes.total ${bytes.total}`,
          );
          assert.ok(inodes.total > 0 && inodes.used > 0);
          assert.equal(stats.volumeCondition.abnormal, false);
          await record(
            `csi: stats of a 256 MiB ext4 volume: ${bytes.total} bytes, ${inodes.total} inodes`,
          );
        },
      );

      await t.step(
        "a CSI process restart (kill -9): unpublish and unstage still work",
        async () => {
          await stack.restartCsi();
          const target = `${dir}/pod-a/volume`;
          assert.equal(await Deno.readTextFile(`${target}/hello.txt`), "written through CSI\n");
          await stack.unpublish("vol-ext4", target);
          await stack.unstage("vol-ext4", `${dir}/stage-ext4`);
          assert.deepEqual(await attachedNbdDevices(), []);
          assert.deepEqual(await mountsUnder(dir), []);
        },
      );

      await t.step(
        "a block volume: the device node published on a file, data round-trips",
        async () => {
          const staging = await stack.stagingDir("stage-block");
          const target = `${dir}/pod-b/dev`;
          await stack.stage("vol-block", staging, BLOCK);
          await stack.publish("vol-block", staging, target, BLOCK);
          assert.equal((await Deno.stat(target)).isBlockDevice, true);
          await run(
            "dd",
            "if=/dev/urandom",
            `of=${dir}/pattern`,
            "bs=1M",
            "count=4",
            "status=none",
          );
          await run(
            "dd",
            `if=${dir}/pattern`,
            `of=${target}`,
            "bs=1M",
            "oflag=direct",
            "status=none",
          );
          await run("cmp", "-n", `${4 * MIB}`, `${dir}/pattern`, target);
          const stats = await rpc<{ usage: { unit: string; total: number }[] }>(
            stack.node,
            "NodeGetVolumeStats",
            { volumeId: "vol-block", volumePath: target },
          );
          assert.deepEqual(stats.usage.map((u) => [u.unit, u.total]), [["BYTES", 64 * MIB]]);
          await stack.unpublish("vol-block", target);
          await stack.unstage("vol-block", staging);
          assert.deepEqual(await attachedNbdDevices(), []);
        },
      );

      await t.step("a wrong password: PERMISSION_DENIED, nothing attached or mounted", async () => {
        const error = await rpcError(stack.node, "NodeStageVolume", {
          volumeId: "vol-ext4",
          stagingTargetPath: await stack.stagingDir("stage-wrong"),
          volumeCapability: EXT4,
          secrets: { username: USER.username, password: "not-the-password" },
        });
        assert.equal(error.code, Code.PERMISSION_DENIED);
        assert.deepEqual(await attachedNbdDevices(), []);
        assert.deepEqual(await mountsUnder(dir), []);
        assert.deepEqual(await mounts(stack.daemon.url), []);
      });
    } finally {
      logs = await stack.close();
    }
    assertNoPassword(logs);
    const formats = logs.join("\n").match(/formatting blank device/g) ?? [];
    assert.equal(formats.length, 1, "vol-ext4 formatted once, never again; block never");
    assert.deepEqual(await attachedNbdDevices(), [], "no nbd device left attached");
  },
});

Deno.test({
  name:
    `CSI in the VM: kill -9 of the daemon under a ${FIO_MB} MiB fio write+verify on a published volume, 0 errors`,
  // The next daemon logs in again with the credential store (root-only, in /run): the mount
  // was made through the API, so its user is in no config.
  ignore: skip !== null,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const stack = await startStack([{ name: "vol-fio", size: FIO_MB * MIB + 256 * MIB }]);
    const { dir } = stack;
    let logs: string[] = [];
    try {
      const staging = await stack.stagingDir("stage-fio");
      const target = `${dir}/pod-c/volume`;
      await stack.stage("vol-fio", staging);
      await stack.publish("vol-fio", staging, target);
      const mark = await logMark();
      const fio = startFio(target, dir, FIO_MB);
      await until("fio writes", async () => {
        const [m] = await mounts(stack.daemon.url);
        return m && m.bytesWritten > 32 * MIB ? m : null;
      });
      const oldLog = await stack.restartDaemon("SIGKILL");
      const again = await until("the new daemon serves the volume", async () => {
        const [m] = await mounts(stack.daemon.url);
        return m && (m.state === "mounted" || m.state === "ready") ? m : null;
      });
      const result = await fio;
      const job = JSON.parse(await Deno.readTextFile(`${dir}/fio.json`)).jobs[0];
      const kernelErrors = errorLines(await mark.since());
      assert.equal(result.code, 0, new TextDecoder().decode(result.stderr));
      assert.equal(job.error, 0, "fio saw no I/O error");
      assert.ok(job.read.io_bytes >= FIO_MB * MIB, "the verify phase read everything back");
      assert.deepEqual(kernelErrors, [], "no I/O error in the kernel log");
      assert.equal(again.image, "vol-fio");
      assertNoPassword([oldLog]);
      const stats = await rpc<{ volumeCondition: { abnormal: boolean } }>(
        stack.node,
        "NodeGetVolumeStats",
        { volumeId: "vol-fio", volumePath: target },
      );
      assert.equal(stats.volumeCondition.abnormal, false, "the new daemon serves the device");
      await stack.unpublish("vol-fio", target);
      await stack.unstage("vol-fio", staging);
      await record(
        `csi: daemon kill -9 under fio ${FIO_MB} MiB randwrite + crc32c verify: 0 errors`,
      );
    } finally {
      logs = await stack.close();
    }
    assertNoPassword(logs);
    assert.deepEqual(await attachedNbdDevices(), [], "no nbd device left attached");
  },
});
