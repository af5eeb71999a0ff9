/**
 * The CSI Node service. A volume is an IVBS image (volume id = image name);
 * staging asks the daemon to mount it on a /dev/nbdX, formats the device only
 * if it holds no signature at all, and mounts it at the staging path (a block
 * volume's device is bind-mounted onto a file there instead); publishing
 * bind-mounts that onto the pod's target. Nothing is remembered in this
 * process: every call reads the daemon's mounts and the kernel's mount table,
 * so the process can be restarted at any time.
 * @module
 */
import { dirname } from "node:path";
import type { Logger } from "../log.ts";
import {
  type Capability,
  isReaderOnly,
  parseCapability,
  type VolumeCapabilityMessage,
} from "./capability.ts";
import {
  askDaemon,
  type DaemonApi,
  daemonFailure,
  type DaemonMount,
  isGone,
  isHealthy,
} from "./daemon_api.ts";
import { isReadOnly, mountAt, type MountEntry } from "./mountinfo.ts";
import { Code, CsiError, required } from "./status.ts";
import { VolumeLocks } from "./volume_locks.ts";
import type { VolumeFs } from "./volume_fs.ts";

/** The file in a block volume's staging directory that the device is bound onto. */
export const BLOCK_STAGING_FILE = "block";

export interface NodeStageRequest {
  volumeId?: string;
  stagingTargetPath?: string;
  volumeCapability?: VolumeCapabilityMessage | null;
  secrets?: Record<string, string>;
}

export interface NodePublishRequest {
  volumeId?: string;
  stagingTargetPath?: string;
  targetPath?: string;
  volumeCapability?: VolumeCapabilityMessage | null;
  readonly?: boolean;
}

export interface NodeUnpublishRequest {
  volumeId?: string;
  targetPath?: string;
}

export interface NodeUnstageRequest {
  volumeId?: string;
  stagingTargetPath?: string;
}

export interface NodeVolumeStatsRequest {
  volumeId?: string;
  volumePath?: string;
}

export interface VolumeStats {
  usage: { unit: "BYTES" | "INODES"; total: number; available?: number; used?: number }[];
  volumeCondition: { abnormal: boolean; message: string };
}

export interface NodeServiceOptions {
  nodeId: string;
  daemon: DaemonApi;
  fs: VolumeFs;
  log: Logger;
}

/** What a path holds: a filesystem mount of a device, or a device node bound onto a file. */
interface Holding {
  kind: "mount" | "block";
  entry: MountEntry;
  /** The daemon's mount whose device is there, if the daemon knows it. */
  mount: DaemonMount | null;
}

export class NodeService {
  readonly nodeId: string;
  readonly #daemon: DaemonApi;
  readonly #fs: VolumeFs;
  readonly #log: Logger;
  readonly #locks = new VolumeLocks();

  constructor(options: NodeServiceOptions) {
    this.nodeId = options.nodeId;
    this.#daemon = options.daemon;
    this.#fs = options.fs;
    this.#log = options.log;
  }

  /** Node id and how many volumes fit: one per NBD device the daemon manages. */
  async getInfo(): Promise<{ nodeId: string; maxVolumesPerNode: number }> {
    const health = await askDaemon("ask ivbsnetd for its devices", () => this.#daemon.health());
    if (health.devices < 1) {
      // 0 would mean "no limit" to the CO; a daemon without devices cannot take a volume.
      throw new CsiError(
        Code.UNAVAILABLE,
        "ivbsnetd has no NBD devices (is the nbd module loaded?)",
      );
    }
    return { nodeId: this.nodeId, maxVolumesPerNode: health.devices };
  }

  stage(request: NodeStageRequest): Promise<void> {
    const volumeId = required(request.volumeId, "volume_id");
    const staging = required(request.stagingTargetPath, "staging_target_path");
    const capability = parseCapability(request.volumeCapability);
    const username = request.secrets?.username;
    const password = request.secrets?.password;
    if (!username || password === undefined) {
      throw new CsiError(
        Code.INVALID_ARGUMENT,
        "secrets username and password are required (the PV's nodeStageSecretRef)",
      );
    }
    return this.#locks.with(volumeId, async () => {
      const mounts = await this.#daemonMounts();
      const table = await this.#fs.mounts();
      const readOnly = isReaderOnly(capability.accessMode);
      const here = await this.#stagedAt(staging, table, mounts);
      if (here) {
        this.#checkCompatible(here, volumeId, capability, readOnly, staging);
        return;
      }
      let mount = mounts.find((m) => m.image === volumeId) ?? null;
      let attachedNow = false;
      if (mount) {
        const elsewhere = this.#usesOf(mount.device, table);
        if (elsewhere.length > 0) {
          throw new CsiError(
            Code.FAILED_PRECONDITION,
            `volume ${volumeId} is already in use on this node at ${elsewhere[0].mountPoint}`,
          );
        }
        if (mount.readOnly !== readOnly) {
          throw new CsiError(
            Code.ALREADY_EXISTS,
            `volume ${volumeId} is attached ${mount.readOnly ? "read-only" : "read-write"}`,
          );
        }
      } else {
        this.#log.info("attaching volume", { volume: volumeId, user: username, readOnly });
        mount = await askDaemon(
          `mount image ${volumeId}`,
          () => this.#daemon.mount({ image: volumeId, username, password, readOnly }),
        );
        attachedNow = true;
      }
      try {
        if (capability.kind === "mount") {
          await this.#stageFilesystem(mount.device, staging, capability, readOnly);
        } else {
          const file = `${staging}/${BLOCK_STAGING_FILE}`;
          await createFile(file);
          await this.#fs.bind(mount.device, file, readOnly);
        }
      } catch (error) {
        if (attachedNow) await this.#detach(mount.device, volumeId);
        throw error;
      }
      this.#log.info("volume staged", { volume: volumeId, device: mount.device, path: staging });
    });
  }

  async #stageFilesystem(
    device: string,
    staging: string,
    capability: Extract<Capability, { kind: "mount" }>,
    readOnly: boolean,
  ): Promise<void> {
    const signature = await this.#fs.signature(device);
    if (signature === null) {
      if (readOnly) {
        throw new CsiError(
          Code.FAILED_PRECONDITION,
          `${device} holds no filesystem and the volume is read-only: nothing to mount`,
        );
      }
      this.#log.info("formatting blank device", { device, fsType: capability.fsType });
      await this.#fs.format(device, capability.fsType);
    } else if (signature !== capability.fsType) {
      throw new CsiError(
        Code.FAILED_PRECONDITION,
        `${device} holds ${signature}, not ${capability.fsType}; a device with data is never formatted`,
      );
    }
    const options = readOnly ? ["ro", ...capability.mountFlags] : capability.mountFlags;
    await this.#fs.mount(device, staging, capability.fsType, options);
  }

  #checkCompatible(
    here: Holding,
    volumeId: string,
    capability: Capability,
    readOnly: boolean,
    path: string,
  ): void {
    if (here.mount === null || here.mount.image !== volumeId) {
      throw new CsiError(Code.ALREADY_EXISTS, `${path} already holds another volume`);
    }
    if (here.kind !== capability.kind) {
      throw new CsiError(Code.ALREADY_EXISTS, `volume ${volumeId} is staged as ${here.kind}`);
    }
    if (capability.kind === "mount" && here.entry.fsType !== capability.fsType) {
      throw new CsiError(
        Code.ALREADY_EXISTS,
        `volume ${volumeId} is staged as ${here.entry.fsType}, not ${capability.fsType}`,
      );
    }
    if (isReadOnly(here.entry) !== readOnly) {
      throw new CsiError(
        Code.ALREADY_EXISTS,
        `volume ${volumeId} is staged ${isReadOnly(here.entry) ? "read-only" : "read-write"}`,
      );
    }
  }

  publish(request: NodePublishRequest): Promise<void> {
    const volumeId = required(request.volumeId, "volume_id");
    const target = required(request.targetPath, "target_path");
    const capability = parseCapability(request.volumeCapability);
    const staging = request.stagingTargetPath;
    if (!staging) {
      throw new CsiError(Code.FAILED_PRECONDITION, `volume ${volumeId} must be staged first`);
    }
    const readOnly = request.readonly === true || isReaderOnly(capability.accessMode);
    return this.#locks.with(volumeId, async () => {
      const mounts = await this.#daemonMounts();
      const table = await this.#fs.mounts();
      const staged = await this.#stagedAt(staging, table, mounts);
      if (!staged || staged.mount?.image !== volumeId || staged.kind !== capability.kind) {
        throw new CsiError(
          Code.FAILED_PRECONDITION,
          `volume ${volumeId} is not staged as ${capability.kind} at ${staging}`,
        );
      }
      const device = staged.mount.device;
      const existing = await this.#holding(target, table, mounts);
      if (existing) {
        if (existing.mount?.device !== device || isReadOnly(existing.entry) !== readOnly) {
          throw new CsiError(
            Code.ALREADY_EXISTS,
            `${target} already holds ${
              existing.mount?.device === device
                ? "this volume with other options"
                : "another volume"
            }`,
          );
        }
        return;
      }
      if (capability.kind === "mount") {
        await Deno.mkdir(target, { recursive: true });
        await this.#fs.bind(staging, target, readOnly);
      } else {
        await Deno.mkdir(dirname(target), { recursive: true });
        await createFile(target);
        await this.#fs.bind(device, target, readOnly);
      }
      this.#log.info("volume published", { volume: volumeId, path: target, readOnly });
    });
  }

  unpublish(request: NodeUnpublishRequest): Promise<void> {
    const volumeId = required(request.volumeId, "volume_id");
    const target = required(request.targetPath, "target_path");
    return this.#locks.with(volumeId, async () => {
      const table = await this.#fs.mounts();
      if (mountAt(table, target)) {
        // Pods must be able to go even while the daemon restarts: check only if it answers.
        const mounts = await this.#daemonMounts().catch(() => null);
        const here = mounts && await this.#holding(target, table, mounts);
        if (here?.mount && here.mount.image !== volumeId) {
          throw new CsiError(Code.NOT_FOUND, `${target} holds another volume, not ${volumeId}`);
        }
        await this.#fs.unmount(target);
      }
      await removeTarget(target);
      this.#log.info("volume unpublished", { volume: volumeId, path: target });
    });
  }

  unstage(request: NodeUnstageRequest): Promise<void> {
    const volumeId = required(request.volumeId, "volume_id");
    const staging = required(request.stagingTargetPath, "staging_target_path");
    return this.#locks.with(volumeId, async () => {
      const mounts = await this.#daemonMounts();
      const table = await this.#fs.mounts();
      const staged = await this.#stagedAt(staging, table, mounts);
      if (staged?.mount && staged.mount.image !== volumeId) {
        throw new CsiError(Code.NOT_FOUND, `${staging} holds another volume, not ${volumeId}`);
      }
      const mount = staged?.mount ?? mounts.find((m) => m.image === volumeId) ?? null;
      if (mount) {
        const uses = this.#usesOf(mount.device, table)
          .filter((entry) => entry !== staged?.entry);
        if (uses.length > 0) {
          throw new CsiError(
            Code.FAILED_PRECONDITION,
            `volume ${volumeId} is still published at ${uses[0].mountPoint}`,
          );
        }
      }
      if (staged) await this.#fs.unmount(staged.entry.mountPoint);
      await removeTarget(`${staging}/${BLOCK_STAGING_FILE}`);
      if (mount) await this.#detach(mount.device, volumeId);
      this.#log.info("volume unstaged", { volume: volumeId, path: staging });
    });
  }

  async volumeStats(request: NodeVolumeStatsRequest): Promise<VolumeStats> {
    const volumeId = required(request.volumeId, "volume_id");
    const path = required(request.volumePath, "volume_path");
    const table = await this.#fs.mounts();
    if (!mountAt(table, path)) {
      throw new CsiError(Code.NOT_FOUND, `volume ${volumeId} is not at ${path}`);
    }
    let mounts: DaemonMount[] | null = null;
    let unreachable = "";
    try {
      mounts = await this.#daemonMounts();
    } catch (error) {
      unreachable = error instanceof Error ? error.message : String(error);
    }
    const here = await this.#holding(path, table, mounts ?? []);
    if (!here || (here.mount && here.mount.image !== volumeId)) {
      throw new CsiError(Code.NOT_FOUND, `volume ${volumeId} is not at ${path}`);
    }
    const condition = here.mount
      ? isHealthy(here.mount)
        ? { abnormal: false, message: `served by ivbsnetd on ${here.mount.device}` }
        : {
          abnormal: true,
          message: here.mount.reason ?? `${here.mount.device} is ${here.mount.state}`,
        }
      : { abnormal: true, message: unreachable || "ivbsnetd does not serve this volume's device" };
    if (here.kind === "block") {
      const total = here.mount?.sizeBytes;
      return {
        usage: total === undefined ? [] : [{ unit: "BYTES", total }],
        volumeCondition: condition,
      };
    }
    const usage = await this.#fs.usage(path);
    return {
      usage: [
        {
          unit: "BYTES",
          total: usage.bytesTotal,
          available: usage.bytesAvailable,
          used: usage.bytesUsed,
        },
        {
          unit: "INODES",
          total: usage.inodesTotal,
          available: usage.inodesFree,
          used: usage.inodesUsed,
        },
      ],
      volumeCondition: condition,
    };
  }

  #daemonMounts(): Promise<DaemonMount[]> {
    return askDaemon("list ivbsnetd's mounts", () => this.#daemon.mounts());
  }

  /** What the staging directory holds: a filesystem on it, or a device on its block file. */
  async #stagedAt(
    staging: string,
    table: MountEntry[],
    mounts: DaemonMount[],
  ): Promise<Holding | null> {
    return await this.#holding(staging, table, mounts) ??
      await this.#holding(`${staging}/${BLOCK_STAGING_FILE}`, table, mounts);
  }

  /** What is mounted at `path` and which daemon mount's device that is. */
  async #holding(
    path: string,
    table: MountEntry[],
    mounts: DaemonMount[],
  ): Promise<Holding | null> {
    const entry = mountAt(table, path);
    if (!entry) return null;
    const number = await this.#fs.host.deviceNumber(path);
    if (number !== null) {
      // A device node bound onto a file: compare device numbers, not names.
      for (const mount of mounts) {
        if (await this.#fs.host.deviceNumber(mount.device) === number) {
          return { kind: "block", entry, mount };
        }
      }
      return { kind: "block", entry, mount: null };
    }
    return { kind: "mount", entry, mount: mounts.find((m) => m.device === entry.source) ?? null };
  }

  /** Mounts of `device`: filesystems on it and binds of its node (devtmpfs root "/nbdN"). */
  #usesOf(device: string, table: MountEntry[]): MountEntry[] {
    const node = device.slice(device.lastIndexOf("/"));
    return table.filter((entry) => entry.source === device || entry.root === node);
  }

  async #detach(device: string, volumeId: string): Promise<void> {
    try {
      await this.#daemon.unmount(device);
      this.#log.info("volume detached", { volume: volumeId, device });
    } catch (error) {
      if (!isGone(error)) throw daemonFailure(error, `detach ${device}`);
    }
  }
}

/** Creates an empty file (a bind-mount target) unless one is there. */
async function createFile(path: string): Promise<void> {
  const file = await Deno.open(path, { create: true, write: true });
  file.close();
}

/** Removes a target the plugin created (empty directory or file); gone already is fine. */
async function removeTarget(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return;
    throw new CsiError(
      Code.FAILED_PRECONDITION,
      `${path} is not a mount point and cannot be removed: ${(error as Error).message}`,
    );
  }
}
