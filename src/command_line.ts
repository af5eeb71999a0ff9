/**
 * One definition of a command line, for every subcommand: its name, summary,
 * usage, description, flags and how many arguments it takes. From it come the
 * `--help` text and the parsed line; anything the definition does not allow
 * (an unknown flag, a missing value, too few or too many arguments) is a
 * UsageError naming the flag or the argument. It sits below both the client
 * commands (src/cli/command_table.ts) and the others (src/commands/), so
 * they share one parser and one help layout.
 * @module
 */
import { parseArgs } from "node:util";
import { UsageError, usageErrorOf } from "./args.ts";

/** A flag that takes a value (`--config FILE`, `--proxy HOST:PORT` repeated). */
export interface StringFlag {
  type: "string";
  /** The value's placeholder in help ("FILE"). */
  value: string;
  /** May be given several times; the values come back as a list. */
  multiple?: boolean;
  short?: string;
  /** What it does; more lines after "\n" stay aligned under the first. */
  help: string;
  /** The help section it is listed under (default "options"). */
  group?: string;
}

/** A switch (`--read-only`). */
export interface BooleanFlag {
  type: "boolean";
  short?: string;
  help: string;
  group?: string;
}

export type FlagSpec = StringFlag | BooleanFlag;
export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

/** What each flag of `F` parses to; absent when not given. */
export type FlagValuesOf<F extends FlagSpecs> = {
  -readonly [K in keyof F]?: F[K] extends { type: "boolean" } ? boolean
    : F[K] extends { multiple: true } ? string[]
    : string;
};

/** Any parsed flags (the client commands' context reads them by name). */
export type FlagValues = Record<string, string | boolean | string[] | undefined>;

/** A subcommand's command line. */
export interface CommandSpec<F extends FlagSpecs = FlagSpecs> {
  name: string;
  /** One line, for `ivbsnetd --help`. */
  summary: string;
  /** Its arguments after the options ("DEVICE|auto IMAGE USER [PASSWORD]"; "" for none). */
  usage: string;
  /**
   * The usage lines after `ivbsnetd NAME`, when the plain `[options] USAGE`
   * does not say enough (required flags, alternative forms).
   */
  forms?: readonly string[];
  /** Paragraphs for `--help`. */
  description: string;
  flags: F;
  /** How many arguments it takes. */
  args: readonly [min: number, max: number];
  /** Text after the options in `--help` (examples, exit codes). */
  notes?: string;
}

/** A definition with its flags' literal types kept, so its parsed values are typed. */
export function defineCommand<const F extends FlagSpecs>(spec: CommandSpec<F>): CommandSpec<F> {
  return spec;
}

/** `-h, --help`, which every command takes. */
export const HELP_FLAG = {
  help: { type: "boolean", short: "h", help: "this help" },
} as const satisfies FlagSpecs;

/** `--json` for commands whose output (and errors) can be JSON. */
export const JSON_FLAG = {
  json: { type: "boolean", help: 'JSON on stdout, errors too ({"error", "code"})' },
} as const satisfies FlagSpecs;

/** A parsed command line: flags by name, the arguments in order. */
export interface CommandLine<F extends FlagSpecs = FlagSpecs> {
  values: FlagValuesOf<F> & { help?: boolean };
  positionals: string[];
}

/**
 * Parses `args` against the definition. `--help` answers before the argument
 * count is checked, so `ivbsnetd mount --help` needs no arguments.
 */
export function parseCommandLine<F extends FlagSpecs>(
  spec: CommandSpec<F>,
  args: readonly string[],
): CommandLine<F> {
  const parsed = parseFlagsOnly({ ...spec.flags, ...HELP_FLAG }, args);
  const line = parsed as CommandLine<F>;
  if (line.values.help) return line;
  const [min, max] = spec.args;
  const count = line.positionals.length;
  if (max === 0 && count > 0) {
    throw new UsageError(`unexpected argument "${line.positionals[0]}": it takes none`);
  }
  if (count < min || count > max) throw new UsageError(`expected ${spec.usage}`);
  return line;
}

/**
 * The flags and arguments of `args` by `flags` alone (no argument count):
 * node:util parseArgs in strict mode, its errors turned into a UsageError
 * naming the flag.
 */
export function parseFlagsOnly(
  flags: FlagSpecs,
  args: readonly string[],
): { values: FlagValues; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args: [...args],
      options: parseOptions(flags),
      strict: true,
      allowPositionals: true,
    });
    return { values: values as FlagValues, positionals };
  } catch (error) {
    throw usageErrorOf(error);
  }
}

/** The definitions as node:util parseArgs options; the help texts stay behind. */
export function parseOptions(flags: FlagSpecs) {
  return Object.fromEntries(
    Object.entries(flags).map(([name, spec]) => [name, {
      type: spec.type,
      ...(spec.short ? { short: spec.short } : {}),
      ...(spec.type === "string" && spec.multiple ? { multiple: true } : {}),
    }]),
  );
}

/** `usage: ivbsnetd NAME …`, one line per form. */
export function usageLines(spec: CommandSpec, word = spec.name, program = "ivbsnetd"): string {
  const forms = spec.forms ?? [`[options]${spec.usage ? ` ${spec.usage}` : ""}`];
  return forms.map((form, i) => `${i === 0 ? "usage:" : "      "} ${program} ${word} ${form}`)
    .join("\n");
}

/** The whole `--help`: usage, description, the flags by section, notes. */
export function helpText(spec: CommandSpec, word = spec.name): string {
  const sections = new Map<string, Record<string, FlagSpec>>();
  const flags: FlagSpecs = { ...spec.flags, ...HELP_FLAG };
  for (const [name, flag] of Object.entries(flags)) {
    const group = flag.group ?? "options";
    sections.set(group, { ...sections.get(group), [name]: flag });
  }
  const parts = [usageLines(spec, word), spec.description];
  for (const [group, flags] of sections) parts.push([`${group}:`, ...flagLines(flags)].join("\n"));
  if (spec.notes) parts.push(spec.notes);
  return parts.join("\n\n");
}

/** The widest flag column; a longer flag puts its help on the next line. */
const FLAG_COLUMN = 22;

/** "  --since SEQ            only events after …" lines, aligned. */
export function flagLines(flags: Readonly<Record<string, FlagSpec>>): string[] {
  const lines: string[] = [];
  for (const [name, spec] of Object.entries(flags)) {
    const short = spec.short ? `-${spec.short}, ` : "";
    const left = `${short}--${name}${spec.type === "string" ? ` ${spec.value}` : ""}`;
    const [first, ...more] = spec.help.split("\n");
    const indent = " ".repeat(FLAG_COLUMN + 3);
    if (left.length > FLAG_COLUMN) lines.push(`  ${left}`, `${indent}${first}`);
    else lines.push(`  ${left.padEnd(FLAG_COLUMN)} ${first}`);
    lines.push(...more.map((line) => `${indent}${line}`));
  }
  return lines;
}
