/**
 * One-line structured logs on stderr. Fields whose name looks like a secret
 * (password, pass, token, secret, authorization) are redacted before printing.
 * @module
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

let threshold = LEVELS[readLevel()];

function readLevel(): LogLevel {
  try {
    const value = Deno.env.get("IVBSNETD_LOG")?.toLowerCase();
    if (value && value in LEVELS) return value as LogLevel;
  } catch {
    // No env permission: keep the default.
  }
  return "info";
}

export function setLogLevel(level: LogLevel): void {
  threshold = LEVELS[level];
}

const SECRET_KEY = /pass|token|secret|authorization/i;

/** Copy of `value` with secret-looking fields replaced by "[redacted]". */
export function redact(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(redact);
  if (value && typeof value === "object" && !(value instanceof Error)) {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, SECRET_KEY.test(k) ? "[redacted]" : redact(v)]),
    );
  }
  return value;
}

function format(value: unknown): string {
  if (value instanceof Error) return JSON.stringify(value.message);
  if (typeof value === "string") return /^[\w./:@-]*$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value);
}

function emit(level: LogLevel, component: string, message: string, fields?: object) {
  if (LEVELS[level] < threshold) return;
  let line = `${new Date().toISOString()} ${
    level.toUpperCase().padEnd(5)
  } [${component}] ${message}`;
  if (fields) {
    for (const [k, v] of Object.entries(redact(fields) as object)) {
      if (v !== undefined) line += ` ${k}=${format(v)}`;
    }
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
