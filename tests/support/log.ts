/** Loggers for tests. */
import type { Logger } from "../../src/log.ts";

/** A logger that drops everything: for tests whose expected refusals would clutter the output. */
export const quietLog: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** Keeps each line as "<label> message {fields}", the label made from the level. */
function keepLines(
  label: (level: string) => string,
  lines: string[],
): Logger & { lines: string[] } {
  const keep = (level: string) => (message: string, fields?: object) =>
    void lines.push(`${label(level)} ${message} ${JSON.stringify(fields ?? {})}`);
  return {
    lines,
    debug: keep("debug"),
    info: keep("info"),
    warn: keep("warn"),
    error: keep("error"),
  };
}

/** A logger that keeps its lines ("warn message {fields}") for assertions, in `lines`. */
export function memoryLog(lines: string[] = []): Logger & { lines: string[] } {
  return keepLines((level) => level, lines);
}

/** The same with the level in capitals ("ERROR message {fields}"). */
export function recorder(): Logger & { lines: string[] } {
  return keepLines((level) => level.toUpperCase(), []);
}
