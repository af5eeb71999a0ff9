/**
 * `ivbsnetd client [--server URL] [--token T]`: the interactive netdclient
 * (its prompt loop is src/cli/netdclient.ts).
 * @module
 */
import { parseFlags, UsageError } from "../args.ts";
import { ApiClient, DEFAULT_SERVER } from "../cli/api_client.ts";
import { HELP, runInteractive } from "../cli/netdclient.ts";
import { ReadlineTerminal, stdoutSink } from "../cli/prompt.ts";
import process from "node:process";
import { EXIT_OK, EXIT_USAGE } from "./exit_codes.ts";

export const CLIENT_HELP = [
  "usage: ivbsnetd client [--server URL] [--token TOKEN]",
  "",
  "Interactive netdclient: type commands at the prompt (help lists them). Line",
  "editing and history (up/down); Ctrl-C cancels the line, twice on an empty line",
  "(or Ctrl-D) leaves.",
  "",
  "options:",
  `  --server URL     daemon address (default $IVBSNETD_SERVER or ${DEFAULT_SERVER})`,
  "  --token TOKEN    bearer token for the commands that change state",
  "                   (default $IVBSNETD_TOKEN)",
  "  -h, --help       this help",
  "",
  HELP,
].join("\n");

/** `ivbsnetd client`. */
export async function run(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseFlags(args, {
      server: { type: "string" },
      token: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    }));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`ivbsnetd client: ${error.message}\n\n${CLIENT_HELP}`);
    return EXIT_USAGE;
  }
  if (values.help) {
    console.log(CLIENT_HELP);
    return EXIT_OK;
  }
  let client: ApiClient;
  try {
    client = new ApiClient({
      server: values.server ?? Deno.env.get("IVBSNETD_SERVER") ?? DEFAULT_SERVER,
      token: values.token ?? Deno.env.get("IVBSNETD_TOKEN"),
    });
  } catch (error) {
    console.error(`ivbsnetd client: --server: ${(error as Error).message}`);
    return EXIT_USAGE;
  }
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
