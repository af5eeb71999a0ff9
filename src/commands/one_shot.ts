/**
 * One-shot client commands for scripts: `ivbsnetd mount|unmount|list|check|shutdown`
 * and, for NBD exports of a running daemon, `ivbsnetd export-add|export-remove|export-list`
 * (named apart from `ivbsnetd export`, which serves exports in the foreground
 * without a daemon). Exit codes: 0 done, 1 the server refused or failed the
 * operation, 2 usage error, 3 the server is not reachable.
 * @module
 */
import { parseFlagsAndPositionals, UsageError } from "../args.ts";
import { ApiClient, ApiError, DEFAULT_SERVER, ServerUnreachableError } from "../cli/api_client.ts";
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
  removeExportCommand,
  shutdownCommand,
  unmountCommand,
} from "../cli/commands.ts";
import { ByteSource, readRawSecret } from "../cli/prompt.ts";
import { EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE } from "./exit_codes.ts";

export type OneShotName =
  | "mount"
  | "unmount"
  | "list"
  | "check"
  | "shutdown"
  | "export-add"
  | "export-remove"
  | "export-list"
  | "proxies"
  | "events";

const USAGE: Record<OneShotName, string> = {
  mount: "mount [options] DEVICE|auto IMAGE USER [PASSWORD]",
  unmount: "unmount [options] DEVICE",
  list: "list [options] [--all]",
  check: "check [options]",
  shutdown: "shutdown [options]",
  "export-add": "export-add [options] NAME IMAGE USER [PASSWORD]",
  "export-remove": "export-remove [options] NAME",
  "export-list": "export-list [options]",
  proxies: "proxies [options]",
  events: "events [options] [--follow] [--since SEQ]",
};

const SUMMARY: Record<OneShotName, string> = {
  mount: "Mounts IMAGE as USER on DEVICE (nbdN, /dev/nbdN, or auto = first free device).",
  unmount: "Detaches DEVICE and closes its IVBS session.",
  list: "Lists mounted images (listm); --all lists every NBD device, free or used (lista).",
  check: "Checks that the daemon answers.",
  shutdown: "Asks the daemon to detach every device and exit (disc). With --keep-devices it\n" +
    "exits leaving its netlink-attached devices to the next daemon (an upgrade).",
  "export-add": "Makes the daemon serve IMAGE (as USER) as NBD export NAME, for QEMU, qemu-img,\n" +
    "nbdinfo or fio: it prints the nbd+unix:///NAME?socket=PATH URI to use. Each client\n" +
    "gets its own IVBS session. (`ivbsnetd export` instead serves exports in the\n" +
    "foreground without a daemon.)",
  "export-remove": "Stops serving export NAME; its clients are disconnected (liste/unexport).",
  "export-list": "Lists the daemon's NBD exports with their URIs and clients (liste).",
  proxies: "Lists every IVBS proxy the daemon knows (configured and learned from\n" +
    "LIST_PROXIES): name, state (connected by which mounts and exports, backoff until\n" +
    "when, idle), failures, failovers away from and to it, and the last error.",
  events: "Prints the daemon's recent events (mounts, failovers, retries, I/O errors,\n" +
    "export clients, config problems), oldest first; --follow keeps printing new\n" +
    "ones until interrupted.",
};

/** Commands that take a password and --read-only. */
const WITH_PASSWORD = new Set<OneShotName>(["mount", "export-add"]);

export function helpText(name: OneShotName): string {
  const extra = WITH_PASSWORD.has(name)
    ? [
      `  --read-only          ${
        name === "mount" ? "mount" : "export"
      } read-only even if the image is writable`,
      "  --password-stdin     read the password from the first line of stdin",
      "  PASSWORD may also come from IVBSNETD_PASSWORD; without either, it is asked",
      "  for (without echo) when stdin is a terminal. Avoid PASSWORD on the command",
      "  line: other users can see it in the process list.",
    ]
    : name === "list"
    ? ["  --all                every NBD device, free or used"]
    : name === "events"
    ? [
      "  --follow             keep printing new events as they happen",
      "  --since SEQ          only events after sequence number SEQ",
    ]
    : name === "shutdown"
    ? ["  --keep-devices       leave netlink-attached devices to the next daemon"]
    : [];
  return [
    `usage: ivbsnetd ${USAGE[name]}`,
    "",
    SUMMARY[name],
    "",
    "options:",
    `  --server URL         daemon address (default $IVBSNETD_SERVER or ${DEFAULT_SERVER})`,
    "  --token TOKEN        bearer token (default $IVBSNETD_TOKEN)",
    "  --json               machine-readable output on stdout",
    ...extra,
    "  -h, --help           this help",
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

/** Runs one command; resolves with the exit code. */
export async function runOneShot(
  name: OneShotName,
  args: string[],
  io: OneShotIo = processIo(),
): Promise<number> {
  try {
    const { values, positionals } = parseFlagsAndPositionals(args, {
      server: { type: "string" },
      token: { type: "string" },
      json: { type: "boolean", default: false },
      all: { type: "boolean", default: false },
      "keep-devices": { type: "boolean", default: false },
      "read-only": { type: "boolean", default: false },
      "password-stdin": { type: "boolean", default: false },
      follow: { type: "boolean", default: false },
      since: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    });
    if (values.help) {
      io.out.print(helpText(name));
      return EXIT_OK;
    }
    const json = values.json;
    const client = makeClient(
      values.server ?? io.env("IVBSNETD_SERVER"),
      values.token ?? io.env("IVBSNETD_TOKEN"),
    );
    const onlyFor = (flag: boolean, option: string, commands: OneShotName[]) => {
      if (flag && !commands.includes(name)) {
        throw new UsageError(`--${option} applies to ${commands.join(" and ")} only`);
      }
    };
    onlyFor(values.all, "all", ["list"]);
    onlyFor(values["keep-devices"], "keep-devices", ["shutdown"]);
    onlyFor(values["read-only"], "read-only", ["mount", "export-add"]);
    onlyFor(values["password-stdin"], "password-stdin", ["mount", "export-add"]);
    onlyFor(values.follow, "follow", ["events"]);
    onlyFor(values.since !== undefined, "since", ["events"]);
    const expect = (min: number, max: number) => {
      if (positionals.length < min || positionals.length > max) {
        throw new UsageError(`expected ${USAGE[name]}`);
      }
    };
    /** IMAGE USER [PASSWORD] after the target, as mount and export-add take them. */
    const imageRequest = async () => {
      expect(3, 4);
      const [, image, username, given] = positionals;
      const password = await findPassword(given, values["password-stdin"], io);
      return { image, username, password, readOnly: values["read-only"] || undefined };
    };
    switch (name) {
      case "check":
        expect(0, 0);
        await checkCommand(client, io.out, json);
        break;
      case "list":
        expect(0, 0);
        await (values.all ? listAllCommand : listMountedCommand)(client, io.out, json);
        break;
      case "shutdown":
        expect(0, 0);
        await shutdownCommand(client, io.out, json, values["keep-devices"]);
        break;
      case "unmount":
        expect(1, 1);
        await unmountCommand(client, io.out, positionals[0], json);
        break;
      case "mount": {
        const request = { device: positionals[0], ...await imageRequest() };
        await mountCommand(client, io.out, request, json);
        break;
      }
      case "export-list":
        expect(0, 0);
        await listExportsCommand(client, io.out, json);
        break;
      case "export-remove":
        expect(1, 1);
        await removeExportCommand(client, io.out, positionals[0], json);
        break;
      case "proxies":
        expect(0, 0);
        await proxiesCommand(client, io.out, json);
        break;
      case "events": {
        expect(0, 0);
        const since = values.since === undefined ? 0 : Number(values.since);
        if (!/^\d+$/.test(values.since ?? "0") || !Number.isSafeInteger(since)) {
          throw new UsageError("--since must be a whole number");
        }
        await eventsCommand(client, io.out, {
          json,
          follow: values.follow,
          since,
          signal: io.signal,
        });
        break;
      }
      case "export-add": {
        const request = { name: positionals[0], ...await imageRequest() };
        await addExportCommand(client, io.out, request, json);
        break;
      }
    }
    return EXIT_OK;
  } catch (error) {
    if (error instanceof UsageError) {
      io.err.print(`ivbsnetd ${name}: ${error.message}\nusage: ivbsnetd ${USAGE[name]}`);
      return EXIT_USAGE;
    }
    if (error instanceof ServerUnreachableError) {
      io.err.print(`ivbsnetd ${name}: ${error.message}`);
      return EXIT_UNREACHABLE;
    }
    if (error instanceof ApiError) {
      const hint = error.status === 401 ? " (pass --token or set IVBSNETD_TOKEN)" : "";
      const reason = error.reason === undefined ? "" : ` [${error.reason}]`;
      io.err.print(`ivbsnetd ${name}: ${error.message}${reason}${hint}`);
      return EXIT_FAILED;
    }
    throw error;
  }
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
