/**
 * The daemon's JSON configuration: the current format (validated with zod) and
 * the 2013 format (`{"Mounted":[…],"User":[…]}`), both turned into one
 * `DaemonConfig`. Every problem is reported as one line naming the file and field.
 *
 * @example The 2013 format: mounts pair with users by position
 * ```ts
 * import { parseConfig } from "./config.ts";
 * const { config } = parseConfig(
 *   '{"Mounted":[{"NbdDevice":"/dev/nbd0","ImageName":"vm"}],"User":[{"Username":"u","Password":"p"}]}',
 *   "old.json",
 * );
 * if (config.mounts[0].username !== "u" || config.ivbs.proxies[0].port !== 11417) {
 *   throw new Error("unexpected");
 * }
 * ```
 * @module
 */
import { z } from "zod";
import { isLoopbackHost } from "../loopback.ts";
import { DEFAULT_LIVENESS } from "../ivbs/liveness.ts";
import type { DaemonConfig, ListenAddress } from "./config_types.ts";
import { MAX_CONNECTIONS } from "../block/device.ts";
import { parseDeviceName } from "./device_name.ts";
import { describeZodError } from "./zod_issues.ts";
import { looseMode } from "../file_mode.ts";
import { jsonSyntaxWhere, mixedFormatKeys, mixedFormatMessage } from "./config_checks.ts";
import { defaultCredentialsPath, processStateDir } from "./config_paths.ts";

/** Default IVBS proxy port (also in src/ivbs/wire.ts; repeated so config needs no codec). */
const DEFAULT_IVBS_PORT = 11417;

export type {
  ConfiguredExport,
  ConfiguredMount,
  DaemonConfig,
  ExportSettings,
  IvbsSettings,
  ListenAddress,
  NbdSettings,
} from "./config_types.ts";

export interface LoadedConfig {
  config: DaemonConfig;
  /** Things worth a log line but not fatal (e.g. a world-readable file with passwords). */
  warnings: string[];
}

/** A config file that cannot be used; `message` is one line naming the file and field. */
export class ConfigError extends Error {
  readonly code = "CONFIG";
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** Parses "host:port", "[v6]:port" or ":port" (all interfaces of 127.0.0.1 is not assumed). */
export function parseListenAddress(text: string): ListenAddress | null {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]]*)):(\d{1,5})$/.exec(text.trim());
  if (!match) return null;
  const port = Number(match[3]);
  if (port > 65535) return null;
  const host = match[1] ?? (match[2] === "" ? "0.0.0.0" : match[2]);
  return { host, port };
}

/**
 * Export names the daemon accepts: they appear unescaped in URIs, URL paths,
 * metrics labels and tables, so letters, digits and . _ - only (NBD itself allows more).
 */
export const EXPORT_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
export const EXPORT_NAME_RULE =
  "must be 1-128 characters: letters, digits, '.', '_' or '-', starting with a letter or digit";

/** Longest image name (IVBS carries `image_name[256]`; one byte stays for the NUL). */
export const MAX_IMAGE_NAME_BYTES = 255;
/** Longest username (IVBS carries `username[32]`). */
export const MAX_USERNAME_BYTES = 32;

/**
 * A `refine` check that `what` fits `max` bytes of UTF-8 without NUL: the wire
 * limits are bytes, and "é" is one character but two bytes.
 */
export function withinBytes(max: number, what: string) {
  return [
    (text: string) => !text.includes("\0") && new TextEncoder().encode(text).length <= max,
    { message: `${what} must be at most ${max} bytes (UTF-8) without NUL` },
  ] as const;
}

/** Longest unix socket path the kernel takes (sun_path is 108 bytes with the NUL). */
const MAX_SOCKET_PATH = 107;

/** Largest delay a timer takes (2^31 - 1 ms, about 24.8 days); beyond it fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

const boundedMs = (name: string, min: number) =>
  z.number({ error: `${name} must be a number of milliseconds` }).int(`${name} must be an integer`)
    .min(min, `${name} must be at least ${min} ms`)
    .max(MAX_TIMER_MS, `${name} must be at most ${MAX_TIMER_MS} ms (about 24.8 days)`);

const positiveMs = (name: string) => boundedMs(name, 1);

const ListenSchema = z.string().transform((text, ctx) => {
  const address = parseListenAddress(text);
  if (!address) {
    ctx.addIssue({ code: "custom", message: `"${text}" is not host:port (e.g. 127.0.0.1:8080)` });
    return z.NEVER;
  }
  return address;
});

const HostSchema = z.string().min(1, "host must not be empty").max(253);
const PortSchema = z.number().int().min(1).max(65535);

/**
 * Default connections per kernel device: 1. Measured (bench/kernel_connections.ts,
 * NBD VM with 4 CPUs, 4 proxies, 3 interleaved rounds, bench/results.md): 1, 2 and
 * 4 connections overlap on every row, as expected where one event loop serves
 * every connection of a device. More connections spread a device over proxies and
 * confine a failover's pause to part of its I/O; they are chosen per mount
 * (README, "Several connections per device").
 */
export const DEFAULT_CONNECTIONS = 1;

/** Connections of one device: 1..MAX_CONNECTIONS (one IVBS session each). */
export const ConnectionsSchema = z.number().int().min(1).max(
  MAX_CONNECTIONS,
  `connections must be 1 to ${MAX_CONNECTIONS}`,
);

const DeviceSchema = z.string().transform((text, ctx) => {
  if (text === "auto") return text;
  const name = parseDeviceName(text);
  if (!name) {
    ctx.addIssue({ code: "custom", message: `"${text}" is not an NBD device (/dev/nbdN or auto)` });
    return z.NEVER;
  }
  return name.device;
});

const AbsolutePathSchema = (name: string) =>
  z.string({ error: `${name} must be a string` }).refine((path) => path.startsWith("/"), {
    message: `${name} must be an absolute path`,
  }).refine((path) => !path.includes("\0"), { message: `${name} must not contain NUL` });

const SocketPathSchema = AbsolutePathSchema("socket").refine(
  (path) => new TextEncoder().encode(path).length <= MAX_SOCKET_PATH,
  { message: `socket path must be at most ${MAX_SOCKET_PATH} bytes (a unix socket limit)` },
);

const ExportTcpSchema = ListenSchema.refine((address) => isLoopbackHost(address.host), {
  message: "exports listen on TCP on loopback only (127.0.0.1, ::1): NBD has no authentication",
});

export const ExportNameSchema = z.string({ error: "name must be a string" }).regex(
  EXPORT_NAME_PATTERN,
  `name ${EXPORT_NAME_RULE}`,
);

const CurrentSchema = z.strictObject({
  http: z.strictObject({
    listen: ListenSchema.default({ host: "127.0.0.1", port: 8080 }),
    // RFC 6750's token68: what an `Authorization: Bearer` header can carry (hono's bearerAuth).
    token: z.string().min(8, "token must have at least 8 characters")
      .regex(
        /^[A-Za-z0-9._~+/-]+=*$/,
        "token may use only letters, digits and ._~+/- (and = at the end)",
      )
      .optional(),
  }).prefault({}),
  ivbs: z.strictObject({
    proxies: z.array(
      z.strictObject({ host: HostSchema, port: PortSchema.default(DEFAULT_IVBS_PORT) }),
    )
      .min(1, "at least one proxy is needed")
      .prefault([{ host: "127.0.0.1" }]),
    deadPeerTimeoutMs: positiveMs("deadPeerTimeoutMs").default(15_000),
    ioTimeoutMs: boundedMs("ioTimeoutMs", 0).default(120_000),
    connectTimeoutMs: positiveMs("connectTimeoutMs").default(5_000),
    backoff: z.strictObject({
      initialMs: positiveMs("initialMs").default(100),
      maxMs: positiveMs("maxMs").default(5_000),
    }).prefault({}).refine((b) => b.initialMs <= b.maxMs, {
      message: "initialMs must not exceed maxMs",
    }),
    maxInFlightBytes: z.number().int().min(1024 * 1024)
      .max(2 ** 30, "maxInFlightBytes must be at most 1 GiB").optional(),
    liveness: z.strictObject({
      silenceMs: positiveMs("silenceMs").default(DEFAULT_LIVENESS.silenceMs),
      slowFactor: z.number().min(1).max(1000).default(DEFAULT_LIVENESS.slowFactor),
      slowFloorMs: positiveMs("slowFloorMs").default(DEFAULT_LIVENESS.slowFloorMs),
      // 0 = never probe: the dead-peer timeout alone decides.
      probeTimeoutMs: boundedMs("probeTimeoutMs", 0).default(DEFAULT_LIVENESS.probeTimeoutMs),
    }).prefault({}),
  }).prefault({}),
  nbd: z.strictObject({
    devices: z.number().int().min(1).max(1024).default(16),
    blockSize: z.union([z.literal(512), z.literal(1024), z.literal(2048), z.literal(4096)], {
      error: "blockSize must be 512, 1024, 2048 or 4096",
    }).default(4096),
    timeoutS: z.number().int().min(0).max(
      Math.floor(MAX_TIMER_MS / 1000),
      `timeoutS must be at most ${Math.floor(MAX_TIMER_MS / 1000)} s`,
    ).default(0),
    maxInFlight: z.number().int().min(1).max(4096).default(128),
    attach: z.enum(["auto", "netlink", "ioctl"], {
      error: 'attach must be "auto", "netlink" or "ioctl"',
    }).default("auto"),
    deadConnTimeoutS: z.number().int().min(1).max(86_400).default(120),
    requeueAfterS: z.number().int().min(1).max(3_600).default(5),
    connections: ConnectionsSchema.default(DEFAULT_CONNECTIONS),
  }).prefault({}),
  users: z.array(z.strictObject({
    username: z.string().min(1, "username must not be empty")
      .refine(...withinBytes(MAX_USERNAME_BYTES, "username")),
    password: z.string(),
  })).default([]),
  mounts: z.array(z.strictObject({
    device: DeviceSchema.default("auto"),
    image: z.string().min(1, "image must not be empty")
      .refine(...withinBytes(MAX_IMAGE_NAME_BYTES, "image")),
    user: z.string().min(1),
    readOnly: z.boolean().default(false),
    connections: ConnectionsSchema.optional(),
  })).default([]),
  stateDir: AbsolutePathSchema("stateDir").optional(),
  reconcile: z.strictObject({
    backoff: z.strictObject({
      initialMs: positiveMs("initialMs").default(1_000),
      maxMs: positiveMs("maxMs").default(30_000),
    }).prefault({}).refine((b) => b.initialMs <= b.maxMs, {
      message: "initialMs must not exceed maxMs",
    }),
  }).prefault({}),
  credentials: z.strictObject({
    path: AbsolutePathSchema("credentials.path").optional(),
    keepInStateDir: z.boolean().default(false),
  }).prefault({}).refine((c) => !(c.path !== undefined && c.keepInStateDir), {
    message: "give credentials.path or credentials.keepInStateDir, not both",
  }),
  exports: z.strictObject({
    listen: z.strictObject({
      socket: SocketPathSchema.optional(),
      tcp: ExportTcpSchema.optional(),
    }).prefault({}),
    items: z.array(z.strictObject({
      name: ExportNameSchema,
      image: z.string().min(1, "image must not be empty")
        .refine(...withinBytes(MAX_IMAGE_NAME_BYTES, "image")),
      user: z.string().min(1),
      readOnly: z.boolean().default(false),
    })).default([]),
  }).prefault({}),
}).superRefine((config, ctx) => {
  const users = new Set<string>();
  config.users.forEach((user, i) => {
    if (users.has(user.username)) {
      ctx.addIssue({
        code: "custom",
        path: ["users", i, "username"],
        message: `duplicate user "${user.username}"`,
      });
    }
    users.add(user.username);
  });
  const devices = new Set<string>();
  config.mounts.forEach((mount, i) => {
    if (!users.has(mount.user)) {
      const known = [...users].join(", ") || "none";
      ctx.addIssue({
        code: "custom",
        path: ["mounts", i, "user"],
        message: `unknown user "${mount.user}" (users: ${known})`,
      });
    }
    if (mount.device === "auto") return;
    if (devices.has(mount.device)) {
      ctx.addIssue({
        code: "custom",
        path: ["mounts", i, "device"],
        message: `${mount.device} is mounted twice`,
      });
    }
    devices.add(mount.device);
    const index = parseDeviceName(mount.device)?.index ?? 0;
    if (index >= config.nbd.devices) {
      ctx.addIssue({
        code: "custom",
        path: ["mounts", i, "device"],
        message: `${mount.device} is beyond nbd.devices (${config.nbd.devices})`,
      });
    }
  });
  const names = new Set<string>();
  config.exports.items.forEach((item, i) => {
    if (!users.has(item.user)) {
      const known = [...users].join(", ") || "none";
      ctx.addIssue({
        code: "custom",
        path: ["exports", "items", i, "user"],
        message: `unknown user "${item.user}" (users: ${known})`,
      });
    }
    if (names.has(item.name)) {
      ctx.addIssue({
        code: "custom",
        path: ["exports", "items", i, "name"],
        message: `duplicate export name "${item.name}"`,
      });
    }
    names.add(item.name);
  });
});

/** The 2013 daemon's file. Unknown keys are tolerated (and warned about). */
const LegacySchema = z.looseObject({
  Mounted: z.array(z.looseObject({
    NbdDevice: DeviceSchema,
    ImageName: z.string().min(1, "ImageName must not be empty")
      .refine(...withinBytes(MAX_IMAGE_NAME_BYTES, "ImageName")),
  })).default([]),
  User: z.array(
    z.looseObject({
      Username: z.string().min(1).refine(...withinBytes(MAX_USERNAME_BYTES, "Username")),
      Password: z.string(),
    }),
  )
    .default([]),
}).superRefine((config, ctx) => {
  config.Mounted.forEach((mount, i) => {
    if (i >= config.User.length) {
      ctx.addIssue({
        code: "custom",
        path: ["Mounted", i],
        message:
          `no User[${i}] to pair with ${mount.NbdDevice} (mounts pair with users by position)`,
      });
    }
  });
});

const LEGACY_KEYS = new Set(["Mounted", "User"]);

function isLegacy(value: unknown): boolean {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    ("Mounted" in value || "User" in value);
}

function fromCurrent(data: z.output<typeof CurrentSchema>): DaemonConfig {
  const passwords = new Map(data.users.map((u) => [u.username, u.password]));
  const stateDir = (data.stateDir ?? processStateDir()).replace(/(.)\/+$/, "$1");
  return {
    stateDir,
    credentialsPath: data.credentials.path ?? defaultCredentialsPath(
      stateDir,
      data.stateDir === undefined || data.credentials.keepInStateDir ? null : processStateDir(),
    ),
    exports: {
      socket: data.exports.listen.socket ?? `${stateDir === "/" ? "" : stateDir}/nbd.sock`,
      tcp: data.exports.listen.tcp,
      items: data.exports.items.map((item) => ({
        name: item.name,
        image: item.image,
        username: item.user,
        password: passwords.get(item.user) ?? "",
        readOnly: item.readOnly,
      })),
    },
    format: "current",
    reconcile: data.reconcile,
    http: data.http,
    ivbs: data.ivbs,
    nbd: data.nbd,
    mounts: data.mounts.map((m) => ({
      device: m.device,
      image: m.image,
      username: m.user,
      password: passwords.get(m.user) ?? "",
      readOnly: m.readOnly,
      ...(m.connections === undefined ? {} : { connections: m.connections }),
    })),
    users: data.users.map((u) => ({ username: u.username, password: u.password })),
  };
}

function fromLegacy(data: z.output<typeof LegacySchema>): DaemonConfig {
  // Everything the 2013 file cannot say takes the current defaults.
  const defaults = CurrentSchema.parse({});
  return {
    ...fromCurrent(defaults),
    format: "2013",
    ivbs: { ...defaults.ivbs, proxies: [{ host: "127.0.0.1", port: DEFAULT_IVBS_PORT }] },
    mounts: data.Mounted.map((m, i) => ({
      device: m.NbdDevice,
      image: m.ImageName,
      username: data.User[i].Username,
      password: data.User[i].Password,
      readOnly: false,
    })),
    users: data.User.map((u) => ({ username: u.Username, password: u.Password })),
  };
}

/**
 * Validates the text of a config file. `source` names the file in messages.
 * Throws ConfigError with one line: `config FILE: field: problem`.
 */
export function parseConfig(text: string, source: string): LoadedConfig {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    // Never V8's message: it quotes the file, which may hold passwords.
    throw new ConfigError(`config ${source}: not valid JSON: ${jsonSyntaxWhere(error, text)}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ConfigError(`config ${source}: expected a JSON object at the top level`);
  }
  const warnings: string[] = [];
  const mixed = mixedFormatKeys(value as Record<string, unknown>);
  if (mixed) throw new ConfigError(mixedFormatMessage(source, mixed));
  if (isLegacy(value)) {
    const result = LegacySchema.safeParse(value);
    if (!result.success) {
      throw new ConfigError(`config ${source} (2013 format): ${describeZodError(result.error)}`);
    }
    const extra = Object.keys(value).filter((key) => !LEGACY_KEYS.has(key));
    if (extra.length > 0) {
      warnings.push(`config ${source}: ignoring unknown 2013 fields ${extra.join(", ")}`);
    }
    if (result.data.User.length > result.data.Mounted.length) {
      warnings.push(
        `config ${source}: ${
          result.data.User.length - result.data.Mounted.length
        } User entries have no Mounted entry to pair with`,
      );
    }
    return { config: fromLegacy(result.data), warnings };
  }
  const result = CurrentSchema.safeParse(value);
  if (!result.success) {
    throw new ConfigError(`config ${source}: ${describeZodError(result.error)}`);
  }
  return { config: fromCurrent(result.data), warnings };
}

/** True when the config carries any password (so its file mode matters). */
function holdsPasswords(config: DaemonConfig, text: string): boolean {
  return config.mounts.length > 0 || config.exports.items.length > 0 ||
    /"(password|Password)"\s*:/.test(text) ||
    config.http.token !== undefined;
}

/** Reads and validates a config file; also warns when it holds secrets others can read. */
export async function loadConfig(path: string): Promise<LoadedConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    const why = error instanceof Deno.errors.NotFound
      ? "no such file"
      : error instanceof Deno.errors.PermissionDenied
      ? "permission denied"
      : error instanceof Error
      ? error.message
      : String(error);
    throw new ConfigError(`config ${path}: cannot read: ${why}`);
  }
  const loaded = parseConfig(text, path);
  const mode = (await Deno.stat(path)).mode;
  // Writable by others matters for every config (it says what to mount, where
  // to listen); readable only when it holds secrets.
  const secret = holdsPasswords(loaded.config, text);
  const problem = looseMode(mode, secret);
  if (problem) {
    const what = secret ? "holds passwords and " : "";
    loaded.warnings.push(`config ${path} ${what}${problem}; run: chmod 600 ${path}`);
  }
  return loaded;
}
