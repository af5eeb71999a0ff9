/**
 * The I/O counters every view of a device, export, connection or session
 * carries, declared once.
 * @module
 */

/** Requests being served now, and the reads and writes completed with their bytes. */
export interface IoCounters {
  /** Requests accepted and not yet answered. */
  inFlight: number;
  /** Completed successfully. */
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
}
