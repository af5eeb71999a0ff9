/**
 * Where a desired mount or export stands, as the mount and export views show
 * it (`GET /api/mounts`, `GET /api/exports`, the status page, /metrics, CSI).
 * Shared by the tables' view types and the reconciler that produces it; the
 * views read it as view_contract.ts's ReconcileFields.
 * @module
 */
import type { ReconcileFields } from "./view_contract.ts";

/** pending: not tried yet; attaching: first attempt in flight; failing: retrying. */
export type DesiredState = "pending" | "attaching" | "ready" | "failing";

export interface DesiredStatus extends ReconcileFields {
  state: DesiredState;
}

/** The I/O counters of an item that is desired but not up: nothing yet. */
export const NO_IO = {
  inFlight: 0,
  reads: 0,
  writes: 0,
  bytesRead: 0,
  bytesWritten: 0,
  errors: 0,
  failovers: 0,
  reconnects: 0,
  throughput: { readBytesPerSec: 0, writeBytesPerSec: 0 },
} as const;
