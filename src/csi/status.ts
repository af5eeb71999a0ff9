/**
 * The gRPC status codes the CSI spec asks for, and the one error class every
 * CSI handler throws to answer with one of them. The server turns it into
 * `{code, details}`; anything else becomes INTERNAL (and is logged).
 * @module
 */

/** gRPC status codes (grpc/doc/statuscodes.md), the subset CSI answers with. */
export const Code = {
  OK: 0,
  INVALID_ARGUMENT: 3,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const;
export type Code = (typeof Code)[keyof typeof Code];

/** A CSI call refused with a spec status code; `message` goes to the CO as is. */
export class CsiError extends Error {
  constructor(readonly status: Code, message: string) {
    super(message);
    this.name = "CsiError";
  }
}

/** INVALID_ARGUMENT unless `value` is a non-empty string. */
export function required(value: string | undefined | null, field: string): string {
  if (typeof value !== "string" || value === "") {
    throw new CsiError(Code.INVALID_ARGUMENT, `${field} is required`);
  }
  return value;
}
