/**
 * `ivbsnetd ivbs-server`: runs the IVBS test server until SIGINT/SIGTERM.
 * Flag parsing is separate from running so tests can check it without sockets.
 * @module
 */
import { z } from "zod";
import { parseFlags, parsePort, parseSeconds, parseSize, SIZE_UNITS, UsageError } from "../args.ts";
import { errorMessage } from "../error_info.ts";
import { logger } from "../log.ts";
import { untilStopSignal } from "./signals.ts";
import { DEFAULT_PORT } from "../ivbs/wire.ts";
import { type AdminServer, serveAdmin } from "../ivbs/server/admin.ts";
import {
  type IvbsServerOptions,
  type ServerImage,
  type ServerUser,
  startIvbsServer,
} from "../ivbs/server/mod.ts";

export const HELP = `usage: ivbsnetd ivbs-server [options]

Runs an IVBS test server: one or more proxies (TCP listeners) over one shared
image store, until SIGINT or SIGTERM. Good enough to run the daemon against.

options:
  --host HOST            listen address of every proxy (default 127.0.0.1)
  --port PORT            a proxy on PORT; repeat for more proxies
                         (default: one proxy on ${DEFAULT_PORT}; 0 = any free port)
  --proxies N            N proxies on consecutive ports from the first --port
                         (or ${DEFAULT_PORT}) upward
  --data-dir DIR         keep images as DIR/NAME.img files (sparse); existing ones
                         are served too. Default: in memory, lost at exit
  --create NAME:SIZE[:ro]
                         create image NAME of SIZE bytes if missing (suffix K, M,
                         G or T for KiB..TiB; ":ro" = read-only); repeatable
  --user NAME:PASS       allow user NAME with password PASS; repeatable
  --users-file FILE      JSON list of users: [{"username": "...", "password": "..."}]
  --idle-timeout SECONDS close connections that send nothing this long (default 30)
  --list-interval SECONDS
                         push LIST_PROXIES this often; 0 = never (default 5)
  --reply-delay MIN-MAX  delay every reply by a random MIN..MAX ms, so pipelined
                         replies come back out of order (default: none)
  --admin-port PORT      serve the admin JSON API on 127.0.0.1:PORT
                         (GET /proxies, POST /proxies/N/stop|start|stall|unstall|
                         hold|release|drop, POST /inject {"status":"TEMPORARY_ERROR",
                         "count":3}, GET /stats). stall: a proxy that reads and
                         answers nothing (hung); hold: READ/WRITE replies held
                         back but KEEPALIVE answered (alive, storage stuck)
  -h, --help             show this help

example:
  ivbsnetd ivbs-server --proxies 2 --user alice:secret --create disk0:1G \\
    --create golden:64M:ro --data-dir /var/tmp/ivbs --admin-port 11500
`;

export interface ServerCommand {
  help: boolean;
  options: IvbsServerOptions;
  usersFile?: string;
  adminPort?: number;
}

function parseImage(text: string): ServerImage {
  const parts = text.split(":");
  if (parts.length < 2 || parts.length > 3 || (parts.length === 3 && parts[2] !== "ro")) {
    throw new UsageError(`--create "${text}" must be NAME:SIZE or NAME:SIZE:ro`);
  }
  return { name: parts[0], size: parseSize(parts[1], 0), readOnly: parts[2] === "ro" };
}

function parseUser(text: string): ServerUser {
  const colon = text.indexOf(":");
  if (colon <= 0) {
    // Name only: never echo the argument, it may be a password typed in the wrong place.
    throw new UsageError("--user must be NAME:PASS");
  }
  return { username: text.slice(0, colon), password: text.slice(colon + 1) };
}

function parseDelay(text: string): { min: number; max: number } {
  const match = /^(\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?$/.exec(text.trim());
  const min = Number(match?.[1]);
  const max = match?.[2] === undefined ? min : Number(match[2]);
  if (!match || max < min) throw new UsageError(`--reply-delay "${text}" must be MIN-MAX in ms`);
  return { min, max };
}

/** Parses the flags (not the users file, which is read by `run`). Throws UsageError. */
export function parseServerArgs(args: string[]): ServerCommand {
  // parseFlags keeps parseArgs' first line, which names the flag, never a value of another flag.
  const { values } = parseFlags(args, {
    host: { type: "string" },
    port: { type: "string", multiple: true },
    proxies: { type: "string" },
    "data-dir": { type: "string" },
    create: { type: "string", multiple: true },
    user: { type: "string", multiple: true },
    "users-file": { type: "string" },
    "idle-timeout": { type: "string" },
    "list-interval": { type: "string" },
    "reply-delay": { type: "string" },
    "admin-port": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) return { help: true, options: { users: [] } };

  let ports = (values.port ?? []).map((p) => parsePort(p, "--port"));
  if (values.proxies !== undefined) {
    const count = Number(values.proxies);
    if (!/^\d+$/.test(values.proxies) || count < 1 || count > 64) {
      throw new UsageError(`--proxies "${values.proxies}" must be 1..64`);
    }
    if (ports.length > 1) throw new UsageError("use either several --port or --proxies N");
    const base = ports[0] ?? DEFAULT_PORT;
    if (base !== 0 && base + count - 1 > 65535) {
      throw new UsageError(`--proxies ${count} from port ${base} runs past 65535`);
    }
    ports = Array.from({ length: count }, (_, i) => (base === 0 ? 0 : base + i));
  }
  if (ports.length === 0) ports = [DEFAULT_PORT];

  const options: IvbsServerOptions = {
    host: values.host ?? "127.0.0.1",
    ports,
    dataDir: values["data-dir"],
    users: (values.user ?? []).map(parseUser),
    images: (values.create ?? []).map(parseImage),
  };
  if (values["idle-timeout"] !== undefined) {
    options.idleTimeoutMs = parseSeconds(values["idle-timeout"], "--idle-timeout") * 1000;
  }
  if (values["list-interval"] !== undefined) {
    const seconds = parseSeconds(values["list-interval"], "--list-interval", { allowZero: true });
    options.listProxiesIntervalMs = seconds * 1000;
  }
  if (values["reply-delay"] !== undefined) options.replyDelayMs = parseDelay(values["reply-delay"]);
  return {
    help: false,
    options,
    usersFile: values["users-file"],
    adminPort: values["admin-port"] === undefined
      ? undefined
      : parsePort(values["admin-port"], "--admin-port"),
  };
}

const UsersFile = z.array(z.object({ username: z.string().min(1), password: z.string() }));

/** Reads `[{"username","password"}]`; errors name the file and the entry, never a password. */
export async function loadUsersFile(path: string): Promise<ServerUser[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    throw new UsageError(
      `cannot read --users-file ${path}: ${errorMessage(error)}`,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new UsageError(`--users-file ${path} is not JSON`);
  }
  const parsed = UsersFile.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new UsageError(
      `--users-file ${path}: ${issue.path.join(".") || "top level"}: ${issue.message}` +
        ` (expected [{"username": "...", "password": "..."}])`,
    );
  }
  return parsed.data;
}

function formatSize(bytes: number): string {
  for (const unit of ["T", "G", "M", "K"]) {
    const scale = SIZE_UNITS[unit];
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  }
  return `${bytes} bytes`;
}

export async function run(args: string[]): Promise<number> {
  const log = logger("ivbs-server");
  let command: ServerCommand;
  try {
    command = parseServerArgs(args);
    if (command.help) {
      console.log(HELP);
      return 0;
    }
    if (command.usersFile) {
      command.options.users.push(...await loadUsersFile(command.usersFile));
    }
    if (command.options.users.length === 0) {
      throw new UsageError("no users: give --user NAME:PASS or --users-file FILE");
    }
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`ivbs-server: ${error.message} (see --help)`);
    return 2;
  }

  let server;
  try {
    server = await startIvbsServer(command.options);
  } catch (error) {
    // Bad images or users, a port in use: one clear line.
    console.error(`ivbs-server: ${errorMessage(error)}`);
    return 2;
  }
  const signal = untilStopSignal();
  let admin: AdminServer | undefined;
  if (command.adminPort !== undefined) {
    try {
      admin = serveAdmin(server, command.adminPort, log);
    } catch (error) {
      await server.close();
      console.error(
        `ivbs-server: cannot serve the admin API on 127.0.0.1:${command.adminPort}: ${
          errorMessage(error)
        }`,
      );
      return 2;
    }
  }

  const store = command.options.dataDir ? `files in ${command.options.dataDir}` : "memory";
  console.log(`ivbs-server: ${server.proxies.length} proxies over a ${store} store`);
  for (const proxy of server.proxies) {
    console.log(`  ${proxy.name} listening on ${proxy.host}:${proxy.port}`);
  }
  const images = await server.images();
  if (images.length === 0) console.log("  no images yet (add one with --create NAME:SIZE)");
  for (const image of images) {
    const who = image.users ? `, users ${image.users.join(",")}` : "";
    console.log(
      `  image ${image.name}: ${formatSize(image.size)}, ${
        image.readOnly ? "read-only" : "read-write"
      }${who}`,
    );
  }
  console.log(`  users: ${command.options.users.map((u) => u.username).join(", ")}`);
  if (admin) console.log(`  admin API on http://127.0.0.1:${admin.port}`);
  console.log("ready; stop with Ctrl-C (SIGINT) or SIGTERM");

  const received = await signal;
  log.info("stopping", { signal: received });
  await admin?.close();
  await server.close();
  console.log("ivbs-server: stopped");
  return 0;
}
