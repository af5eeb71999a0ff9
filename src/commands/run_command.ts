/**
 * Runs a subcommand from its definition (src/command_line.ts), the same way
 * for every command: `--help` prints the help from the definition and exits
 * 0; a usage error (an unknown flag, a missing value, a wrong number of
 * arguments, or a value the command refuses before starting) prints
 * `ivbsnetd NAME: MESSAGE` and the usage lines on stderr and exits 2, or with
 * `--json`, where the command has it, `{"error", "code": "USAGE", "usage"}`
 * on stdout.
 * @module
 */
import { UsageError } from "../args.ts";
import {
  type CommandLine,
  type CommandSpec,
  type FlagSpecs,
  helpText,
  parseCommandLine,
  usageLines,
} from "../command_line.ts";
import type { Output } from "../cli/client_actions.ts";
import { EXIT_OK, EXIT_USAGE } from "./exit_codes.ts";

/** Where a command's help and errors go. */
export interface CommandIo {
  out: Output;
  err: Output;
}

export const CONSOLE_IO: CommandIo = {
  out: { print: (text) => console.log(text) },
  err: { print: (text) => console.error(text) },
};

export interface RunOptions {
  /** The word it was called by (an alias), for its messages; default the name. */
  word?: string;
  io?: CommandIo;
  /** Rewords a usage error (a flag that belongs to another command). */
  explain?: (error: UsageError) => UsageError;
}

/**
 * Parses `args` against `spec` and runs `body` with the line; a UsageError
 * thrown by `body` is reported like one from the parser, so a command checks
 * its values before it starts anything.
 */
export async function runCommand<F extends FlagSpecs>(
  spec: CommandSpec<F>,
  args: readonly string[],
  body: (line: CommandLine<F>) => Promise<number>,
  { word = spec.name, io = CONSOLE_IO, explain = (error) => error }: RunOptions = {},
): Promise<number> {
  const json = "json" in spec.flags && args.includes("--json");
  try {
    const line = parseCommandLine(spec, args);
    if (line.values.help) {
      io.out.print(helpText(spec, word));
      return EXIT_OK;
    }
    return await body(line);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    const { message, code } = explain(error);
    const usage = usageLines(spec, word);
    if (json) io.out.print(JSON.stringify({ error: message, code, usage }));
    else io.err.print(`ivbsnetd ${word}: ${message}\n${usage}`);
    return EXIT_USAGE;
  }
}
