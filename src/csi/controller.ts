/**
 * The small CSI Controller: with `attachRequired: true` Kubernetes asks it to
 * publish a volume on a node before any node stages it, and refuses a second
 * node for a ReadWriteOnce volume. This service checks that the image exists
 * (one read-only IVBS login through the daemon, with the PV's
 * controllerPublishSecretRef) and records the node, refusing a second node for
 * a single-node volume even if the CO asks (after a node failure, two nodes
 * with one ext4 image would corrupt it).
 * @module
 */
import type { Logger } from "../log.ts";
import {
  isMultiNode,
  isReaderOnly,
  parseCapability,
  type VolumeCapabilityMessage,
} from "./capability.ts";
import type { ControllerState, Publication } from "./controller_state.ts";
import { askDaemon, type DaemonApi } from "./daemon_api.ts";
import { Code, CsiError, required } from "./status.ts";

export interface ControllerPublishRequest {
  volumeId?: string;
  nodeId?: string;
  volumeCapability?: VolumeCapabilityMessage | null;
  readonly?: boolean;
  secrets?: Record<string, string>;
}

export interface ControllerUnpublishRequest {
  volumeId?: string;
  nodeId?: string;
}

export interface ValidateRequest {
  volumeId?: string;
  volumeCapabilities?: VolumeCapabilityMessage[];
  secrets?: Record<string, string>;
}

export interface ValidateResponse {
  confirmed: { volumeCapabilities: VolumeCapabilityMessage[] } | null;
  message: string;
}

export interface ControllerServiceOptions {
  daemon: DaemonApi;
  state: ControllerState;
  log: Logger;
}

export class ControllerService {
  readonly #daemon: DaemonApi;
  readonly #state: ControllerState;
  readonly #log: Logger;
  /** Read-modify-write of the state file, one at a time. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: ControllerServiceOptions) {
    this.#daemon = options.daemon;
    this.#state = options.state;
    this.#log = options.log;
  }

  #serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.#queue.then(work, work);
    this.#queue = next.catch(() => {});
    return next;
  }

  async #checkImage(volumeId: string, secrets: Record<string, string> | undefined, ref: string) {
    const username = secrets?.username;
    const password = secrets?.password;
    if (!username || password === undefined) {
      throw new CsiError(
        Code.INVALID_ARGUMENT,
        `secrets username and password are required (the PV's ${ref})`,
      );
    }
    await askDaemon(
      `check image ${volumeId}`,
      () => this.#daemon.checkImage({ image: volumeId, username, password }),
    );
  }

  async publish(
    request: ControllerPublishRequest,
  ): Promise<{ publishContext: Record<string, string> }> {
    const volumeId = required(request.volumeId, "volume_id");
    const nodeId = required(request.nodeId, "node_id");
    const capability = parseCapability(request.volumeCapability);
    const readOnly = request.readonly === true || isReaderOnly(capability.accessMode);
    await this.#checkImage(volumeId, request.secrets, "controllerPublishSecretRef");
    const wanted: Publication = { nodeId, accessMode: capability.accessMode, readOnly };
    return await this.#serial(async () => {
      const volumes = await this.#state.read();
      const list = volumes[volumeId] ?? [];
      const same = list.find((p) => p.nodeId === nodeId);
      if (same) {
        if (same.accessMode !== wanted.accessMode || same.readOnly !== wanted.readOnly) {
          throw new CsiError(
            Code.ALREADY_EXISTS,
            `volume ${volumeId} is published on node ${nodeId} as ${same.accessMode}${
              same.readOnly ? " read-only" : ""
            }`,
          );
        }
        return { publishContext: {} };
      }
      const other = list.find((p) =>
        !(isMultiNode(p.accessMode) && isMultiNode(wanted.accessMode))
      );
      if (other) {
        throw new CsiError(
          Code.FAILED_PRECONDITION,
          `volume ${volumeId} is published on node ${other.nodeId} (${other.accessMode})`,
        );
      }
      volumes[volumeId] = [...list, wanted];
      await this.#state.write(volumes);
      this.#log.info("volume published on node", { volume: volumeId, node: nodeId, readOnly });
      return { publishContext: {} };
    });
  }

  /** Forgets the volume on the node (on every node when node_id is empty); gone already is fine. */
  unpublish(request: ControllerUnpublishRequest): Promise<void> {
    const volumeId = required(request.volumeId, "volume_id");
    const nodeId = request.nodeId ?? "";
    return this.#serial(async () => {
      const volumes = await this.#state.read();
      const list = volumes[volumeId];
      if (!list) return;
      const rest = list.filter((p) => nodeId !== "" && p.nodeId !== nodeId);
      if (rest.length === list.length) return;
      if (rest.length > 0) volumes[volumeId] = rest;
      else delete volumes[volumeId];
      await this.#state.write(volumes);
      this.#log.info("volume unpublished from node", { volume: volumeId, node: nodeId || "(all)" });
    });
  }

  async validate(request: ValidateRequest): Promise<ValidateResponse> {
    const volumeId = required(request.volumeId, "volume_id");
    const capabilities = request.volumeCapabilities ?? [];
    if (capabilities.length === 0) {
      throw new CsiError(Code.INVALID_ARGUMENT, "volume_capabilities is required");
    }
    // Without secrets there is no way to ask IVBS; with them, an unknown image is NOT_FOUND.
    if (request.secrets && Object.keys(request.secrets).length > 0) {
      await this.#checkImage(volumeId, request.secrets, "secrets");
    }
    for (const capability of capabilities) {
      try {
        parseCapability(capability);
      } catch (error) {
        if (!(error instanceof CsiError)) throw error;
        return { confirmed: null, message: error.message };
      }
    }
    return { confirmed: { volumeCapabilities: capabilities }, message: "" };
  }
}
