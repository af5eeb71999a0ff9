/**
 * A fake host for the CSI node: mount, umount, blkid, mkfs, stat -f and the
 * mount table, in memory, over real directories and files (the plugin creates
 * and removes targets with Deno's file API). Records every command so tests
 * can assert what was (never) run.
 */
import type { CommandResult, Host } from "../src/csi/host.ts";
import { escapeMountPath } from "../src/csi/mountinfo.ts";
import { pathExists } from "../src/path_exists.ts";

interface FakeMount {
  id: number;
  source: string;
  fsType: string;
  root: string;
  mountPoint: string;
  readOnly: boolean;
  options: string[];
}

const NBD_MAJOR = 43;

function ok(stdout = ""): CommandResult {
  return { code: 0, stdout, stderr: "" };
}

function fail(code: number, stderr: string): CommandResult {
  return { code, stdout: "", stderr };
}

export class FakeHost implements Host {
  readonly calls: string[][] = [];
  /** Device path → the signature blkid finds on it (absent = blank). */
  readonly signatures = new Map<string, string>();
  readonly mountsList: FakeMount[] = [];
  /** Commands that fail next, by program name, with this stderr. */
  readonly failNext = new Map<string, string>();
  #nextId = 100;

  static deviceNumber(device: string): number | null {
    const match = /^\/dev\/nbd(\d+)$/.exec(device);
    return match ? NBD_MAJOR * 256 + Number(match[1]) : null;
  }

  run(command: string, args: readonly string[]): Promise<CommandResult> {
    this.calls.push([command, ...args]);
    const failure = this.failNext.get(command);
    if (failure !== undefined) {
      this.failNext.delete(command);
      return Promise.resolve(fail(1, failure));
    }
    return this.#run(command, [...args]);
  }

  async #run(command: string, args: string[]): Promise<CommandResult> {
    switch (command) {
      case "blkid": {
        const device = args.at(-1)!;
        const type = this.signatures.get(device);
        return type ? ok(`DEVNAME=${device}\nTYPE=${type}\n`) : fail(2, "");
      }
      case "mkfs.ext4":
      case "mkfs.xfs": {
        const device = args.at(-1)!;
        if (command === "mkfs.xfs" && this.signatures.has(device) && !args.includes("-f")) {
          return fail(1, `mkfs.xfs: ${device} appears to contain an existing filesystem`);
        }
        this.signatures.set(device, command.slice("mkfs.".length));
        return ok();
      }
      case "mount":
        return await this.#mount(args);
      case "umount": {
        const index = this.#newestAt(args[0]);
        if (index < 0) return fail(32, `umount: ${args[0]}: not mounted.`);
        this.mountsList.splice(index, 1);
        return ok();
      }
      case "stat": {
        const path = args.at(-1)!;
        return this.#newestAt(path) < 0
          ? fail(1, "no such mount")
          : ok("4096 2560 2048 1792 640 600\n");
      }
    }
    return fail(127, `${command}: command not found`);
  }

  async #mount(args: string[]): Promise<CommandResult> {
    if (args[0] === "-o" && args[1] === "remount,bind,ro") {
      const index = this.#newestAt(args[2]);
      if (index < 0) return fail(32, `mount: ${args[2]}: not mounted`);
      this.mountsList[index].readOnly = true;
      return ok();
    }
    const bind = args[0] === "--bind";
    const [source, target] = args.slice(-2);
    if (!await pathExists(target)) return fail(32, `mount: ${target}: mount point does not exist.`);
    if (bind) {
      if (FakeHost.deviceNumber(source) !== null) {
        this.#add({
          source: "udev",
          fsType: "devtmpfs",
          root: source.slice(4),
          mountPoint: target,
        });
        return ok();
      }
      const from = this.mountsList[this.#newestAt(source)];
      if (!from) return fail(32, `mount: ${source}: not mounted (fake: binds only mounts)`);
      this.#add({ source: from.source, fsType: from.fsType, root: from.root, mountPoint: target });
      return ok();
    }
    const fsType = args[1];
    const options = args[2] === "-o" ? args[3].split(",") : [];
    if (this.signatures.get(source) !== fsType) {
      return fail(32, `mount: ${target}: wrong fs type, bad option, bad superblock on ${source}`);
    }
    this.#add({
      source,
      fsType,
      root: "/",
      mountPoint: target,
      readOnly: options.includes("ro"),
      options: options.filter((o) => o !== "ro"),
    });
    return ok();
  }

  #add(entry: Omit<FakeMount, "id" | "readOnly" | "options"> & Partial<FakeMount>) {
    this.mountsList.push({ id: this.#nextId++, readOnly: false, options: [], ...entry });
  }

  #newestAt(path: string): number {
    for (let i = this.mountsList.length - 1; i >= 0; i--) {
      if (this.mountsList[i].mountPoint === path) return i;
    }
    return -1;
  }

  readMountInfo(): Promise<string> {
    const lines = this.mountsList.map((m) =>
      [
        m.id,
        1,
        "43:0",
        escapeMountPath(m.root),
        escapeMountPath(m.mountPoint),
        [m.readOnly ? "ro" : "rw", ...m.options, "relatime"].join(","),
        "shared:1",
        "-",
        m.fsType,
        m.source,
        "rw",
      ].join(" ")
    );
    return Promise.resolve(lines.join("\n") + "\n");
  }

  deviceNumber(path: string): Promise<number | null> {
    const direct = FakeHost.deviceNumber(path);
    if (direct !== null) return Promise.resolve(direct);
    const index = this.#newestAt(path);
    const mount = index < 0 ? undefined : this.mountsList[index];
    return Promise.resolve(
      mount?.fsType === "devtmpfs" ? FakeHost.deviceNumber(`/dev${mount.root}`) : null,
    );
  }

  /** Commands run with this program. */
  ran(command: string): string[][] {
    return this.calls.filter((call) => call[0] === command);
  }

  mountedAt(path: string): FakeMount | undefined {
    return this.mountsList[this.#newestAt(path)];
  }
}

export { pathExists };
