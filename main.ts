/**
 * ivbsnetd: one program, many subcommands. This is the only module that wires
 * all layers together; each command lives in its layer and is loaded on demand
 * so `ivbsnetd client` does not pay for the daemon's FFI or HTTP stack.
 * @module
 */

import type { OneShotName } from "./src/cli/one_shot.ts";
import type { ServeDependencies } from "./src/daemon/serve_command.ts";

export interface Command {
  summary: string;
  run(args: string[]): Promise<number>;
}

/** Subcommands by name; each module exports `run(args): Promise<exit code>`. */
const COMMANDS: Record<string, Command> = {
  serve: {
    summary: "run the daemon: HTTP API and status page, mounts from --config FILE",
    run: async (args) =>
      (await import("./src/daemon/serve_command.ts")).runServe(args, await systemDriver()),
  },
  demo: {
    summary: "try it all on this machine: IVBS test server + daemon (+ a mount where possible)",
    run: async (args) =>
      (await import("./src/daemon/demo_command.ts")).runDemo(args, await systemDriver()),
  },
  client: {
    summary: "netdclient: interactive client of a running daemon",
    run: async (args) => (await import("./src/cli/netdclient.ts")).run(args),
  },
  mount: oneShot("mount", "mount an image on /dev/nbdX through the daemon"),
  unmount: oneShot("unmount", "detach a device through the daemon"),
  list: oneShot("list", "list mounted images (--all: every NBD device)"),
  check: oneShot("check", "check that the daemon answers"),
  shutdown: oneShot("shutdown", "stop the daemon (detaches every device)"),
  "export-add": oneShot(
    "export-add",
    "serve an image as an NBD export of the running daemon (prints its nbd+unix:// URI)",
  ),
  "export-remove": oneShot("export-remove", "stop an NBD export of the daemon"),
  "export-list": oneShot("export-list", "list the daemon's NBD exports"),
  proxies: oneShot("proxies", "list the IVBS proxies the daemon knows and their health"),
  events: oneShot("events", "print the daemon's recent events (--follow: keep printing)"),
  "ivbs-server": {
    summary: "run the IVBS test server (several proxies over one image store)",
    run: async (args) => (await import("./src/ivbs/server/cli.ts")).run(args),
  },
  attach: {
    summary: "attach one image (or a memory disk) to /dev/nbdX in the foreground, for tests",
    run: async (args) => (await import("./src/attach_command.ts")).run(args),
  },
  export: {
    summary:
      "serve IVBS images (or memory disks) as NBD exports in the foreground, without a daemon",
    run: async (args) => (await import("./src/export_command.ts")).run(args),
  },
};

/** A client command for scripts (exit codes in `ivbsnetd NAME --help`). */
function oneShot(name: OneShotName, summary: string): Command {
  return {
    summary,
    run: async (args) => (await import("./src/cli/one_shot.ts")).runOneShot(name, args),
  };
}

/** The real mount driver of serve and demo: IVBS sessions over the kernel's NBD devices. */
async function systemDriver(): Promise<ServeDependencies> {
  const [{ createSystemDriver }, kernel, devices, { logger }] = await Promise.all([
    import("./src/daemon/system_driver.ts"),
    import("./src/nbd/kernel.ts"),
    import("./src/nbd/devices.ts"),
    import("./src/log.ts"),
  ]);
  const api = { attachDevice: kernel.attachDevice, listNbdDevices: devices.listNbdDevices };
  return {
    createDriver: async (config) => {
      const netlink = config.nbd.attach === "ioctl" ? null : await openNetlink();
      return createSystemDriver(config, { ...api, netlink }, logger("daemon"));
    },
  };
}

/** The kernel's nbd netlink interface, or null where it has none (then devices use ioctl). */
async function openNetlink(): Promise<
  import("./src/daemon/system_driver.ts").NetlinkKernelApi | null
> {
  const [{ NbdNetlink }, attach, { logger }] = await Promise.all([
    import("./src/nbd/netlink.ts"),
    import("./src/nbd/netlink_attach.ts"),
    import("./src/log.ts"),
  ]);
  let netlink;
  try {
    netlink = await NbdNetlink.open();
  } catch (error) {
    logger("daemon").warn("cannot open the nbd netlink interface; using ioctl", { error });
    return null;
  }
  if (netlink === null) return null;
  return {
    attach: (backend, options) => attach.attachNetlink(netlink, backend, options),
    reattach: (index, backend, options) => attach.reattachNetlink(netlink, index, backend, options),
    readBackendId: attach.readBackendId,
    newBackendId: attach.newBackendId,
    disconnect: (index) => netlink.disconnect(index),
  };
}

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) =>
    `  ${name.padEnd(width)}  ${c.summary}`
  );
  return [
    "ivbsnetd: IVBS images as Linux block devices (/dev/nbdX) and NBD exports",
    "",
    "usage: ivbsnetd <command> [options]   (ivbsnetd <command> --help for its options)",
    "",
    "commands:",
    ...lines,
  ].join("\n");
}

export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`ivbsnetd: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  return await command.run(rest);
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
