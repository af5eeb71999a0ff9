/**
 * How the mount and export tables turn a failure from below (an IVBS login
 * refused, an image missing, a device busy…) into their own refusal: their own
 * error as it is, a cause whose code they pass through under that code, and
 * anything else under their catch-all code, logged as unexpected.
 * @module
 */
import { type CodedError, errorCode, errorMessage } from "../error_info.ts";
import type { Logger } from "../log.ts";

/** One table's refusals: its error class and which codes from below it keeps. */
export interface RefusalKind<Code extends string, E extends CodedError<Code>> {
  readonly ErrorClass: new (message: string, code: Code) => E;
  /** Codes of the causes (IvbsMountError, NbdAttachError…) the table keeps as its own. */
  readonly passThrough: ReadonlySet<string>;
  /** The code of any other failure. */
  readonly otherwise: Code;
  /** "mount" or "export", for the log line of an unexpected failure. */
  readonly noun: string;
}

/** The table's refusal for `error`, its message prefixed with `what` ("Cannot open …"). */
export function asRefusal<Code extends string, E extends CodedError<Code>>(
  kind: RefusalKind<Code, E>,
  error: unknown,
  what: string,
  log: Logger,
): E {
  if (error instanceof kind.ErrorClass) return error;
  const code = errorCode(error);
  const message = `${what}: ${errorMessage(error)}`;
  if (code !== undefined && kind.passThrough.has(code)) {
    return new kind.ErrorClass(message, code as Code);
  }
  log.error(`${kind.noun} failed for an unexpected reason`, { error, code });
  return new kind.ErrorClass(message, kind.otherwise);
}
