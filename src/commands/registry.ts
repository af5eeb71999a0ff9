/**
 * Every subcommand of ivbsnetd in one table, each with its one definition
 * (src/command_line.ts): the client commands from src/cli/command_table.ts
 * and the others from ./definitions.ts. `ivbsnetd --help` lists this table;
 * every command's `--help` and usage errors come from its definition before
 * its code is loaded, so `ivbsnetd list` does not pay for the daemon's FFI,
 * HTTP or gRPC stack.
 * @module
 */
import type { CommandLine, CommandSpec, FlagSpecs } from "../command_line.ts";
import { CLIENT_COMMANDS, findCommand } from "../cli/command_table.ts";
import { ATTACH, CLIENT, CSI, DEMO, EXPORT, IVBS_SERVER, SERVE } from "./definitions.ts";
import { oneShotSpec, runOneShot } from "./one_shot.ts";
import { runCommand } from "./run_command.ts";

export interface Subcommand {
  spec: CommandSpec;
  /** Runs it with the arguments after its name; resolves with the exit code. */
  run(args: string[]): Promise<number>;
}

/** A command whose module is loaded once its line has parsed. */
function lazy<F extends FlagSpecs>(
  spec: CommandSpec<F>,
  load: () => Promise<{ run(line: CommandLine<F>): Promise<number> }>,
): Subcommand {
  return {
    spec,
    run: (args) => runCommand(spec, args, async (line) => (await load()).run(line)),
  };
}

/** Every command, in the order `ivbsnetd --help` lists them. */
export const SUBCOMMANDS: readonly Subcommand[] = [
  lazy(SERVE, () => import("./serve.ts")),
  lazy(DEMO, () => import("./demo.ts")),
  lazy(CLIENT, () => import("./client.ts")),
  ...CLIENT_COMMANDS.map((command): Subcommand => ({
    spec: oneShotSpec(command),
    run: (args) => runOneShot(command.name, args),
  })),
  lazy(CSI, () => import("./csi.ts")),
  lazy(IVBS_SERVER, () => import("./ivbs_server.ts")),
  lazy(ATTACH, () => import("./attach.ts")),
  lazy(EXPORT, () => import("./export.ts")),
];

/**
 * What a word runs: a command by its name, else another word of a client
 * command (export-list, and netdclient's listm, disc…); null for none.
 */
export function findSubcommand(word: string): ((args: string[]) => Promise<number>) | null {
  const command = SUBCOMMANDS.find((c) => c.spec.name === word);
  if (command) return command.run;
  return findCommand(word) ? (args) => runOneShot(word, args) : null;
}

/** `ivbsnetd --help`: every command with its summary. */
export function programHelp(): string {
  const width = Math.max(...SUBCOMMANDS.map((c) => c.spec.name.length));
  return [
    "ivbsnetd: IVBS images as Linux block devices (/dev/nbdX) and NBD exports",
    "",
    "usage: ivbsnetd <command> [options]   (ivbsnetd help <command> for its options)",
    "       ivbsnetd --version",
    "",
    "commands:",
    ...SUBCOMMANDS.map((c) => `  ${c.spec.name.padEnd(width)}  ${c.spec.summary}`),
  ].join("\n");
}
