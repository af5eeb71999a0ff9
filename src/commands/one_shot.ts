/**
 * The client commands run from the shell (`ivbsnetd mount|unmount|list|…`, the
 * definitions are src/cli/command_table.ts): flags and arguments checked
 * against the definition, `--help` from it, and one error path. Exit codes: 0
 * done, 1 the server refused or failed the operation, 2 usage error, 3 the
 * server is not reachable. With `--json`, output and errors are JSON on stdout
 * (`{"error", "code"}`), so a script reads one stream.
 * @module
 */
import { parseFlagsAndPositionals, UsageError } from "../args.ts";
import { ApiClient, ApiError, DEFAULT_SERVER, ServerUnreachableError } from "../cli/api_client.ts";
import {
  CancelledError,
  CLIENT_COMMANDS,
  type ClientCommand,
  findCommand,
  flagLines,
  flagOwners,
  type FlagSpec,
  parseOptions,
} from "../cli/command_table.ts";
import type { Output } from "../cli/client_actions.ts";
import { ByteSource, readRawSecret } from "../cli/prompt.ts";
import { EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE } from "./exit_codes.ts";

/** The flags every command that talks to the daemon takes. */
const SERVER_FLAGS: Record<string, FlagSpec> = {
  server: {
    type: "string",
    value: "URL",
    help: `daemon address (default $IVBSNETD_SERVER or ${DEFAULT_SERVER})`,
  },
  token: { type: "string", value: "TOKEN", help: "bearer token (default $IVBSNETD_TOKEN)" },
};

/** The flags every command takes. */
const COMMON_FLAGS: Record<string, FlagSpec> = {
  json: { type: "boolean", help: 'JSON on stdout, errors too ({"error", "code"})' },
  help: { type: "boolean", short: "h", help: "this help" },
};

/** The client commands, for main.ts's table (it may import only src/commands/). */
export function clientCommands(): readonly ClientCommand[] {
  return CLIENT_COMMANDS;
}

function flagsOf(command: ClientCommand): Record<string, FlagSpec> {
  return { ...(command.local ? {} : SERVER_FLAGS), ...command.flags, ...COMMON_FLAGS };
}

function usageLine(word: string, command: ClientCommand): string {
  return `usage: ivbsnetd ${word} [options]${command.usage ? ` ${command.usage}` : ""}`;
}

export function helpText(word: string): string {
  const command = findCommand(word)?.command;
  if (!command) throw new UsageError(`unknown command "${word}"`);
  const aliases = Object.keys(command.aliases ?? {});
  return [
    usageLine(word, command),
    "",
    command.description,
    ...(aliases.length > 0 ? ["", `Also: ${aliases.join(", ")} (netdclient words).`] : []),
    "",
    "options:",
    ...flagLines(flagsOf(command)),
    "",
    "exit codes: 0 done, 1 the operation failed (message on stderr), 2 usage error,",
    "            3 the server is not reachable",
  ].join("\n");
}

export interface OneShotIo {
  out: Output;
  err: Output;
  env(name: string): string | undefined;
  /** First line of stdin (for --password-stdin). */
  readStdinLine(): Promise<string | null>;
  /** A password typed without echo; null when stdin is not a terminal or input was cancelled. */
  askSecret(prompt: string): Promise<string | null>;
  /** Stops `events --follow` (tests); the process otherwise ends it with Ctrl-C. */
  signal?: AbortSignal;
}

export function processIo(): OneShotIo {
  const env = (name: string) => {
    try {
      return Deno.env.get(name);
    } catch {
      return undefined;
    }
  };
  const withSource = async <T>(use: (source: ByteSource) => Promise<T>): Promise<T> => {
    const source = new ByteSource(Deno.stdin.readable);
    try {
      return await use(source);
    } finally {
      source.release();
    }
  };
  return {
    out: { print: (text) => console.log(text) },
    err: { print: (text) => console.error(text) },
    env,
    readStdinLine: () => withSource((source) => source.line()),
    askSecret: async (prompt) => {
      if (!Deno.stdin.isTerminal()) return null;
      await Deno.stderr.write(new TextEncoder().encode(prompt));
      Deno.stdin.setRaw(true);
      try {
        return await withSource(readRawSecret);
      } finally {
        Deno.stdin.setRaw(false);
        await Deno.stderr.write(new TextEncoder().encode("\n"));
      }
    },
  };
}

/** Runs one command (by name or alias); resolves with the exit code. */
export async function runOneShot(
  word: string,
  args: string[],
  io: OneShotIo = processIo(),
): Promise<number> {
  const found = findCommand(word);
  if (!found) {
    io.err.print(`ivbsnetd: unknown command "${word}"`);
    return EXIT_USAGE;
  }
  const { command, implied } = found;
  const json = args.includes("--json");
  const fail = (exit: number, message: string, fields: Record<string, unknown>) => {
    if (json) io.out.print(JSON.stringify({ error: message, ...fields }));
    else io.err.print(`ivbsnetd ${word}: ${message}`);
    return exit;
  };
  try {
    const { values, positionals } = parse(command, [...implied, ...args]);
    if (values.help) {
      io.out.print(helpText(word));
      return EXIT_OK;
    }
    const [min, max] = command.args;
    if (positionals.length < min || positionals.length > max) {
      throw new UsageError(`expected ${command.usage || "no arguments"}`);
    }
    const client = makeClient(
      stringFlag(values.server) ?? io.env("IVBSNETD_SERVER"),
      stringFlag(values.token) ?? io.env("IVBSNETD_TOKEN"),
    );
    await command.run({
      client,
      out: io.out,
      json,
      flags: values,
      args: positionals,
      password: (given, flags) => findPassword(given, flags["password-stdin"] === true, io),
      signal: io.signal,
    });
    return EXIT_OK;
  } catch (error) {
    if (error instanceof UsageError) {
      const usage = usageLine(word, command);
      if (json) return fail(EXIT_USAGE, error.message, { code: error.code, usage });
      io.err.print(`ivbsnetd ${word}: ${error.message}\n${usage}`);
      return EXIT_USAGE;
    }
    if (error instanceof ServerUnreachableError) {
      return fail(EXIT_UNREACHABLE, error.message, { code: error.code });
    }
    if (error instanceof ApiError) {
      const hint = error.status === 401 ? " (pass --token or set IVBSNETD_TOKEN)" : "";
      const reason = error.reason === undefined ? "" : ` [${error.reason}]`;
      if (json) {
        return fail(EXIT_FAILED, error.message, {
          code: error.reason ?? error.code,
          status: error.status,
        });
      }
      return fail(EXIT_FAILED, `${error.message}${reason}${hint}`, {});
    }
    if (error instanceof CancelledError) {
      return fail(EXIT_FAILED, error.message, { code: error.code });
    }
    throw error;
  }
}

/** The line against the command's flags; an option of another command says whose it is. */
function parse(command: ClientCommand, args: string[]) {
  try {
    return parseFlagsAndPositionals(args, parseOptions(flagsOf(command)));
  } catch (error) {
    const flag = error instanceof UsageError && /^Unknown option '--([^']+)'/.exec(error.message);
    const owners = flag ? flagOwners(flag[1]) : null;
    throw owners ? new UsageError(owners) : error;
  }
}

function stringFlag(value: string | boolean | undefined): string | undefined {
  return typeof value === "string" ? value : undefined;
}

function makeClient(server: string | undefined, token: string | undefined): ApiClient {
  try {
    return new ApiClient({ server: server ?? DEFAULT_SERVER, token });
  } catch (error) {
    throw new UsageError(`--server: ${(error as Error).message}`);
  }
}

async function findPassword(
  given: string | undefined,
  fromStdin: boolean,
  io: OneShotIo,
): Promise<string> {
  if (given !== undefined) {
    if (fromStdin) throw new UsageError("give PASSWORD or --password-stdin, not both");
    return given;
  }
  if (fromStdin) {
    const line = await io.readStdinLine();
    if (line === null) throw new UsageError("--password-stdin: stdin is empty");
    return line;
  }
  const env = io.env("IVBSNETD_PASSWORD");
  if (env !== undefined) return env;
  const typed = await io.askSecret("Password: ");
  if (typed === null) {
    throw new UsageError(
      "no password: give PASSWORD, --password-stdin or IVBSNETD_PASSWORD (stdin is not a terminal)",
    );
  }
  return typed;
}
