/**
 * Config checks beyond the schema: the ones that refuse a risky setup (a mixed
 * 2013/current file, an unauthenticated API on a non-loopback address), JSON
 * syntax errors reported without quoting the file (it may hold passwords), and
 * file modes that let others read or replace secrets.
 * @module
 */
import type { ListenAddress } from "./config_types.ts";
import { isLoopbackHost } from "../loopback.ts";

/** Keys of the 2013 format (`{"Mounted": […], "User": […]}`). */
export const LEGACY_KEYS = ["Mounted", "User"] as const;

/** Top-level keys of the current format. */
export const CURRENT_KEYS = [
  "http",
  "ivbs",
  "nbd",
  "users",
  "mounts",
  "stateDir",
  "exports",
] as const;

/**
 * When a file carries keys of both formats, which ones: reading it as either
 * would silently drop the other half (the 2013 reading drops `http`, token
 * included). Null when the file is one format.
 */
export function mixedFormatKeys(
  value: Record<string, unknown>,
): { legacy: string[]; current: string[] } | null {
  const legacy = LEGACY_KEYS.filter((key) => key in value);
  const current = CURRENT_KEYS.filter((key) => key in value);
  return legacy.length > 0 && current.length > 0 ? { legacy, current } : null;
}

/** The one-line refusal for a mixed file. */
export function mixedFormatMessage(
  source: string,
  keys: { legacy: string[]; current: string[] },
): string {
  return `config ${source}: mixes 2013 keys (${keys.legacy.join(", ")}) with current keys (${
    keys.current.join(", ")
  }); use one format (see config.example.json)`;
}

/**
 * Where a JSON.parse error happened, as "line L column C", without the snippet
 * of the file V8 puts in its message (that snippet can be a password).
 */
export function jsonSyntaxWhere(error: unknown, text: string): string {
  const message = error instanceof Error ? error.message : "";
  const lineColumn = /\(line (\d+) column (\d+)\)/.exec(message);
  if (lineColumn) return `line ${lineColumn[1]} column ${lineColumn[2]}`;
  const position = /at position (\d+)/.exec(message);
  if (position) return lineAndColumn(text, Number(position[1]));
  // "Unexpected token 'x', ..."<10 chars before>x<up to 10 after>"... is not valid JSON":
  // V8 quotes the file around the error. Find that quote in the text for the place.
  const quoted = /^Unexpected token '[\s\S]+?', (\.\.\.)?"([\s\S]*)"(?:\.\.\.)? is not valid JSON$/
    .exec(message);
  if (quoted) {
    const at = text.indexOf(quoted[2]);
    if (at >= 0 && quoted[1]) return lineAndColumn(text, at + 10);
    if (at >= 0) return `line ${lineAndColumn(text, at).split(" ")[1]} or after`;
  }
  if (/unexpected end|unterminated/i.test(message)) return "unexpected end of the file";
  return "unexpected token";
}

function lineAndColumn(text: string, offset: number): string {
  const before = text.slice(0, Math.min(offset, text.length));
  return `line ${before.split("\n").length} column ${offset - before.lastIndexOf("\n")}`;
}

/**
 * Why the HTTP API must not start on `listen` (or null): without a token, the
 * API mounts, unmounts and shuts down for anyone who can reach it, so it may
 * listen on loopback only.
 */
export function unsafeListenProblem(
  listen: ListenAddress,
  token: string | undefined,
): string | null {
  if (token !== undefined || isLoopbackHost(listen.host)) return null;
  const where = listen.host.includes(":")
    ? `[${listen.host}]:${listen.port}`
    : `${listen.host}:${listen.port}`;
  return `http.listen ${where} is not loopback and no http.token is set: anyone who can reach it could mount, unmount and shut down; set http.token or listen on 127.0.0.1`;
}
