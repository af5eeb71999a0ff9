/**
 * ivbsnetd: one program, many subcommands. This module only dispatches from
 * the one table of them (src/commands/registry.ts): each command has one
 * definition (name, summary, usage, flags) that gives it `--help`, exit code
 * 2 on usage errors and, where it has `--json`, errors as JSON; its code is
 * loaded on demand.
 * @module
 */

import { findSubcommand, programHelp } from "./src/commands/registry.ts";

export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  // `ivbsnetd help mount` is `ivbsnetd mount --help`.
  const about = name === "help" && rest.length === 1 ? findSubcommand(rest[0]) : null;
  if (about) return await about(["--help"]);
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    console.log(programHelp());
    return name === undefined ? 2 : 0;
  }
  const run = findSubcommand(name === "--version" || name === "-V" ? "version" : name);
  if (run) return await run(rest);
  console.error(`ivbsnetd: unknown command "${name}"\n\n${programHelp()}`);
  return 2;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
