/**
 * The fields the views (API, status page, metrics, CLI) read beyond the
 * tables' own: what the reconciler says of each desired mount and export.
 * They are optional, so a daemon part that does not produce them yet (or an
 * older daemon the CLI talks to) still fits.
 * @module
 */

/** Desired against actual state of one mount or export, as the reconciler reports it. */
export interface ReconcileFields {
  /** "pending" | "attaching" | "ready" | "failing", or the table's own state. */
  state: string;
  /** Short and operator readable (never a password): why it is failing. */
  reason?: string;
  /** ISO time of the next attempt while failing. */
  nextRetryAt?: string;
  /** Attempts since it last was ready. */
  attempts?: number;
}

/** The state that puts an item at the top of the status page. */
export const FAILING: string = "failing";
