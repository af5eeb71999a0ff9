/**
 * What a caught value says about itself, for log fields and one-line messages:
 * anything may be thrown (FFI, Deno, npm code), so these never assume an Error.
 * @module
 */

/** The stable `code` string of typed errors (MountError, IvbsMountError, …), else undefined. */
export function errorCode(error: unknown): string | undefined {
  if (typeof error === "object" && error !== null && "code" in error) {
    const code = (error as { code: unknown }).code;
    if (typeof code === "string") return code;
  }
  return undefined;
}

/** The message of an Error, or the thrown value as text. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * An error a caller catches by its stable `code` (the HTTP layer maps codes to
 * statuses). Subclasses narrow the code and name themselves; nothing else.
 */
export class CodedError<Code extends string = string> extends Error {
  constructor(message: string, readonly code: Code, options?: ErrorOptions) {
    super(message, options);
  }
}
