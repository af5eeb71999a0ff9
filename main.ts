/**
 * ivbsnetd: one program, many subcommands. This module only dispatches from
 * one table. The client commands (mount, list, events, reload, version…) are
 * defined once in src/cli/command_table.ts and run by src/commands/one_shot.ts,
 * which gives each `--help`, exit code 2 on usage errors and JSON errors with
 * `--json`; the others live in src/commands/ (one file each, exporting
 * `run(args)`, with their own `--help`) and are loaded on demand so
 * `ivbsnetd client` does not pay for the daemon's FFI or HTTP stack.
 * @module
 */

import { clientCommands, runOneShot } from "./src/commands/one_shot.ts";

export interface Subcommand {
  summary: string;
  run(args: string[]): Promise<number>;
}

/** A command module loaded when it runs. */
function lazy(summary: string, load: () => Promise<{ run(args: string[]): Promise<number> }>) {
  return { summary, run: async (args: string[]) => (await load()).run(args) };
}

/** Every command by name, in the order `ivbsnetd --help` lists them. */
const COMMANDS: Record<string, Subcommand> = {
  serve: lazy(
    "run the daemon: HTTP API and status page, mounts from --config FILE",
    () => import("./src/commands/serve.ts"),
  ),
  demo: lazy(
    "try it all on this machine: IVBS test server + daemon (+ a mount where possible)",
    () => import("./src/commands/demo.ts"),
  ),
  client: lazy(
    "netdclient: interactive client of a running daemon",
    () => import("./src/commands/client.ts"),
  ),
  ...Object.fromEntries(
    clientCommands().map((c) => [c.name, {
      summary: c.summary,
      run: (args: string[]) => runOneShot(c.name, args),
    }]),
  ),
  csi: lazy(
    "Kubernetes CSI plugin (node, or --controller) in front of a running daemon",
    () => import("./src/commands/csi.ts"),
  ),
  "ivbs-server": lazy(
    "run the IVBS test server (several proxies over one image store)",
    () => import("./src/commands/ivbs_server.ts"),
  ),
  attach: lazy(
    "attach one image (or a memory disk) to /dev/nbdX in the foreground, for tests",
    () => import("./src/commands/attach.ts"),
  ),
  export: lazy(
    "serve IVBS images (or memory disks) as NBD exports in the foreground, without a daemon",
    () => import("./src/commands/export.ts"),
  ),
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) =>
    `  ${name.padEnd(width)}  ${c.summary}`
  );
  return [
    "ivbsnetd: IVBS images as Linux block devices (/dev/nbdX) and NBD exports",
    "",
    "usage: ivbsnetd <command> [options]   (ivbsnetd help <command> for its options)",
    "       ivbsnetd --version",
    "",
    "commands:",
    ...lines,
  ].join("\n");
}

export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  // `ivbsnetd help mount` is `ivbsnetd mount --help`.
  if (name === "help" && rest.length === 1 && COMMANDS[rest[0]]) {
    return await COMMANDS[rest[0]].run(["--help"]);
  }
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "-V") return await runOneShot("version", rest);
  const command = COMMANDS[name];
  if (command) return await command.run(rest);
  // The other words of a client command (export-list, and netdclient's listm, disc…).
  if (clientCommands().some((c) => name in (c.aliases ?? {}))) {
    return await runOneShot(name, rest);
  }
  console.error(`ivbsnetd: unknown command "${name}"\n\n${usage()}`);
  return 2;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
