/**
 * `ivbsnetd ivbs-server`: runs the IVBS test server until SIGINT/SIGTERM.
 * Flag parsing is separate from running so tests can check it without sockets.
 * @module
 */
import { z } from "zod";
import { parsePort, parseSeconds, parseSize, SIZE_UNITS, UsageError } from "../args.ts";
import type { CommandLine, FlagValuesOf } from "../command_line.ts";
import { errorMessage } from "../error_info.ts";
import { logger } from "../log.ts";
import { untilStopSignal } from "./signals.ts";
import type { IVBS_SERVER } from "./definitions.ts";
import { DEFAULT_PORT } from "../ivbs/wire.ts";
import { type AdminServer, serveAdmin } from "../ivbs/server/admin.ts";
import {
  type IvbsServerOptions,
  type ServerImage,
  type ServerUser,
  startIvbsServer,
} from "../ivbs/server/mod.ts";

export interface ServerCommand {
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

/** The server the flags describe (not the users file, which `run` reads). Throws UsageError. */
export function serverCommand(values: FlagValuesOf<typeof IVBS_SERVER.flags>): ServerCommand {
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

export async function run({ values }: CommandLine<typeof IVBS_SERVER.flags>): Promise<number> {
  const log = logger("ivbs-server");
  const command = serverCommand(values);
  if (command.usersFile) command.options.users.push(...await loadUsersFile(command.usersFile));
  if (command.options.users.length === 0) {
    throw new UsageError("no users: give --user NAME:PASS or --users-file FILE");
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
