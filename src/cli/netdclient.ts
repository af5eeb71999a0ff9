/**
 * netdclient: the interactive client's prompt loop (`ivbsnetd client`, see
 * src/commands/client.ts). It runs the same command definitions as the
 * one-shot commands (command_table.ts), so the words are the same (`list`,
 * `mount`, `unmount`, `exports`, `export-add`, `export-remove`, `proxies`,
 * `events`, `reload`, `shutdown`…), and the 2013 words stay as aliases (`check`,
 * `disc`, `exit`, `help`, `lista`, `listm`, `mount`, `unmount`; and `liste`,
 * `export`, `unexport`). Missing arguments of mount and export are asked for,
 * the password without echo. The server is checked before each command, so a
 * dead daemon is reported at once.
 * @module
 */
import { UsageError } from "../args.ts";
import { type ApiClient, ApiError, ServerUnreachableError } from "./api_client.ts";
import type { Output } from "./client_actions.ts";
import {
  CancelledError,
  CLIENT_COMMANDS,
  type ClientCommand,
  findCommand,
} from "./command_table.ts";
import { flagLines, type FlagSpec, parseFlagsOnly } from "../command_line.ts";
import type { Terminal } from "./prompt.ts";

export const PROMPT = "netdclient> ";

/** Flags every command takes at the prompt (the session already knows its server). */
const PROMPT_FLAGS: Record<string, FlagSpec> = {
  json: { type: "boolean", help: "JSON output" },
  help: { type: "boolean", short: "h", help: "this command's help" },
};

/** Arguments the prompt adds in front of what is typed (typed flags win). */
const PROMPT_DEFAULTS: Record<string, string[]> = { events: ["--last", "30"] };

function usageOf(command: ClientCommand): string {
  return `usage: ${command.name} [options]${command.usage ? ` ${command.usage}` : ""}`;
}

/** `help`: every command with its 2013 words. */
export const HELP = [
  "commands (help COMMAND, or COMMAND --help, for one):",
  ...CLIENT_COMMANDS.map((c) => {
    const aliases = Object.keys(c.aliases ?? {});
    const also = aliases.length > 0 ? ` (also ${aliases.join(", ")})` : "";
    return `  ${c.name.padEnd(14)} ${c.summary}${also}`;
  }),
  `  ${"help".padEnd(14)} this list`,
  `  ${"exit".padEnd(14)} leave netdclient (also quit, Ctrl-D, or Ctrl-C twice)`,
].join("\n");

function commandHelp(command: ClientCommand): string {
  return [
    usageOf(command),
    command.description,
    ...flagLines({ ...command.flags, ...PROMPT_FLAGS }),
  ].join("\n");
}

/** Runs the prompt loop until exit or end of input. */
export async function runInteractive(client: ApiClient, terminal: Terminal): Promise<void> {
  const out: Output = { print: (text: string) => terminal.write(text + "\n") };
  out.print(`netdclient for ivbsnetd at ${client.server}; type help for commands`);
  for (;;) {
    const line = await terminal.readLine(PROMPT);
    if (line === null) {
      terminal.write("\n");
      return;
    }
    const [word, ...args] = line.trim().split(/\s+/).filter((w) => w !== "");
    if (word === undefined) continue;
    const name = word.toLowerCase();
    if (name === "exit" || name === "quit") return;
    if (name === "help" || name === "?") {
      const about = args[0] === undefined ? null : findCommand(args[0].toLowerCase());
      out.print(about ? commandHelp(about.command) : HELP);
      continue;
    }
    const found = findCommand(name);
    if (!found) {
      out.print(`unknown command "${word}"; type help for the list`);
      continue;
    }
    try {
      const typed = [...(PROMPT_DEFAULTS[found.command.name] ?? []), ...found.implied, ...args];
      if (!await runAtPrompt(client, terminal, out, name, found.command, typed)) return;
    } catch (error) {
      if (error instanceof ServerUnreachableError) out.print(error.message);
      else if (error instanceof ApiError) out.print(`error: ${error.message}`);
      else if (error instanceof UsageError) {
        out.print(`${error.message}\n${usageOf(found.command)}`);
      } else if (error instanceof CancelledError) out.print(error.message);
      else throw error;
    }
  }
}

/** One command at the prompt; false when input ended while asking for arguments. */
async function runAtPrompt(
  client: ApiClient,
  terminal: Terminal,
  out: Output,
  word: string,
  command: ClientCommand,
  typed: string[],
): Promise<boolean> {
  const { values, positionals } = parseFlagsOnly({ ...command.flags, ...PROMPT_FLAGS }, typed);
  if (values.help) {
    out.print(commandHelp(command));
    return true;
  }
  const [min, max] = command.args;
  if (positionals.length > max) throw new UsageError(`too many arguments`);
  // The 2013 client checked the server before every command; so do we.
  if (!command.local && command.name !== "check") await client.health();
  const questions = command.questions ?? [];
  while (positionals.length < min && positionals.length < questions.length) {
    const answer = await ask(terminal, questions[positionals.length]);
    if (answer === null) return false;
    positionals.push(answer);
  }
  if (positionals.length < min) throw new UsageError(`expected ${command.usage}`);
  const interrupt = new AbortController();
  terminal.onInterrupt?.(() => interrupt.abort());
  try {
    await command.run({
      client,
      out,
      json: values.json === true,
      flags: values,
      args: positionals,
      password: async (given) => {
        if (given !== undefined) return given;
        const typed = await terminal.readSecret("Password: ");
        if (typed === null) throw new CancelledError(word);
        return typed;
      },
      signal: interrupt.signal,
    });
  } finally {
    terminal.onInterrupt?.(null);
  }
  return true;
}

/** Asks until the answer is not empty (or the question has a fallback); null at end of input. */
async function ask(terminal: Terminal, question: { prompt: string; fallback?: string }) {
  for (;;) {
    const answer = await terminal.readLine(`${question.prompt}: `);
    if (answer === null) return null;
    const trimmed = answer.trim();
    if (trimmed !== "") return trimmed;
    if (question.fallback !== undefined) return question.fallback;
  }
}
