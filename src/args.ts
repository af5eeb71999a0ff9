/**
 * Command-line values shared by the commands (attach, export, ivbs-server, the
 * clients, serve and demo): one error class for a bad command line, sizes with
 * binary suffixes, HOST:PORT, port numbers and password files. Every parser
 * throws UsageError naming the flag and the value, so each command turns it
 * into one line on stderr and exit code 2.
 * @module
 */
import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import { errorMessage } from "./error_info.ts";
import { looseMode } from "./file_mode.ts";
import type { Logger } from "./log.ts";

/** A bad command line: printed as one line, exit code 2. */
export class UsageError extends Error {
  readonly code = "USAGE";
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * node:util parseArgs in strict mode, for scripts with a fixed set of flags
 * (bench/); its errors become a UsageError (see usageErrorOf). Subcommands use
 * their definition instead (command_line.ts).
 */
export function parseFlags<T extends ParseArgsOptionsConfig>(
  args: string[],
  options: T,
): { values: ReturnType<typeof parseArgs<{ options: T; strict: true }>>["values"] } {
  try {
    return parseArgs({ args, options, strict: true });
  } catch (error) {
    throw usageErrorOf(error);
  }
}

/**
 * A parseArgs error as a UsageError: the sentence that names the flag, not the
 * advice after it ("Unknown option '--x'. To specify a positional argument…").
 */
export function usageErrorOf(error: unknown): UsageError {
  return new UsageError(errorMessage(error).split("\n")[0].split(". To specify")[0]);
}

/** Binary size suffixes: K = KiB … T = TiB; no suffix = bytes. */
export const SIZE_UNITS: Readonly<Record<string, number>> = {
  "": 1,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40,
};

/** "512M" → 536870912 ("512MiB" and "512m" too); at least `min` bytes (default 1). */
export function parseSize(text: string, min = 1): number {
  const match = /^(\d+)([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!match) {
    throw new UsageError(
      `size "${text}" must be a number with an optional K/M/G/T (examples: 1048576, 512M, 2G)`,
    );
  }
  const size = Number(match[1]) * SIZE_UNITS[match[2].toUpperCase()];
  if (!Number.isSafeInteger(size) || size < min) {
    throw new UsageError(`size "${text}" is out of range (${min} bytes to 8 PiB)`);
  }
  return size;
}

/** A whole decimal number of at least `min`: counts, KiB, block sizes. */
export function parseWholeNumber(text: string, flag: string, min: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < min) {
    throw new UsageError(`${flag} "${text}" must be a whole number >= ${min}`);
  }
  return value;
}

/** Seconds as a decimal ("2.5"); zero only where `allowZero` (it means "never"). */
export function parseSeconds(text: string, flag: string, { allowZero = false } = {}): number {
  const seconds = Number(text);
  if (text.trim() === "" || !Number.isFinite(seconds) || seconds < 0 || (!allowZero && !seconds)) {
    throw new UsageError(
      `${flag} "${text}" must be a ${allowZero ? "" : "positive "}number of seconds`,
    );
  }
  return seconds;
}

/** A TCP port, 0..65535 (0 = any free port, for listeners). */
export function parsePort(text: string, flag: string): number {
  const port = Number(text);
  if (!/^\d{1,5}$/.test(text) || port > 65535) {
    throw new UsageError(`${flag} "${text}" must be a port number 0..65535`);
  }
  return port;
}

/**
 * "host:port" or "[v6]:port". Port 0 only where `anyPort` says a listener may
 * take any free port; a proxy to connect to needs a real one.
 */
export function parseHostPort(
  text: string,
  flag: string,
  { anyPort = false }: { anyPort?: boolean } = {},
): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || port > 65535 || (port === 0 && !anyPort)) {
    throw new UsageError(`${flag} "${text}" is not HOST:PORT`);
  }
  return { host: match[1] ?? match[2], port };
}

/**
 * The password in a file: its first line, without the newline. Warns when
 * group or others may read the file; an empty password is a UsageError.
 * Missing or unreadable files throw Deno's NotFound / PermissionDenied.
 */
export async function readPasswordFile(path: string, log: Logger): Promise<string> {
  const info = await Deno.stat(path);
  const problem = looseMode(info.mode, true);
  if (problem) log.warn(`password file ${problem}; chmod 600 it`, { file: path });
  const password = (await Deno.readTextFile(path)).split(/\r?\n/)[0];
  if (!password) throw new UsageError(`password file ${path} is empty`);
  return password;
}
