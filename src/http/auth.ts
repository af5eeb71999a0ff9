/**
 * Optional bearer token for calls that change state. Compared in constant time
 * (over SHA-256 digests, so lengths do not leak either).
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";

function digest(text: string): Uint8Array {
  return createHash("sha256").update(text).digest();
}

/** True when the Authorization header carries `Bearer <token>`. */
export function bearerMatches(header: string | undefined, token: string): boolean {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? "");
  if (!match) return false;
  return timingSafeEqual(digest(match[1]), digest(token));
}
