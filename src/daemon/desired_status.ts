/**
 * Where a desired mount or export stands, as the mount and export views show
 * it (`GET /api/mounts`, `GET /api/exports`, the status page, /metrics, CSI).
 * Shared by the tables' view types and the reconciler that produces it.
 * @module
 */

/** pending: not tried yet; attaching: first attempt in flight; failing: retrying. */
export type DesiredState = "pending" | "attaching" | "ready" | "failing";

export interface DesiredStatus {
  state: DesiredState;
  /** Why it is failing: short, operator readable, never a password. */
  reason?: string;
  /** When the next attempt starts (ISO time), while failing. */
  nextRetryAt?: string;
  /** Attempts since it was last ready (or became desired). */
  attempts?: number;
}
