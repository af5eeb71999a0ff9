/**
 * The client commands, defined once: name, the 2013 REPL words that are
 * aliases of it, summary, usage, flags, the arguments it takes and what it
 * runs (the command line's shape is src/command_line.ts, shared with every
 * other subcommand). The one-shot commands (`ivbsnetd mount …`,
 * src/commands/one_shot.ts) and the interactive netdclient (netdclient.ts)
 * both run these definitions, so they share one vocabulary, one `--help` and
 * one set of usage errors.
 * @module
 */
import { UsageError } from "../args.ts";
import type { CommandSpec, FlagSpecs, FlagValues } from "../command_line.ts";
import { buildInfo } from "../version.ts";
import type { ApiClient } from "./api_client.ts";
import {
  addExportCommand,
  checkCommand,
  eventsCommand,
  listAllCommand,
  listExportsCommand,
  listMountedCommand,
  mountCommand,
  type Output,
  proxiesCommand,
  reloadCommand,
  removeExportCommand,
  shutdownCommand,
  unmountCommand,
} from "./client_actions.ts";

/** An argument the REPL asks for when it is missing (the one-shot form needs it given). */
export interface Question {
  prompt: string;
  /** Taken when the answer is empty. */
  fallback?: string;
}

/** What a command runs with: the parsed line and how to reach the daemon and the user. */
export interface CommandContext {
  client: ApiClient;
  out: Output;
  json: boolean;
  flags: FlagValues;
  args: string[];
  /** The password: `given`, else from stdin, the environment or a prompt without echo. */
  password(given: string | undefined, flags: FlagValues): Promise<string>;
  /** Aborts a long-running command (events --follow). */
  signal?: AbortSignal;
}

export interface ClientCommand extends CommandSpec {
  /** Other words for it, with the flags they imply (the 2013 REPL's lista = list --all). */
  aliases?: Record<string, string[]>;
  /** The REPL asks for missing leading arguments in this order. */
  questions?: readonly Question[];
  /** Needs no daemon (version): the REPL does not check the server first. */
  local?: boolean;
  run(context: CommandContext): Promise<void>;
}

/** Raised when the user cancels a question (Ctrl-C at the password prompt). */
export class CancelledError extends Error {
  readonly code = "CANCELLED";
  constructor(what: string) {
    super(`${what} cancelled`);
    this.name = "CancelledError";
  }
}

/** `--read-only`: mount, export-add, and the foreground attach and export. */
export const READ_ONLY_FLAG = {
  "read-only": { type: "boolean", help: "read-only even if the image is writable" },
} as const satisfies FlagSpecs;

const PASSWORD_FLAGS = {
  ...READ_ONLY_FLAG,
  "password-stdin": { type: "boolean", help: "read the password from the first line of stdin" },
} as const satisfies FlagSpecs;

const PASSWORD_NOTE = "PASSWORD may also come from IVBSNETD_PASSWORD; without either, it is\n" +
  "asked for (without echo) when stdin is a terminal. Avoid PASSWORD on the command\n" +
  "line: other users can see it in the process list.";

/** What mount and export-add send after their first argument. */
interface ImageRequest {
  image: string;
  username: string;
  password: string;
  readOnly?: boolean;
}

/**
 * mount and export-add: TARGET IMAGE USER [PASSWORD], the missing ones asked
 * for at the prompt (the password without echo), with the password flags.
 */
function imageCommand(command: {
  name: string;
  aliases?: Record<string, string[]>;
  summary: string;
  target: string;
  description: string;
  targetQuestion: Question;
  send(context: CommandContext, target: string, request: ImageRequest): Promise<void>;
}): ClientCommand {
  return {
    name: command.name,
    aliases: command.aliases,
    summary: command.summary,
    usage: `${command.target} IMAGE USER [PASSWORD]`,
    description: `${command.description}\n${PASSWORD_NOTE}`,
    flags: PASSWORD_FLAGS,
    args: [3, 4],
    questions: [command.targetQuestion, { prompt: "Image" }, { prompt: "User" }],
    run: async (context) => {
      const [target, image, username, given] = context.args;
      const password = await context.password(given, context.flags);
      const readOnly = context.flags["read-only"] === true || undefined;
      await command.send(context, target, { image, username, password, readOnly });
    },
  };
}

/** unmount and export-remove: one TARGET, asked for at the prompt when missing. */
function targetCommand(command: {
  name: string;
  aliases?: Record<string, string[]>;
  summary: string;
  target: string;
  description: string;
  question: string;
  send(context: CommandContext, target: string): Promise<void>;
}): ClientCommand {
  return {
    name: command.name,
    aliases: command.aliases,
    summary: command.summary,
    usage: command.target,
    description: command.description,
    flags: {},
    args: [1, 1],
    questions: [{ prompt: command.question }],
    run: (context) => command.send(context, context.args[0]),
  };
}

/** A command that takes no arguments and no flags of its own. */
function withoutArguments(command: Omit<ClientCommand, "usage" | "flags" | "args">): ClientCommand {
  return { ...command, usage: "", flags: {}, args: [0, 0] };
}

export const CLIENT_COMMANDS: readonly ClientCommand[] = [
  withoutArguments({
    name: "check",
    summary: "check that the daemon answers",
    description: "Checks that the daemon answers, and shows its version and what it serves.",
    run: (c) => checkCommand(c.client, c.out, c.json),
  }),
  {
    name: "list",
    aliases: { listm: [], lista: ["--all"] },
    summary: "list mounted images (--all: every NBD device)",
    usage: "[--all]",
    description:
      "Lists mounted images (listm); --all lists every NBD device, free or used (lista).",
    flags: { all: { type: "boolean", help: "every NBD device, free or used" } },
    args: [0, 0],
    run: (c) => (c.flags.all ? listAllCommand : listMountedCommand)(c.client, c.out, c.json),
  },
  imageCommand({
    name: "mount",
    summary: "mount an image on /dev/nbdX through the daemon",
    target: "DEVICE|auto",
    description: "Mounts IMAGE as USER on DEVICE (nbdN, /dev/nbdN, or auto = first free device).",
    targetQuestion: { prompt: "Device [auto]", fallback: "auto" },
    send: (c, device, request) => mountCommand(c.client, c.out, { device, ...request }, c.json),
  }),
  targetCommand({
    name: "unmount",
    summary: "detach a device through the daemon",
    target: "DEVICE",
    description: "Detaches DEVICE and closes its IVBS session.",
    question: "Device",
    send: (c, device) => unmountCommand(c.client, c.out, device, c.json),
  }),
  withoutArguments({
    name: "exports",
    aliases: { "export-list": [], liste: [] },
    summary: "list the daemon's NBD exports",
    description: "Lists the daemon's NBD exports with their URIs and clients (liste).",
    run: (c) => listExportsCommand(c.client, c.out, c.json),
  }),
  imageCommand({
    name: "export-add",
    aliases: { export: [] },
    summary: "serve an image as an NBD export of the daemon (prints its nbd+unix:// URI)",
    target: "NAME",
    description:
      "Makes the daemon serve IMAGE (as USER) as NBD export NAME, for QEMU, qemu-img,\n" +
      "nbdinfo or fio: it prints the nbd+unix:///NAME?socket=PATH URI to use. Each client\n" +
      "gets its own IVBS session. (`ivbsnetd export` instead serves exports in the\n" +
      "foreground without a daemon.)",
    targetQuestion: { prompt: "Export name" },
    send: (c, name, request) => addExportCommand(c.client, c.out, { name, ...request }, c.json),
  }),
  targetCommand({
    name: "export-remove",
    aliases: { unexport: [] },
    summary: "stop an NBD export of the daemon",
    target: "NAME",
    description: "Stops serving export NAME; its clients are disconnected (unexport).",
    question: "Export name",
    send: (c, name) => removeExportCommand(c.client, c.out, name, c.json),
  }),
  withoutArguments({
    name: "proxies",
    summary: "list the IVBS proxies the daemon knows and their health",
    description: "Lists every IVBS proxy the daemon knows (configured and learned from\n" +
      "LIST_PROXIES): name, state (connected by which mounts and exports, backoff until\n" +
      "when, idle, reachable or unreachable), failures, failovers away from and to it,\n" +
      "and the last error.",
    run: (c) => proxiesCommand(c.client, c.out, c.json),
  }),
  {
    name: "events",
    summary: "print the daemon's recent events (--follow: keep printing)",
    usage: "[--follow] [--since SEQ] [--last N]",
    description: "Prints the daemon's recent events (mounts, failovers, retries, I/O errors,\n" +
      "export clients, refusals, config problems), oldest first; --follow keeps printing\n" +
      "new ones until interrupted (Ctrl-C).",
    flags: {
      follow: { type: "boolean", help: "keep printing new events as they happen" },
      since: { type: "string", value: "SEQ", help: "only events after sequence number SEQ" },
      last: { type: "string", value: "N", help: "only the newest N of the events there now" },
    },
    args: [0, 0],
    run: (c) =>
      eventsCommand(c.client, c.out, {
        json: c.json,
        follow: c.flags.follow === true,
        since: wholeNumber(c.flags.since, "--since"),
        last: wholeNumber(c.flags.last, "--last"),
        signal: c.signal,
      }),
  },
  withoutArguments({
    name: "reload",
    summary: "make the daemon re-read its config (like SIGHUP)",
    description: "Asks the daemon to re-read its config file: added mounts and exports come\n" +
      "up, removed ones are detached, unchanged ones are not touched. Prints what changed.",
    run: (c) => reloadCommand(c.client, c.out, c.json),
  }),
  {
    name: "shutdown",
    aliases: { disc: [] },
    summary: "stop the daemon (detaches every device)",
    usage: "[--keep-devices]",
    description:
      "Asks the daemon to detach every device and exit (disc). With --keep-devices it\n" +
      "exits leaving its netlink-attached devices to the next daemon (an upgrade).",
    flags: {
      "keep-devices": {
        type: "boolean",
        help: "leave netlink-attached devices to the next daemon",
      },
    },
    args: [0, 0],
    run: (c) => shutdownCommand(c.client, c.out, c.json, c.flags["keep-devices"] === true),
  },
  withoutArguments({
    name: "version",
    summary: "print the version (also --version)",
    description: "Prints this program's version and the Deno, V8 and TypeScript it runs on.",
    local: true,
    run: (c) => {
      const info = buildInfo();
      c.out.print(
        c.json
          ? JSON.stringify(info)
          : `ivbsnetd ${info.version} (deno ${info.deno}, v8 ${info.v8}, typescript ${info.typescript})`,
      );
      return Promise.resolve();
    },
  }),
];

function wholeNumber(value: FlagValues[string], flag: string): number | undefined {
  if (typeof value !== "string") return undefined;
  if (!/^\d{1,15}$/.test(value)) throw new UsageError(`${flag} must be a whole number`);
  return Number(value);
}

/** A command by its name or alias, with the arguments the alias implies. */
export function findCommand(word: string): { command: ClientCommand; implied: string[] } | null {
  for (const command of CLIENT_COMMANDS) {
    if (command.name === word) return { command, implied: [] };
    const implied = command.aliases?.[word];
    if (implied) return { command, implied };
  }
  return null;
}

/** "--all applies to list only", for a flag another command has; null when none has it. */
export function flagOwners(flag: string): string | null {
  const owners = CLIENT_COMMANDS.filter((c) => flag in c.flags).map((c) => c.name);
  return owners.length === 0 ? null : `--${flag} applies to ${owners.join(" and ")} only`;
}
