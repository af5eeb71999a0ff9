/**
 * Volume capabilities (CSI `VolumeCapability`) as this plugin understands them:
 * a mount volume (ext4 or xfs) or a raw block volume, in one of the access
 * modes a single-node block device can honour. Shared by the node and the
 * controller so both accept exactly the same requests.
 * @module
 */
import { Code, CsiError } from "./status.ts";

/** The filesystems a mount volume may carry; the first is the default. */
export const FILESYSTEMS = ["ext4", "xfs"] as const;
export type Filesystem = (typeof FILESYSTEMS)[number];

/**
 * Access modes served. A device is attached on one node at a time; only a
 * reader-only mode may be on several nodes at once (each with a read-only
 * IVBS session, so nobody writes).
 */
export const ACCESS_MODES = [
  "SINGLE_NODE_WRITER",
  "SINGLE_NODE_READER_ONLY",
  "MULTI_NODE_READER_ONLY",
] as const;
export type AccessMode = (typeof ACCESS_MODES)[number];

/** `VolumeCapability` as @grpc/proto-loader decodes it (enums as strings, oneof named). */
export interface VolumeCapabilityMessage {
  block?: Record<string, never> | null;
  mount?: { fsType?: string; mountFlags?: string[]; volumeMountGroup?: string } | null;
  accessMode?: { mode?: string } | null;
  accessType?: string;
}

export type Capability =
  | { kind: "mount"; fsType: Filesystem; mountFlags: string[]; accessMode: AccessMode }
  | { kind: "block"; accessMode: AccessMode };

/** Whether the access mode lets nobody write. */
export function isReaderOnly(mode: AccessMode): boolean {
  return mode !== "SINGLE_NODE_WRITER";
}

/** Whether several nodes may have the volume at once. */
export function isMultiNode(mode: AccessMode): boolean {
  return mode === "MULTI_NODE_READER_ONLY";
}

/** A plain mount option (name or name=value): one `-o` item, nothing else for mount(8). */
const MOUNT_FLAG = /^[a-z0-9_]+(=[A-Za-z0-9_.:/-]*)?$/;

/**
 * The capability, or a CsiError naming what is missing (INVALID_ARGUMENT) or
 * not served here (INVALID_ARGUMENT too: the spec has no finer code for it).
 */
export function parseCapability(
  message: VolumeCapabilityMessage | null | undefined,
  field = "volume_capability",
): Capability {
  if (!message) throw new CsiError(Code.INVALID_ARGUMENT, `${field} is required`);
  const mode = message.accessMode?.mode;
  if (!mode || mode === "UNKNOWN") {
    throw new CsiError(Code.INVALID_ARGUMENT, `${field}.access_mode is required`);
  }
  if (!(ACCESS_MODES as readonly string[]).includes(mode)) {
    throw new CsiError(
      Code.INVALID_ARGUMENT,
      `access mode ${mode} is not supported (supported: ${ACCESS_MODES.join(", ")})`,
    );
  }
  const accessMode = mode as AccessMode;
  if (message.block) return { kind: "block", accessMode };
  if (message.mount) {
    const fsType = message.mount.fsType || FILESYSTEMS[0];
    if (!(FILESYSTEMS as readonly string[]).includes(fsType)) {
      throw new CsiError(
        Code.INVALID_ARGUMENT,
        `fs_type ${JSON.stringify(fsType.slice(0, 40))} is not supported (${
          FILESYSTEMS.join(", ")
        })`,
      );
    }
    const mountFlags = message.mount.mountFlags ?? [];
    for (const flag of mountFlags) {
      if (!MOUNT_FLAG.test(flag) || flag.length > 200) {
        throw new CsiError(
          Code.INVALID_ARGUMENT,
          `mount flag ${JSON.stringify(flag.slice(0, 40))} is not a plain mount option`,
        );
      }
    }
    return { kind: "mount", fsType: fsType as Filesystem, mountFlags, accessMode };
  }
  throw new CsiError(Code.INVALID_ARGUMENT, `${field} needs an access type (block or mount)`);
}
