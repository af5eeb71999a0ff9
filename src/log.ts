/**
 * One-line structured logs on stderr. Fields whose name looks like a secret
 * (password, pass, token, secret, authorization) are redacted before printing.
 *
 * - `IVBSNETD_LOG`: the lowest level printed, `debug`, `info` (default), `warn`
 *   or `error`.
 * - `IVBSNETD_LOG_FORMAT`: `text` (default: `TIME LEVEL [component] message
 *   key=value…`) or `json` (one object per line: time, level, component, msg,
 *   then the fields).
 * - When stderr is the journal (systemd sets `JOURNAL_STREAM` to the device and
 *   inode of the stream it gave us, and stderr's are the same), each line
 *   starts with its syslog priority, `<3>` error, `<4>` warn, `<6>` info, `<7>`
 *   debug (sd-daemon(3)), so `journalctl -p err` finds errors; text lines then
 *   leave the time out, as the journal stamps each line itself.
 * @module
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFormat = "text" | "json";
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const FORMATS: readonly LogFormat[] = ["text", "json"];

/** syslog priorities (sd-daemon(3)): LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG. */
export const SYSLOG_PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    // No env permission: the defaults.
    return undefined;
  }
}

/** Settings read from the environment that did not make sense, said once on the first line. */
const envProblems: string[] = [];

function readLevel(): LogLevel {
  const value = readEnv("IVBSNETD_LOG")?.toLowerCase();
  if (value === undefined || value === "") return "info";
  if (value in LEVELS) return value as LogLevel;
  envProblems.push(`IVBSNETD_LOG=${value} is not debug, info, warn or error; using info`);
  return "info";
}

function readFormat(): LogFormat {
  const value = readEnv("IVBSNETD_LOG_FORMAT")?.toLowerCase();
  if (value === undefined || value === "") return "text";
  if ((FORMATS as readonly string[]).includes(value)) return value as LogFormat;
  envProblems.push(`IVBSNETD_LOG_FORMAT=${value} is not text or json; using text`);
  return "text";
}

/**
 * Whether `journalStream` (the `JOURNAL_STREAM` value, "DEV:INODE") names the
 * stream `stderr` is. systemd sets it for the service's own stdout/stderr; a
 * child that inherited the variable but writes elsewhere must not add prefixes.
 */
export function isJournalStream(
  journalStream: string | undefined,
  stderr: { dev: number; ino: number | null } | null,
): boolean {
  if (!journalStream || stderr === null || stderr.ino === null) return false;
  const match = /^(\d+):(\d+)$/.exec(journalStream);
  return match !== null && Number(match[1]) === stderr.dev && Number(match[2]) === stderr.ino;
}

/** Device and inode of our stderr: stat(2) of /proc/self/fd/2 follows it to the stream. */
function stderrIdentity(): { dev: number; ino: number | null } | null {
  try {
    const info = Deno.statSync("/proc/self/fd/2");
    return { dev: info.dev, ino: info.ino };
  } catch {
    // No /proc, or no read permission: not provably the journal.
    return null;
  }
}

let threshold = LEVELS[readLevel()];
const format = readFormat();
const toJournal = (() => {
  const stream = readEnv("JOURNAL_STREAM");
  return stream !== undefined && isJournalStream(stream, stderrIdentity());
})();

export function setLogLevel(level: LogLevel): void {
  threshold = LEVELS[level];
}

const SECRET_KEY = /pass|token|secret|authorization/i;

/** Copy of `value` with secret-looking fields replaced by "[redacted]". */
export function redact(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redact);
  if (value && typeof value === "object" && !(value instanceof Error || value instanceof Date)) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, SECRET_KEY.test(k) ? "[redacted]" : redact(v)]),
    );
  }
  return value;
}

/** A field value as JSON can carry it: an Error as its message, a bigint as its digits, a Date as ISO. */
export function plain(value: unknown): unknown {
  if (value instanceof Error) return value.message;
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.toISOString();
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

function formatValue(value: unknown): string {
  if (typeof value === "string") return /^[\w./:@-]*$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value) ?? String(value);
}

/** What one log call says. */
export interface LogRecord {
  time: Date;
  level: LogLevel;
  component: string;
  message: string;
  fields?: object;
}

/** Keys every JSON line has; a field of the same name is written as `field_<name>`. */
const JSON_KEYS = new Set(["time", "level", "component", "msg"]);

/** The line `record` is printed as (without the newline); secrets redacted. */
export function formatLine(
  record: LogRecord,
  options: { format: LogFormat; journal: boolean },
): string {
  const prefix = options.journal ? `<${SYSLOG_PRIORITY[record.level]}>` : "";
  const fields = Object.entries(plain(redact(record.fields ?? {})) as object)
    .filter(([, v]) => v !== undefined);
  if (options.format === "json") {
    const line: Record<string, unknown> = {
      time: record.time.toISOString(),
      level: record.level,
      component: record.component,
      msg: record.message,
    };
    for (const [k, v] of fields) line[JSON_KEYS.has(k) ? `field_${k}` : k] = v;
    return prefix + JSON.stringify(line);
  }
  let line = `${options.journal ? "" : `${record.time.toISOString()} `}${
    record.level.toUpperCase().padEnd(5)
  } [${record.component}] ${record.message}`;
  for (const [k, v] of fields) line += ` ${k}=${formatValue(v)}`;
  return prefix + line;
}

function emit(level: LogLevel, component: string, message: string, fields?: object) {
  if (LEVELS[level] < threshold) return;
  const options = { format, journal: toJournal };
  if (envProblems.length > 0) {
    const problems = envProblems.splice(0);
    for (const problem of problems) {
      console.error(
        formatLine(
          { time: new Date(), level: "warn", component: "log", message: problem },
          options,
        ),
      );
    }
  }
  let line: string;
  try {
    line = formatLine({ time: new Date(), level, component, message, fields }, options);
  } catch (error) {
    // A field JSON cannot hold (a cycle): the message still gets out.
    line = formatLine({
      time: new Date(),
      level,
      component,
      message,
      fields: { logError: `fields not printable: ${(error as Error).message}` },
    }, options);
  }
  console.error(line);
}

/** A logger bound to a component name, e.g. `logger("ivbs")`. */
export interface Logger {
  debug(message: string, fields?: object): void;
  info(message: string, fields?: object): void;
  warn(message: string, fields?: object): void;
  error(message: string, fields?: object): void;
}

export function logger(component: string): Logger {
  return {
    debug: (m, f) => emit("debug", component, m, f),
    info: (m, f) => emit("info", component, m, f),
    warn: (m, f) => emit("warn", component, m, f),
    error: (m, f) => emit("error", component, m, f),
  };
}
