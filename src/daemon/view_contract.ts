/**
 * The fields the views (API, status page, metrics, CLI) read beyond the
 * tables' own: what the reconciler says of each desired mount and export, and
 * the nbd module's health. They are optional, so a daemon part that does not
 * produce them yet (or an older daemon the CLI talks to) still fits.
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

/** `GET /api/health`'s `nbd`: is the module loaded, how many devices are free. */
export interface NbdHealth {
  module: boolean;
  /** Null when it cannot be told (e.g. the devices cannot be listed). */
  freeDevices: number | null;
  reason?: string;
}

/** The state that puts an item at the top of the status page. */
export const FAILING: string = "failing";
