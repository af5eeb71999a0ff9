/**
 * deploy/kubernetes/ cannot be applied here (no cluster, no image build), so
 * its manifests are parsed with a YAML 1.2 parser and the fields that make
 * the plugin work are checked: the driver name everywhere, attachRequired,
 * the sidecars on the plugin's socket, privileged node containers with host
 * /dev, /sys and the state dir, Bidirectional propagation of the kubelet dir,
 * and the example PV naming its Secret for stage and controller publish.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { DRIVER_NAME } from "../src/csi/server.ts";

const DIR = new URL("../deploy/kubernetes/", import.meta.url);

// deno-lint-ignore no-explicit-any
type Doc = any;

async function load(name: string): Promise<Doc[]> {
  const text = await Deno.readTextFile(new URL(name, DIR));
  return parseAllDocuments(text).map((doc) => {
    assert.deepEqual(doc.errors, [], `${name} parses`);
    return doc.toJS();
  });
}

function byKind(docs: Doc[], kind: string): Doc {
  const found = docs.filter((doc) => doc.kind === kind);
  assert.equal(found.length, 1, `one ${kind}`);
  return found[0];
}

function container(pod: Doc, name: string): Doc {
  const found = pod.spec.template.spec.containers.find((c: Doc) => c.name === name);
  assert.ok(found, `container ${name}`);
  return found;
}

/** The volume (by name) a container mounts at `path`. */
function volumeAt(workload: Doc, c: Doc, path: string): Doc {
  const mount = c.volumeMounts.find((m: Doc) => m.mountPath === path);
  assert.ok(mount, `${c.name} mounts ${path}`);
  const volume = workload.spec.template.spec.volumes.find((v: Doc) => v.name === mount.name);
  assert.ok(volume, `volume ${mount.name} exists`);
  return { mount, volume };
}

Deno.test("CSIDriver: our name, attachRequired so Kubernetes refuses a second node", async () => {
  const driver = byKind(await load("csidriver.yaml"), "CSIDriver");
  assert.equal(driver.apiVersion, "storage.k8s.io/v1");
  assert.equal(driver.metadata.name, DRIVER_NAME);
  assert.equal(driver.spec.attachRequired, true);
  assert.deepEqual(driver.spec.volumeLifecycleModes, ["Persistent"]);
});

Deno.test("controller Deployment: csi --controller beside the external-attacher on one socket", async () => {
  const docs = await load("controller.yaml");
  const deployment = byKind(docs, "Deployment");
  assert.equal(deployment.spec.replicas, 1);
  const plugin = container(deployment, "csi-plugin");
  assert.equal(plugin.args[0], "csi");
  assert.ok(plugin.args.includes("--controller"));
  assert.ok(plugin.args.includes("--endpoint=unix:///csi/csi.sock"));
  const attacher = container(deployment, "csi-attacher");
  assert.match(attacher.image, /^registry\.k8s\.io\/sig-storage\/csi-attacher:v\d+\.\d+\.\d+$/);
  assert.ok(attacher.args.includes("--csi-address=/csi/csi.sock"));
  assert.equal(
    volumeAt(deployment, plugin, "/csi").volume.name,
    volumeAt(deployment, attacher, "/csi").volume.name,
  );
  assert.equal(container(deployment, "ivbsnetd").args[0], "serve");
  const role = byKind(docs, "ClusterRole");
  const rule = role.rules.find((r: Doc) => r.resources.includes("volumeattachments"));
  assert.ok(rule.verbs.includes("patch") && rule.verbs.includes("watch"));
  const binding = byKind(docs, "ClusterRoleBinding");
  assert.equal(binding.subjects[0].name, deployment.spec.template.spec.serviceAccountName);
});

Deno.test("node DaemonSet: daemon, plugin and registrar; host /dev, /sys, state dir; Bidirectional kubelet dir", async () => {
  const daemonSet = byKind(await load("node.yaml"), "DaemonSet");
  const daemon = container(daemonSet, "ivbsnetd");
  const plugin = container(daemonSet, "csi-plugin");
  const registrar = container(daemonSet, "node-driver-registrar");
  assert.equal(daemon.securityContext.privileged, true);
  assert.equal(plugin.securityContext.privileged, true);
  for (const c of [daemon, plugin]) {
    assert.equal(volumeAt(daemonSet, c, "/dev").volume.hostPath.path, "/dev");
    assert.equal(volumeAt(daemonSet, c, "/sys").volume.hostPath.path, "/sys");
  }
  assert.equal(volumeAt(daemonSet, daemon, "/run/ivbsnetd").volume.hostPath.path, "/run/ivbsnetd");
  const kubelet = volumeAt(daemonSet, plugin, "/var/lib/kubelet");
  assert.equal(kubelet.mount.mountPropagation, "Bidirectional");
  assert.equal(kubelet.volume.hostPath.path, "/var/lib/kubelet");
  assert.ok(plugin.args.includes("--node-id=$(NODE_NAME)"));
  assert.equal(plugin.env[0].valueFrom.fieldRef.fieldPath, "spec.nodeName");
  const socket = volumeAt(daemonSet, plugin, "/csi").volume.hostPath.path;
  assert.equal(socket, `/var/lib/kubelet/plugins/${DRIVER_NAME}`);
  assert.ok(registrar.args.includes(`--kubelet-registration-path=${socket}/csi.sock`));
  assert.equal(
    volumeAt(daemonSet, registrar, "/registration").volume.hostPath.path,
    "/var/lib/kubelet/plugins_registry",
  );
});

Deno.test("example: Secret with username/password, a static PV naming it, a PVC bound to it, a Pod", async () => {
  const docs = await load("example.yaml");
  const secret = byKind(docs, "Secret");
  assert.deepEqual(Object.keys(secret.stringData).sort(), ["password", "username"]);
  const pv = byKind(docs, "PersistentVolume");
  assert.equal(pv.spec.csi.driver, DRIVER_NAME);
  assert.equal(pv.spec.csi.volumeHandle, "disk0");
  assert.equal(pv.spec.persistentVolumeReclaimPolicy, "Retain");
  for (const ref of [pv.spec.csi.nodeStageSecretRef, pv.spec.csi.controllerPublishSecretRef]) {
    assert.deepEqual(ref, { name: secret.metadata.name, namespace: secret.metadata.namespace });
  }
  const pvc = byKind(docs, "PersistentVolumeClaim");
  assert.equal(pvc.spec.volumeName, pv.metadata.name);
  assert.equal(pvc.spec.storageClassName, "");
  assert.deepEqual(pvc.spec.accessModes, pv.spec.accessModes);
  const pod = byKind(docs, "Pod");
  assert.equal(pod.spec.volumes[0].persistentVolumeClaim.claimName, pvc.metadata.name);
});

Deno.test("the config names no user (credentials come from Secrets) and the Containerfile ships mkfs", async () => {
  const config = byKind(await load("config.yaml"), "ConfigMap");
  const json = JSON.parse(config.data["ivbsnetd.json"]);
  assert.equal(json.users, undefined);
  assert.equal(json.nbd.attach, "netlink");
  const containerfile = await Deno.readTextFile(new URL("Containerfile", DIR));
  for (const tool of ["e2fsprogs", "xfsprogs", "util-linux", "mount"]) {
    assert.match(containerfile, new RegExp(`\\b${tool}\\b`));
  }
  // The image is the compile task's binary, which carries the vendored proto.
  assert.match(containerfile, /^RUN deno task compile\b/m);
  const tasks = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", DIR))).tasks;
  assert.match(tasks.compile, /--include src\/csi\/proto\/csi\.proto/);
});
