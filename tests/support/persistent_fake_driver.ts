/**
 * A fake mount driver whose attachments outlive "the daemon", for the
 * restart and take-over tests.
 * @module
 */
import type { DeviceAttachment, MountBackend, ReattachRequest } from "../../src/daemon/driver.ts";
import { FakeAttachment, type FakeBackend, FakeMountDriver } from "../../src/daemon/fake_driver.ts";

const MIB = 1024 * 1024;

/**
 * Like the netlink driver: the kernel picks the device, attachments can be
 * released (left attached), and a later driver can take them over while the
 * "kernel" (shared between driver instances) still shows their backend id.
 */
export class PersistentFakeDriver extends FakeMountDriver {
  readonly picksDevice = true;
  released = 0;
  reattached: ReattachRequest[] = [];
  #nextId = 0;

  /** `kernel`: device index → backend id, shared by the drivers of successive daemons. */
  constructor(readonly kernel: Map<number, string>, users: Record<string, string> = {}) {
    super({ devices: 4, images: { disk: { size: 8 * MIB } }, users: { alice: "pw", ...users } });
  }

  override async attach(
    device: string,
    backends: readonly MountBackend[],
  ): Promise<DeviceAttachment> {
    let index = 0;
    while (device === "auto" && this.kernel.has(index)) index++;
    if (device !== "auto") index = Number(device.replace("/dev/nbd", ""));
    const backendId = `fake:${++this.#nextId}`;
    this.kernel.set(index, backendId);
    return this.#persistent(await super.attach(`/dev/nbd${index}`, backends), index, backendId);
  }

  reattach(
    request: ReattachRequest,
    backends: readonly MountBackend[],
  ): Promise<DeviceAttachment> {
    this.reattached.push(request);
    if (this.kernel.get(request.index) !== request.backendId) {
      return Promise.reject(Object.assign(new Error("gone"), { code: "NO_DEVICE" }));
    }
    const device = `/dev/nbd${request.index}`;
    const attachment = new FakeAttachment(device, backends as FakeBackend[], () => {});
    this.attached.set(device, attachment);
    return Promise.resolve(this.#persistent(attachment, request.index, request.backendId));
  }

  isStillAttached(index: number, backendId: string): Promise<boolean> {
    return Promise.resolve(this.kernel.get(index) === backendId);
  }

  detachOrphan(index: number): Promise<boolean> {
    if (!this.kernel.get(index)?.startsWith("ivbsnetd:")) return Promise.resolve(false);
    this.kernel.delete(index);
    this.foreign.delete(`/dev/nbd${index}`);
    return Promise.resolve(true);
  }

  #persistent(attachment: DeviceAttachment, index: number, backendId: string): DeviceAttachment {
    const kernel = this.kernel;
    const release = () => {
      this.released++;
      return Promise.resolve();
    };
    return {
      device: attachment.device,
      stats: attachment.stats,
      connections: attachment.connections,
      done: attachment.done,
      detach: async () => {
        kernel.delete(index);
        await attachment.detach();
      },
      persistent: {
        index,
        backendId,
        sizeBytes: 8 * MIB,
        options: { blockSize: 4096, timeoutS: 0, deadConnTimeoutS: 120 },
        connections: attachment.connections.length,
        release,
      },
    };
  }
}
