/**
 * The controller's record of which node has which volume, in one small JSON
 * file written atomically (temporary file, fsync, rename) with mode 0600. It
 * is the only state the plugin keeps: Kubernetes' attach/detach controller
 * asks for a publish again after a restart, and the file lets the answer
 * still refuse a second node for a single-node volume.
 * @module
 */
import { ACCESS_MODES, type AccessMode } from "./capability.ts";

export interface Publication {
  nodeId: string;
  accessMode: AccessMode;
  readOnly: boolean;
}

/** volume id → the nodes it is published on. */
export type Publications = Record<string, Publication[]>;

const FORMAT = 1;

/** A state file that does not parse as ours: never silently replaced. */
export class StateFileError extends Error {
  constructor(path: string, why: string) {
    super(`controller state ${path}: ${why}`);
    this.name = "StateFileError";
  }
}

function isPublication(value: unknown): value is Publication {
  if (typeof value !== "object" || value === null) return false;
  const p = value as Record<string, unknown>;
  return typeof p.nodeId === "string" && p.nodeId !== "" &&
    (ACCESS_MODES as readonly unknown[]).includes(p.accessMode) &&
    typeof p.readOnly === "boolean";
}

export class ControllerState {
  constructor(readonly path: string) {}

  async read(): Promise<Publications> {
    let text: string;
    try {
      text = await Deno.readTextFile(this.path);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return {};
      throw error;
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new StateFileError(this.path, "not JSON");
    }
    const file = value as { format?: unknown; volumes?: unknown };
    if (file?.format !== FORMAT || typeof file.volumes !== "object" || file.volumes === null) {
      throw new StateFileError(this.path, `not format ${FORMAT}`);
    }
    const volumes: Publications = {};
    for (const [volumeId, list] of Object.entries(file.volumes)) {
      if (!Array.isArray(list) || !list.every(isPublication)) {
        throw new StateFileError(this.path, `bad entry for volume ${JSON.stringify(volumeId)}`);
      }
      volumes[volumeId] = list;
    }
    return volumes;
  }

  async write(volumes: Publications): Promise<void> {
    const text = JSON.stringify({ format: FORMAT, volumes }, null, 2) + "\n";
    const temporary = `${this.path}.${Deno.pid}.tmp`;
    const file = await Deno.open(temporary, {
      write: true,
      create: true,
      truncate: true,
      mode: 0o600,
    });
    try {
      const bytes = new TextEncoder().encode(text);
      for (let at = 0; at < bytes.length;) at += await file.write(bytes.subarray(at));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(temporary, this.path);
  }
}
