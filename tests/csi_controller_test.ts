/**
 * The CSI Controller through a real gRPC client: it checks the image through
 * the daemon (POST /api/images/check, one read-only login, nothing attached),
 * records which node has a volume, and refuses a second node for a
 * single-node volume, across restarts of the plugin.
 */
import assert from "node:assert/strict";
import { ControllerState } from "../src/csi/controller_state.ts";
import { Code } from "../src/csi/status.ts";
import { setLogLevel } from "../src/log.ts";
import {
  blockCapability,
  IMAGE_SIZE,
  mountCapability,
  rpc,
  rpcError,
  SECRETS,
  withCsi,
} from "./support/csi_fixture.ts";

setLogLevel("error");

function publishRequest(nodeId: string, capability: object = mountCapability(), readonly = false) {
  return { volumeId: "disk0", nodeId, volumeCapability: capability, readonly, secrets: SECRETS };
}

Deno.test("ControllerGetCapabilities: PUBLISH_UNPUBLISH_VOLUME only", async () => {
  await withCsi(async (f) => {
    const reply = await rpc<{ capabilities: { rpc: { type: string } }[] }>(
      f.controller,
      "ControllerGetCapabilities",
      {},
    );
    assert.deepEqual(reply.capabilities.map((c) => c.rpc.type), ["PUBLISH_UNPUBLISH_VOLUME"]);
  });
});

Deno.test("CreateVolume is UNIMPLEMENTED: volumes are provisioned statically", async () => {
  await withCsi(async (f) => {
    const error = await rpcError(f.controller, "CreateVolume", { name: "x" });
    assert.equal(error.code, Code.UNIMPLEMENTED);
  });
});

Deno.test("ControllerPublishVolume argument and image errors", async () => {
  await withCsi(async (f) => {
    const cases: [object, number][] = [
      [
        { nodeId: "a", volumeCapability: mountCapability(), secrets: SECRETS },
        Code.INVALID_ARGUMENT,
      ],
      [
        { volumeId: "disk0", volumeCapability: mountCapability(), secrets: SECRETS },
        Code.INVALID_ARGUMENT,
      ],
      [{ volumeId: "disk0", nodeId: "a", secrets: SECRETS }, Code.INVALID_ARGUMENT],
      [{ ...publishRequest("a"), secrets: {} }, Code.INVALID_ARGUMENT],
      [{ ...publishRequest("a"), volumeId: "nope" }, Code.NOT_FOUND],
      [
        { ...publishRequest("a"), secrets: { username: "kube", password: "x" } },
        Code.PERMISSION_DENIED,
      ],
    ];
    for (const [request, code] of cases) {
      assert.equal((await rpcError(f.controller, "ControllerPublishVolume", request)).code, code);
    }
    // The image check attaches nothing, and nothing was recorded.
    assert.equal(f.driver.attached.size, 0);
    assert.deepEqual(await new ControllerState(`${f.dir}/controller.json`).read(), {});
  });
});

Deno.test("a single-node volume is published on one node at a time; the same node again is fine", async () => {
  await withCsi(async (f) => {
    assert.deepEqual(
      await rpc(f.controller, "ControllerPublishVolume", publishRequest("node-a")),
      { publishContext: {} },
    );
    await rpc(f.controller, "ControllerPublishVolume", publishRequest("node-a"));
    const second = await rpcError(
      f.controller,
      "ControllerPublishVolume",
      publishRequest("node-b"),
    );
    assert.equal(second.code, Code.FAILED_PRECONDITION);
    assert.match(second.details, /published on node node-a/);
    // Same node, other options: ALREADY_EXISTS.
    const readOnly = publishRequest("node-a", mountCapability(), true);
    assert.equal((await rpcError(f.controller, "ControllerPublishVolume", readOnly)).code, 6);

    await rpc(f.controller, "ControllerUnpublishVolume", { volumeId: "disk0", nodeId: "node-a" });
    await rpc(f.controller, "ControllerUnpublishVolume", { volumeId: "disk0", nodeId: "node-a" });
    await rpc(f.controller, "ControllerPublishVolume", publishRequest("node-b", blockCapability()));
    assert.equal(f.driver.attached.size, 0, "the controller never attaches");
  });
});

Deno.test("the record survives a plugin restart, in a 0600 JSON file", async () => {
  await withCsi(async (f) => {
    await rpc(f.controller, "ControllerPublishVolume", publishRequest("node-a"));
    await f.restartCsi();
    const error = await rpcError(f.controller, "ControllerPublishVolume", publishRequest("node-b"));
    assert.equal(error.code, Code.FAILED_PRECONDITION);
    const info = await Deno.stat(`${f.dir}/controller.json`);
    assert.equal(info.mode! & 0o777, 0o600);
    assert.deepEqual(await new ControllerState(`${f.dir}/controller.json`).read(), {
      disk0: [{ nodeId: "node-a", accessMode: "SINGLE_NODE_WRITER", readOnly: false }],
    });
    const text = await Deno.readTextFile(`${f.dir}/controller.json`);
    assert.ok(!text.includes(SECRETS.password), "no secret in the state file");
  });
});

Deno.test("a reader-only volume may be published on several nodes, but not with a writer", async () => {
  await withCsi(async (f) => {
    const reader = mountCapability("MULTI_NODE_READER_ONLY");
    await rpc(f.controller, "ControllerPublishVolume", publishRequest("node-a", reader));
    await rpc(f.controller, "ControllerPublishVolume", publishRequest("node-b", reader));
    const writer = await rpcError(
      f.controller,
      "ControllerPublishVolume",
      publishRequest("node-c"),
    );
    assert.equal(writer.code, Code.FAILED_PRECONDITION);
    // Unpublish with no node id forgets every node.
    await rpc(f.controller, "ControllerUnpublishVolume", { volumeId: "disk0" });
    await rpc(f.controller, "ControllerPublishVolume", publishRequest("node-c"));
  });
});

Deno.test("a corrupt state file is refused (INTERNAL), never overwritten", async () => {
  await withCsi(async (f) => {
    await Deno.writeTextFile(`${f.dir}/controller.json`, "{not json");
    const error = await rpcError(f.controller, "ControllerPublishVolume", publishRequest("node-a"));
    assert.equal(error.code, Code.INTERNAL);
    assert.equal(await Deno.readTextFile(`${f.dir}/controller.json`), "{not json");
    assert.ok(
      f.log.lines.some((l) => l.level === "error" && /ControllerPublishVolume/.test(l.message)),
    );
  });
});

Deno.test("ControllerUnpublishVolume needs a volume id", async () => {
  await withCsi(async (f) => {
    const error = await rpcError(f.controller, "ControllerUnpublishVolume", { nodeId: "node-a" });
    assert.equal(error.code, Code.INVALID_ARGUMENT);
  });
});

Deno.test("ValidateVolumeCapabilities confirms what is served and says why not otherwise", async () => {
  await withCsi(async (f) => {
    const ok = await rpc<{ confirmed: { volumeCapabilities: unknown[] } | null }>(
      f.controller,
      "ValidateVolumeCapabilities",
      { volumeId: "disk0", volumeCapabilities: [mountCapability(), blockCapability()] },
    );
    assert.equal(ok.confirmed?.volumeCapabilities.length, 2);
    const no = await rpc<{ confirmed: unknown; message: string }>(
      f.controller,
      "ValidateVolumeCapabilities",
      { volumeId: "disk0", volumeCapabilities: [mountCapability("MULTI_NODE_MULTI_WRITER")] },
    );
    assert.equal(no.confirmed, null);
    assert.match(no.message, /MULTI_NODE_MULTI_WRITER is not supported/);
    const missing = [{ volumeId: "disk0" }, { volumeCapabilities: [mountCapability()] }];
    for (const request of missing) {
      assert.equal((await rpcError(f.controller, "ValidateVolumeCapabilities", request)).code, 3);
    }
    const unknown = await rpcError(f.controller, "ValidateVolumeCapabilities", {
      volumeId: "nope",
      volumeCapabilities: [mountCapability()],
      secrets: SECRETS,
    });
    assert.equal(unknown.code, Code.NOT_FOUND);
  });
});

Deno.test("POST /api/images/check: size of an image the credentials open; 404 and 403 otherwise", async () => {
  await withCsi(async (f) => {
    assert.deepEqual(await f.api.checkImage({ image: "disk0", ...SECRETS }), {
      image: "disk0",
      sizeBytes: IMAGE_SIZE,
    });
    await assert.rejects(f.api.checkImage({ image: "nope", ...SECRETS }), { status: 404 });
    await assert.rejects(
      f.api.checkImage({ image: "disk0", username: "kube", password: "x" }),
      { status: 403 },
    );
    assert.equal(f.driver.attached.size, 0);
    assert.ok(
      f.driver.backends.every((b) => b.closed && b.readOnly),
      "one read-only session, closed",
    );
  });
});
