/**
 * One CSI call per volume at a time. The spec lets a plugin answer ABORTED
 * when a call for the same volume is still in flight (the CO retries), which
 * keeps two stages of one volume from both attaching it.
 * @module
 */
import { Code, CsiError } from "./status.ts";

export class VolumeLocks {
  readonly #busy = new Set<string>();

  async with<T>(volumeId: string, work: () => Promise<T>): Promise<T> {
    if (this.#busy.has(volumeId)) {
      throw new CsiError(Code.ABORTED, `an operation on volume ${volumeId} is in progress`);
    }
    this.#busy.add(volumeId);
    try {
      return await work();
    } finally {
      this.#busy.delete(volumeId);
    }
  }
}
