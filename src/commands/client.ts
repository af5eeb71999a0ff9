/**
 * `ivbsnetd client [--server URL] [--token T]`: the interactive netdclient
 * (its prompt loop is src/cli/netdclient.ts).
 * @module
 */
import type { CommandLine } from "../command_line.ts";
import { runInteractive } from "../cli/netdclient.ts";
import { ReadlineTerminal, stdoutSink } from "../cli/prompt.ts";
import process from "node:process";
import { EXIT_OK } from "./exit_codes.ts";
import type { CLIENT } from "./definitions.ts";
import { daemonClient, processEnv } from "./one_shot.ts";

/** `ivbsnetd client`. */
export async function run({ values }: CommandLine<typeof CLIENT.flags>): Promise<number> {
  const client = daemonClient(
    values.server ?? processEnv("IVBSNETD_SERVER"),
    values.token ?? processEnv("IVBSNETD_TOKEN"),
  );
  const terminal = new ReadlineTerminal({
    input: process.stdin,
    output: stdoutSink(),
    terminal: process.stdin.isTTY === true,
  });
  try {
    await runInteractive(client, terminal);
  } finally {
    terminal.close();
  }
  return EXIT_OK;
}
