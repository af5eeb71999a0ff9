/**
 * The client commands run from the shell (`ivbsnetd mount|unmount|list|…`, the
 * definitions are src/cli/command_table.ts): flags and arguments checked
 * against the definition, `--help` from it, and one error path. Exit codes: 0
 * done, 1 the server refused or failed the operation, 2 usage error, 3 the
 * server is not reachable. With `--json`, output and errors are JSON on stdout
 * (`{"error", "code"}`), so a script reads one stream.
 * @module
 */
import { UsageError } from "../args.ts";
import { type CommandSpec, type FlagValues, JSON_FLAG } from "../command_line.ts";
import { errorMessage } from "../error_info.ts";
import { ApiClient, ApiError, DEFAULT_SERVER, ServerUnreachableError } from "../cli/api_client.ts";
import {
  CancelledError,
  type ClientCommand,
  findCommand,
  flagOwners,
} from "../cli/command_table.ts";
import type { Output } from "../cli/client_actions.ts";
import { ByteSource, readRawSecret } from "../cli/prompt.ts";
import { SERVER_FLAGS } from "./definitions.ts";
import { EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE } from "./exit_codes.ts";
import { runCommand } from "./run_command.ts";

const EXIT_CODES =
  "exit codes: 0 done, 1 the operation failed (message on stderr), 2 usage error,\n" +
  "            3 the server is not reachable";

/**
 * A client command's whole command line: its own flags, how to reach the
 * daemon (not for local commands) and --json; its netdclient words in --help.
 */
export function oneShotSpec(command: ClientCommand): CommandSpec {
  const aliases = Object.keys(command.aliases ?? {});
  return {
    ...command,
    description: command.description +
      (aliases.length > 0 ? `\n\nAlso: ${aliases.join(", ")} (netdclient words).` : ""),
    flags: { ...(command.local ? {} : SERVER_FLAGS), ...command.flags, ...JSON_FLAG },
    notes: EXIT_CODES,
  };
}

/** An environment variable; undefined where it is unset or may not be read. */
export function processEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/** The daemon at `server` (default the local one); a bad URL is a usage error. */
export function daemonClient(server: string | undefined, token: string | undefined): ApiClient {
  try {
    return new ApiClient({ server: server ?? DEFAULT_SERVER, token });
  } catch (error) {
    throw new UsageError(`--server: ${errorMessage(error)}`);
  }
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
    env: processEnv,
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
  return await runCommand(
    oneShotSpec(command),
    [...implied, ...args],
    ({ values, positionals }) => runClient(word, command, values, positionals, io),
    { word, io, explain: belongsElsewhere },
  );
}

/** Runs a parsed command against the daemon; the daemon's refusals become exit codes. */
async function runClient(
  word: string,
  command: ClientCommand,
  values: FlagValues,
  positionals: string[],
  io: OneShotIo,
): Promise<number> {
  const json = values.json === true;
  const fail = (exit: number, message: string, fields: Record<string, unknown>) => {
    if (json) io.out.print(JSON.stringify({ error: message, ...fields }));
    else io.err.print(`ivbsnetd ${word}: ${message}`);
    return exit;
  };
  try {
    const client = daemonClient(
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

/** An option of another client command says whose it is ("--all applies to list only"). */
function belongsElsewhere(error: UsageError): UsageError {
  const flag = /^Unknown option '--([^']+)'/.exec(error.message);
  const owners = flag ? flagOwners(flag[1]) : null;
  return owners ? new UsageError(owners) : error;
}

function stringFlag(value: FlagValues[string]): string | undefined {
  return typeof value === "string" ? value : undefined;
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
