/**
 * The exit codes every subcommand shares, so scripts can rely on one meaning
 * per number.
 * @module
 */

/** Done (or stopped cleanly). */
export const EXIT_OK = 0;
/** The operation failed, the server refused it, or the process could not start. */
export const EXIT_FAILED = 1;
/** Bad arguments or a bad config: nothing was attempted. */
export const EXIT_USAGE = 2;
/** The daemon is not reachable (client commands). */
export const EXIT_UNREACHABLE = 3;
