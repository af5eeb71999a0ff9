/**
 * ivbsnetd: one program, many subcommands. This module only dispatches: each
 * command lives in src/commands/ (one file each, exporting `run(args)`) and is
 * loaded on demand so `ivbsnetd client` does not pay for the daemon's FFI or
 * HTTP stack.
 * @module
 */

import type { OneShotName } from "./src/commands/one_shot.ts";

export interface Subcommand {
  summary: string;
  run(args: string[]): Promise<number>;
}

/** Subcommands by name; each module exports `run(args): Promise<exit code>`. */
const COMMANDS: Record<string, Subcommand> = {
  serve: {
    summary: "run the daemon: HTTP API and status page, mounts from --config FILE",
    run: async (args) => (await import("./src/commands/serve.ts")).run(args),
  },
  demo: {
    summary: "try it all on this machine: IVBS test server + daemon (+ a mount where possible)",
    run: async (args) => (await import("./src/commands/demo.ts")).run(args),
  },
  client: {
    summary: "netdclient: interactive client of a running daemon",
    run: async (args) => (await import("./src/commands/client.ts")).run(args),
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
  csi: {
    summary: "Kubernetes CSI plugin (node, or --controller) in front of a running daemon",
    run: async (args) => (await import("./src/commands/csi.ts")).run(args),
  },
  "ivbs-server": {
    summary: "run the IVBS test server (several proxies over one image store)",
    run: async (args) => (await import("./src/commands/ivbs_server.ts")).run(args),
  },
  attach: {
    summary: "attach one image (or a memory disk) to /dev/nbdX in the foreground, for tests",
    run: async (args) => (await import("./src/commands/attach.ts")).run(args),
  },
  export: {
    summary:
      "serve IVBS images (or memory disks) as NBD exports in the foreground, without a daemon",
    run: async (args) => (await import("./src/commands/export.ts")).run(args),
  },
};

/** A client command for scripts (exit codes in `ivbsnetd NAME --help`). */
function oneShot(name: OneShotName, summary: string): Subcommand {
  return {
    summary,
    run: async (args) => (await import("./src/commands/one_shot.ts")).runOneShot(name, args),
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
