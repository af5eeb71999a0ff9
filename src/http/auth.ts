/**
 * The bearer token for calls that change state, on Hono's `bearerAuth`
 * middleware (it parses `Authorization: Bearer <token68>` and sets the
 * `WWW-Authenticate` challenge). The comparison is ours, in constant time over
 * SHA-256 digests, so neither the token's bytes nor its length leak. Every
 * refusal is a 401 `{"error"}` (a malformed header too, as before) and is
 * reported through `onRefused` with the reason, never the token.
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { Context, MiddlewareHandler } from "hono";
import { bearerAuth } from "hono/bearer-auth";

/** The message every token refusal answers (scripts and the CLI match it). */
export const TOKEN_REFUSED = "missing or wrong bearer token";

function digest(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** True when `given` is the token, compared in constant time. */
export function tokenMatches(given: string, token: string): boolean {
  return timingSafeEqual(digest(given), digest(token));
}

/** Called once per refused request: the route and why, to log and record. */
export type RefusalReporter = (c: Context, status: number, reason: string) => void;

/** The token check as middleware; throws Hono's HTTPException carrying the 401 answer. */
export function tokenAuth(token: string, onRefused: RefusalReporter): MiddlewareHandler {
  const refuse = (reason: string) => (c: Context) => {
    onRefused(c, 401, reason);
    return c.json({ error: TOKEN_REFUSED }, 401);
  };
  return bearerAuth({
    verifyToken: (given) => tokenMatches(given, token),
    noAuthenticationHeader: { message: refuse("no bearer token") },
    invalidAuthenticationHeader: { message: refuse("malformed Authorization header") },
    invalidToken: { message: refuse("wrong bearer token") },
  });
}
