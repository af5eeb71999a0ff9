/**
 * The user table of the IVBS test server. Keeps only password hashes and
 * compares them in constant time, so neither logs nor timing reveal a password.
 * @module
 */
import { timingSafeEqual } from "node:crypto";
import { hashPassword } from "../wire.ts";

export interface ServerUser {
  username: string;
  password: string;
}

/** Thrown for a server configuration that cannot be served (bad user, port, option). */
export class ServerConfigError extends Error {
  readonly code = "SERVER_CONFIG";
  constructor(message: string) {
    super(message);
    this.name = "ServerConfigError";
  }
}

const HASH_BYTES = 128; // lowercase hex SHA-512
const USERNAME_BYTES = 32;
const encoder = new TextEncoder();

/** A hash as exactly 128 bytes (shorter input zero-padded) so the compare length never varies. */
function hashBytes(hex: string): Uint8Array {
  const bytes = new Uint8Array(HASH_BYTES);
  const encoded = encoder.encode(hex);
  bytes.set(encoded.subarray(0, HASH_BYTES));
  return bytes;
}

export class UserTable {
  readonly #hashes = new Map<string, Uint8Array>();
  // Compared against for unknown users, so "no such user" takes as long as "wrong password".
  readonly #decoy = hashBytes(hashPassword(crypto.randomUUID()));

  constructor(users: readonly ServerUser[]) {
    for (const user of users) {
      if (typeof user?.username !== "string" || user.username === "") {
        throw new ServerConfigError("a user has no username");
      }
      const length = encoder.encode(user.username).length;
      if (length > USERNAME_BYTES || user.username.includes("\0")) {
        throw new ServerConfigError(
          `username "${user.username}" must be 1..${USERNAME_BYTES} bytes without NUL`,
        );
      }
      if (typeof user.password !== "string") {
        throw new ServerConfigError(`user "${user.username}" has no password`);
      }
      if (this.#hashes.has(user.username)) {
        throw new ServerConfigError(`user "${user.username}" is defined twice`);
      }
      this.#hashes.set(user.username, hashBytes(hashPassword(user.password)));
    }
  }

  get usernames(): string[] {
    return [...this.#hashes.keys()];
  }

  /** True when `passwordHash` (hex SHA-512) belongs to `username`. */
  verify(username: string, passwordHash: string): boolean {
    const expected = this.#hashes.get(username);
    const given = hashBytes(passwordHash);
    const same = timingSafeEqual(expected ?? this.#decoy, given);
    return expected !== undefined && same && passwordHash.length === HASH_BYTES;
  }
}
