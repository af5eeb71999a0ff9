/**
 * The CSI Identity and Node services through a real gRPC client, in front of a
 * daemon with a fake device layer and a fake mount/mkfs host. Covers the node
 * checks of csi-test's csi-sanity (pkg/sanity/node.go) that apply here, plus
 * idempotency, status codes, no-reformat, restarts and secrets in logs.
 */
import assert from "node:assert/strict";
import { Code } from "../src/csi/status.ts";
import {
  blockCapability,
  type CsiFixture,
  IMAGE_SIZE,
  mountCapability,
  PASSWORD,
  pathExists,
  rpc,
  rpcError,
  SECRETS,
  withCsi,
} from "./support/csi_fixture.ts";
import { setLogLevel } from "../src/log.ts";

setLogLevel("error");

/** A staging directory (kubelet creates it) and a target path (the plugin does). */
async function paths(f: CsiFixture, name = "v") {
  const staging = `${f.dir}/staging-${name}`;
  await Deno.mkdir(staging);
  return { staging, target: `${f.dir}/pods/${name}/mount` };
}

function stageRequest(staging: string, capability: object = mountCapability(), volumeId = "disk0") {
  return { volumeId, stagingTargetPath: staging, volumeCapability: capability, secrets: SECRETS };
}

function publishRequest(
  staging: string,
  target: string,
  capability: object = mountCapability(),
  readonly = false,
) {
  return {
    volumeId: "disk0",
    stagingTargetPath: staging,
    targetPath: target,
    volumeCapability: capability,
    readonly,
  };
}

Deno.test("Identity: plugin info, capabilities and probe", async () => {
  await withCsi(async (f) => {
    const info = await rpc(f.identity, "GetPluginInfo", {});
    assert.equal(info.name, "csi.ivbsnetd.io");
    assert.equal(info.vendorVersion, "test");
    const caps = await rpc<{ capabilities: unknown[] }>(f.identity, "GetPluginCapabilities", {});
    assert.deepEqual(caps.capabilities, [{
      service: { type: "CONTROLLER_SERVICE" },
      type: "service",
    }]);
    assert.deepEqual((await rpc(f.identity, "Probe", {})).ready, { value: true });
  });
});

Deno.test("Probe fails with FAILED_PRECONDITION when the daemon is gone", async () => {
  await withCsi(async (f) => {
    await f.daemon.shutdown("test");
    const error = await rpcError(f.identity, "Probe", {});
    assert.equal(error.code, Code.FAILED_PRECONDITION);
  });
});

Deno.test("NodeGetCapabilities lists stage/unstage, volume stats and volume condition", async () => {
  await withCsi(async (f) => {
    const reply = await rpc<{ capabilities: { rpc: { type: string } }[] }>(
      f.node,
      "NodeGetCapabilities",
      {},
    );
    assert.deepEqual(reply.capabilities.map((c) => c.rpc.type), [
      "STAGE_UNSTAGE_VOLUME",
      "GET_VOLUME_STATS",
      "VOLUME_CONDITION",
    ]);
  });
});

Deno.test("NodeGetInfo: the node id, and one volume per NBD device of the daemon", async () => {
  await withCsi(async (f) => {
    const info = await rpc(f.node, "NodeGetInfo", {});
    assert.equal(info.nodeId, "node-a");
    assert.equal(info.maxVolumesPerNode, 4);
  });
});

Deno.test("missing required fields are INVALID_ARGUMENT (csi-sanity's node argument checks)", async () => {
  await withCsi(async (f) => {
    const staging = `${f.dir}/staging`;
    const cases: [string, object][] = [
      ["NodePublishVolume", {}],
      ["NodePublishVolume", { volumeId: "disk0" }],
      ["NodePublishVolume", { volumeId: "disk0", targetPath: `${f.dir}/t` }],
      ["NodeUnpublishVolume", {}],
      ["NodeUnpublishVolume", { volumeId: "disk0" }],
      ["NodeStageVolume", { stagingTargetPath: staging, volumeCapability: mountCapability() }],
      ["NodeStageVolume", { volumeId: "disk0", volumeCapability: mountCapability() }],
      ["NodeStageVolume", { volumeId: "disk0", stagingTargetPath: staging, secrets: SECRETS }],
      ["NodeUnstageVolume", { stagingTargetPath: staging }],
      ["NodeUnstageVolume", { volumeId: "disk0" }],
      ["NodeGetVolumeStats", { volumePath: "some/path" }],
      ["NodeGetVolumeStats", { volumeId: "disk0" }],
      // Ours: no credentials, an access mode or filesystem not served here.
      ["NodeStageVolume", { ...stageRequest(staging), secrets: {} }],
      ["NodeStageVolume", stageRequest(staging, mountCapability("MULTI_NODE_MULTI_WRITER"))],
      ["NodeStageVolume", stageRequest(staging, mountCapability("SINGLE_NODE_WRITER", "btrfs"))],
      ["NodeStageVolume", stageRequest(staging, { accessMode: { mode: "SINGLE_NODE_WRITER" } })],
      [
        "NodeStageVolume",
        stageRequest(staging, {
          mount: { fsType: "ext4", mountFlags: ["ro,dev"] },
          accessMode: { mode: "SINGLE_NODE_WRITER" },
        }),
      ],
    ];
    for (const [method, request] of cases) {
      const error = await rpcError(f.node, method, request);
      assert.equal(error.code, Code.INVALID_ARGUMENT, `${method} ${JSON.stringify(request)}`);
    }
    assert.equal(f.driver.attached.size, 0);
    assert.deepEqual(f.host.calls, []);
  });
});

Deno.test("stage formats a blank device once, mounts it, and a second stage changes nothing", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f);
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    assert.equal(f.host.ran("mkfs.ext4").length, 1);
    const mount = f.host.mountedAt(staging);
    assert.equal(mount?.source, "/dev/nbd0");
    assert.equal(mount?.fsType, "ext4");
    const calls = f.host.calls.length;
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    assert.equal(f.host.ran("mkfs.ext4").length, 1);
    assert.equal(f.host.ran("mount").length, 1);
    assert.equal(f.host.calls.length, calls);
    assert.equal(f.driver.attached.size, 1);
  });
});

Deno.test("a device holding a filesystem is never formatted: same type mounts, another is refused", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f);
    f.host.signatures.set("/dev/nbd0", "ext4");
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    assert.equal(f.host.ran("mkfs.ext4").length, 0);
    await rpc(f.node, "NodeUnstageVolume", { volumeId: "disk0", stagingTargetPath: staging });

    f.host.signatures.set("/dev/nbd0", "xfs");
    const error = await rpcError(f.node, "NodeStageVolume", stageRequest(staging));
    assert.equal(error.code, Code.FAILED_PRECONDITION);
    assert.match(error.details, /holds xfs, not ext4/);
    f.host.signatures.set("/dev/nbd0", "gpt");
    assert.equal((await rpcError(f.node, "NodeStageVolume", stageRequest(staging))).code, 9);
    assert.equal(f.host.ran("mkfs.ext4").length + f.host.ran("mkfs.xfs").length, 0);
    // A refused stage leaves nothing behind: no mount, no attached device.
    assert.equal(f.host.mountedAt(staging), undefined);
    assert.equal(f.driver.attached.size, 0);
  });
});

Deno.test("xfs volumes are formatted with mkfs.xfs and mounted as xfs", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f);
    const capability = mountCapability("SINGLE_NODE_WRITER", "xfs");
    await rpc(f.node, "NodeStageVolume", stageRequest(staging, capability));
    assert.deepEqual(f.host.ran("mkfs.xfs"), [["mkfs.xfs", "-q", "-K", "/dev/nbd0"]]);
    assert.equal(f.host.mountedAt(staging)?.fsType, "xfs");
  });
});

Deno.test("a wrong password is PERMISSION_DENIED and leaves nothing mounted or attached", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f);
    const request = { ...stageRequest(staging), secrets: { username: "kube", password: "wrong" } };
    const error = await rpcError(f.node, "NodeStageVolume", request);
    assert.equal(error.code, Code.PERMISSION_DENIED);
    assert.equal(f.driver.attached.size, 0);
    assert.deepEqual(f.host.mountsList, []);
    assert.deepEqual(await f.api.mounts(), []);
  });
});

Deno.test("an unknown image is NOT_FOUND", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f);
    const error = await rpcError(
      f.node,
      "NodeStageVolume",
      stageRequest(staging, undefined, "nope"),
    );
    assert.equal(error.code, Code.NOT_FOUND);
    assert.equal(f.driver.attached.size, 0);
  });
});

Deno.test("a failure after the attach (mkfs) detaches the device again", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f);
    f.host.failNext.set("mkfs.ext4", "mkfs.ext4: no space");
    const error = await rpcError(f.node, "NodeStageVolume", stageRequest(staging));
    assert.equal(error.code, Code.INTERNAL);
    assert.match(error.details, /mkfs.ext4 failed/);
    assert.equal(f.driver.attached.size, 0);
  });
});

Deno.test("an incompatible re-stage is ALREADY_EXISTS: other type, other volume, block vs mount", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f);
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    const cases = [
      stageRequest(staging, mountCapability("SINGLE_NODE_WRITER", "xfs")),
      stageRequest(staging, blockCapability()),
      stageRequest(staging, mountCapability("SINGLE_NODE_READER_ONLY")),
      stageRequest(staging, mountCapability(), "disk1"),
    ];
    for (const request of cases) {
      const error = await rpcError(f.node, "NodeStageVolume", request);
      assert.equal(error.code, Code.ALREADY_EXISTS, JSON.stringify(request));
    }
    assert.equal(f.driver.attached.size, 1);
  });
});

Deno.test("publish bind-mounts the staged volume, idempotently; read-only when asked", async () => {
  await withCsi(async (f) => {
    const { staging, target } = await paths(f);
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    await rpc(f.node, "NodePublishVolume", publishRequest(staging, target));
    await rpc(f.node, "NodePublishVolume", publishRequest(staging, target));
    assert.equal(f.host.ran("mount").length, 2);
    assert.equal(f.host.mountedAt(target)?.source, "/dev/nbd0");
    assert.equal(f.host.mountedAt(target)?.readOnly, false);

    const readOnlyTarget = `${f.dir}/pods/ro/mount`;
    await rpc(
      f.node,
      "NodePublishVolume",
      publishRequest(staging, readOnlyTarget, undefined, true),
    );
    assert.equal(f.host.mountedAt(readOnlyTarget)?.readOnly, true);
    // The same target with other options is ALREADY_EXISTS.
    const error = await rpcError(
      f.node,
      "NodePublishVolume",
      publishRequest(staging, target, undefined, true),
    );
    assert.equal(error.code, Code.ALREADY_EXISTS);
  });
});

Deno.test("publish before stage is FAILED_PRECONDITION", async () => {
  await withCsi(async (f) => {
    const { staging, target } = await paths(f);
    const error = await rpcError(f.node, "NodePublishVolume", publishRequest(staging, target));
    assert.equal(error.code, Code.FAILED_PRECONDITION);
    const noStaging = { ...publishRequest(staging, target), stagingTargetPath: "" };
    assert.equal((await rpcError(f.node, "NodePublishVolume", noStaging)).code, 9);
  });
});

Deno.test("unpublish removes the target path and is idempotent (csi-sanity: should remove target path)", async () => {
  await withCsi(async (f) => {
    const { staging, target } = await paths(f);
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    await rpc(f.node, "NodePublishVolume", publishRequest(staging, target));
    assert.equal(await pathExists(target), true);
    await rpc(f.node, "NodeUnpublishVolume", { volumeId: "disk0", targetPath: target });
    assert.equal(await pathExists(target), false);
    assert.equal(f.host.mountedAt(target), undefined);
    await rpc(f.node, "NodeUnpublishVolume", { volumeId: "disk0", targetPath: target });
  });
});

Deno.test("unstage refuses while published, then unmounts and detaches; twice is fine", async () => {
  await withCsi(async (f) => {
    const { staging, target } = await paths(f);
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    await rpc(f.node, "NodePublishVolume", publishRequest(staging, target));
    const unstage = { volumeId: "disk0", stagingTargetPath: staging };
    assert.equal((await rpcError(f.node, "NodeUnstageVolume", unstage)).code, 9);
    assert.equal(f.driver.attached.size, 1);
    await rpc(f.node, "NodeUnpublishVolume", { volumeId: "disk0", targetPath: target });
    await rpc(f.node, "NodeUnstageVolume", unstage);
    assert.equal(f.host.mountedAt(staging), undefined);
    assert.equal(f.driver.attached.size, 0);
    await rpc(f.node, "NodeUnstageVolume", unstage);
  });
});

Deno.test("unstage of a path holding another volume is NOT_FOUND", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f);
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    const error = await rpcError(f.node, "NodeUnstageVolume", {
      volumeId: "disk1",
      stagingTargetPath: staging,
    });
    assert.equal(error.code, Code.NOT_FOUND);
    assert.equal(f.driver.attached.size, 1);
  });
});

Deno.test("a block volume: device bound onto a file in staging, then onto the target file", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f, "blk");
    const target = `${f.dir}/pods/blk/dev`;
    await rpc(f.node, "NodeStageVolume", stageRequest(staging, blockCapability()));
    await rpc(f.node, "NodeStageVolume", stageRequest(staging, blockCapability()));
    assert.equal(f.host.mountedAt(`${staging}/block`)?.root, "/nbd0");
    assert.equal(f.host.calls.filter((c) => c[0].startsWith("mkfs")).length, 0);
    assert.equal(f.host.ran("blkid").length, 0);
    const publish = publishRequest(staging, target, blockCapability());
    await rpc(f.node, "NodePublishVolume", publish);
    await rpc(f.node, "NodePublishVolume", publish);
    assert.equal((await Deno.stat(target)).isFile, true);
    assert.equal(f.host.mountedAt(target)?.root, "/nbd0");
    const stats = await rpc(f.node, "NodeGetVolumeStats", {
      volumeId: "disk0",
      volumePath: target,
    });
    assert.deepEqual(stats.usage, [{ unit: "BYTES", total: IMAGE_SIZE, available: 0, used: 0 }]);
    // A mount-type publish of a block-staged volume is refused.
    const wrongKind = publishRequest(staging, `${f.dir}/pods/blk/m`, mountCapability());
    assert.equal((await rpcError(f.node, "NodePublishVolume", wrongKind)).code, 9);
    await rpc(f.node, "NodeUnpublishVolume", { volumeId: "disk0", targetPath: target });
    assert.equal(await pathExists(target), false);
    await rpc(f.node, "NodeUnstageVolume", { volumeId: "disk0", stagingTargetPath: staging });
    assert.equal(await pathExists(`${staging}/block`), false);
    assert.equal(f.driver.attached.size, 0);
  });
});

Deno.test("volume stats: bytes and inodes; NOT_FOUND off the volume (csi-sanity's stats checks)", async () => {
  await withCsi(async (f) => {
    const { staging, target } = await paths(f);
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    await rpc(f.node, "NodePublishVolume", publishRequest(staging, target));
    const stats = await rpc(f.node, "NodeGetVolumeStats", {
      volumeId: "disk0",
      volumePath: target,
    });
    assert.deepEqual(stats.usage, [
      { unit: "BYTES", total: 2560 * 4096, available: 1792 * 4096, used: 512 * 4096 },
      { unit: "INODES", total: 640, available: 600, used: 40 },
    ]);
    assert.equal((stats.volumeCondition as { abnormal: boolean }).abnormal, false);
    const notFound = [
      { volumeId: "nope", volumePath: "some/path" },
      { volumeId: "disk0", volumePath: "some/path" },
      { volumeId: "disk1", volumePath: target },
    ];
    for (const request of notFound) {
      assert.equal((await rpcError(f.node, "NodeGetVolumeStats", request)).code, Code.NOT_FOUND);
    }
  });
});

Deno.test("volume condition turns abnormal when the daemon no longer serves the device", async () => {
  await withCsi(async (f) => {
    const { staging, target } = await paths(f);
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    await rpc(f.node, "NodePublishVolume", publishRequest(staging, target));
    f.driver.attached.get("/dev/nbd0")!.vanish();
    await f.driver.attached.get("/dev/nbd0")?.done;
    const stats = await rpc(f.node, "NodeGetVolumeStats", {
      volumeId: "disk0",
      volumePath: target,
    });
    // The mount is desired (the API accepted it): the daemon lists it failing, with why.
    assert.deepEqual(stats.volumeCondition, {
      abnormal: true,
      message: "the device was detached without an unmount request",
    });
    await f.daemon.shutdown("test");
    const down = await rpc(f.node, "NodeGetVolumeStats", { volumeId: "disk0", volumePath: target });
    assert.equal((down.volumeCondition as { abnormal: boolean }).abnormal, true);
    assert.match((down.volumeCondition as { message: string }).message, /not reachable/);
  });
});

Deno.test("a second call on a volume while one is in flight is ABORTED", async () => {
  await withCsi(async (f) => {
    const { staging } = await paths(f);
    let open!: () => void;
    f.driver.openGate = new Promise<void>((resolve) => open = resolve);
    const first = rpc(f.node, "NodeStageVolume", stageRequest(staging));
    // The first call holds the volume once the daemon saw its login.
    while (f.driver.openCalls === 0) await new Promise((r) => setTimeout(r, 5));
    const error = await rpcError(f.node, "NodeStageVolume", stageRequest(staging));
    assert.equal(error.code, Code.ABORTED);
    open();
    f.driver.openGate = null;
    await first;
    assert.equal(f.driver.attached.size, 1);
  });
});

Deno.test("after a CSI process restart, unpublish and unstage still work (state from the daemon and mountinfo)", async () => {
  await withCsi(async (f) => {
    const { staging, target } = await paths(f);
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    await rpc(f.node, "NodePublishVolume", publishRequest(staging, target));
    await f.restartCsi();
    await rpc(f.node, "NodeStageVolume", stageRequest(staging));
    await rpc(f.node, "NodePublishVolume", publishRequest(staging, target));
    await rpc(f.node, "NodeUnpublishVolume", { volumeId: "disk0", targetPath: target });
    await rpc(f.node, "NodeUnstageVolume", { volumeId: "disk0", stagingTargetPath: staging });
    assert.equal(f.driver.attached.size, 0);
    assert.deepEqual(f.host.mountsList, []);
  });
});

Deno.test("the IVBS password never reaches a log line, an error or the daemon's API", async () => {
  const printed: string[] = [];
  const original = { error: console.error, log: console.log, warn: console.warn };
  console.error = console.log = console.warn = (...parts: unknown[]) =>
    void printed.push(parts.map(String).join(" "));
  setLogLevel("debug");
  try {
    await withCsi(async (f) => {
      const { staging, target } = await paths(f);
      await rpc(f.node, "NodeStageVolume", stageRequest(staging));
      await rpc(f.node, "NodePublishVolume", publishRequest(staging, target));
      const wrong = {
        ...stageRequest(`${staging}x`),
        secrets: { username: "kube", password: `${PASSWORD}!` },
      };
      const refused = await rpcError(f.node, "NodeStageVolume", { ...wrong, volumeId: "disk1" });
      const mounts = JSON.stringify(await f.api.mounts());
      await rpc(f.node, "NodeUnpublishVolume", { volumeId: "disk0", targetPath: target });
      await rpc(f.node, "NodeUnstageVolume", { volumeId: "disk0", stagingTargetPath: staging });
      const logged = JSON.stringify(f.log.lines);
      assert.ok(f.log.lines.length > 4, "the plugin logged its work");
      for (const text of [logged, mounts, refused.details, ...printed]) {
        assert.ok(!text.includes(PASSWORD), `password found in: ${text.slice(0, 200)}`);
      }
    });
  } finally {
    Object.assign(console, original);
    setLogLevel("error");
  }
});
