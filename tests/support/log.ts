/** Loggers for tests. */
import type { Logger } from "../../src/log.ts";

/** A logger that drops everything: for tests whose expected refusals would clutter the output. */
export const quietLog: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** A logger that keeps its lines as "LEVEL message {fields}" strings. */
export function recorder(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const keep = (level: string) => (message: string, fields?: Record<string, unknown>) => {
    lines.push(`${level} ${message} ${JSON.stringify(fields ?? {})}`);
  };
  return {
    lines,
    debug: keep("DEBUG"),
    info: keep("INFO"),
    warn: keep("WARN"),
    error: keep("ERROR"),
  };
}
