/**
 * /proc/self/mountinfo is what a restarted CSI process trusts to know what it
 * staged and published: the parser takes the kernel's escapes and optional
 * fields, and skips (never misreads) a line without the mountinfo shape.
 */
import assert from "node:assert/strict";
import {
  escapeMountPath,
  isReadOnly,
  mountAt,
  parseMountInfo,
  parseMountInfoLine,
} from "../src/csi/mountinfo.ts";

const STAGED =
  "612 29 43:0 / /var/lib/kubelet/plugins/kubernetes.io/csi/csi.ivbsnetd.io/abc/globalmount rw,relatime shared:300 - ext4 /dev/nbd0 rw";
const PUBLISHED =
  "640 29 43:0 / /var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pv/mount ro,relatime shared:300 master:7 - ext4 /dev/nbd0 rw";
const BLOCK =
  "650 29 0:5 /nbd0 /var/lib/kubelet/dev/pod1 rw,nosuid shared:2 - devtmpfs udev rw,size=1k";

Deno.test("parseMountInfoLine reads a filesystem mount, optional fields and all", () => {
  assert.deepEqual(parseMountInfoLine(PUBLISHED), {
    majorMinor: "43:0",
    root: "/",
    mountPoint: "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pv/mount",
    options: ["ro", "relatime"],
    fsType: "ext4",
    source: "/dev/nbd0",
  });
  assert.equal(isReadOnly(parseMountInfoLine(PUBLISHED)!), true);
  assert.equal(isReadOnly(parseMountInfoLine(STAGED)!), false);
});

Deno.test("a device node bound onto a file shows devtmpfs with the node as its root", () => {
  const entry = parseMountInfoLine(BLOCK)!;
  assert.equal(entry.root, "/nbd0");
  assert.equal(entry.fsType, "devtmpfs");
});

Deno.test("octal escapes (space, tab, newline, backslash) round-trip through escapeMountPath", () => {
  const path = "/mnt/a b\tc\nd\\e";
  const line = `1 2 43:0 / ${escapeMountPath(path)} rw - ext4 /dev/nbd1 rw`;
  assert.equal(parseMountInfoLine(line)?.mountPoint, path);
});

Deno.test("lines without the mountinfo shape are skipped, not misread", () => {
  const hostile = [
    "",
    "garbage",
    "1 2 43:0 / /mnt rw shared:1 ext4 /dev/nbd0 rw", // no separator
    "1 2 43:0 / /mnt rw - ext4", // no source
    "1 2 x:y / /mnt rw - ext4 /dev/nbd0 rw", // bad major:minor
    "1 2 43:0 relative /mnt rw - ext4 /dev/nbd0 rw", // root not absolute
    "1 2 43:0 / mnt rw - ext4 /dev/nbd0 rw", // mount point not absolute
    "- - - - - - - ext4 /dev/nbd0",
  ];
  for (const line of hostile) assert.equal(parseMountInfoLine(line), null, line);
  assert.equal(parseMountInfo([...hostile, STAGED].join("\n")).length, 1);
});

Deno.test("mountAt answers with the newest mount at a path (the one processes see)", () => {
  const over = STAGED.replace("612", "700").replace("/dev/nbd0", "/dev/nbd3");
  const entries = parseMountInfo([STAGED, PUBLISHED, over].join("\n"));
  const path = parseMountInfoLine(STAGED)!.mountPoint;
  assert.equal(mountAt(entries, path)?.source, "/dev/nbd3");
  assert.equal(mountAt(entries, "/nowhere"), null);
});
