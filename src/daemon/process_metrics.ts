/**
 * The standard process families every Prometheus client exports (start time,
 * open descriptors, resident memory) and `ivbsnetd_build_info`, so a scrape
 * tells which build runs and whether it leaks descriptors or memory.
 * @module
 */
import { buildInfo } from "../version.ts";
import type { Exposition } from "./exposition.ts";

export interface ProcessReadings {
  /** Unix time in seconds. */
  startTimeSeconds: number;
  /** Null where /proc/self/fd cannot be read (not Linux, no permission). */
  openFds: number | null;
  residentBytes: number;
}

/**
 * Descriptors this process has open: the entries of /proc/self/fd (the one
 * listing it included, as usual; Deno's runtime holds dozens), or null where
 * it cannot be read (not Linux, no permission).
 */
export function openDescriptors(): number | null {
  try {
    let count = 0;
    for (const _ of Deno.readDirSync("/proc/self/fd")) count++;
    return count;
  } catch {
    return null;
  }
}

/** This process, now. */
export function readProcess(): ProcessReadings {
  return {
    // The time origin is when this process started running JavaScript.
    startTimeSeconds: performance.timeOrigin / 1000,
    openFds: openDescriptors(),
    residentBytes: Deno.memoryUsage().rss,
  };
}

export function renderProcessMetrics(out: Exposition, readings = readProcess()): void {
  out.family("ivbsnetd_build_info", "gauge", "The running build: version, Deno, V8, TypeScript.");
  out.sample("ivbsnetd_build_info", { ...buildInfo() }, 1);
  out.family("process_start_time_seconds", "gauge", "Start time of the process (Unix time).");
  out.sample("process_start_time_seconds", {}, Math.floor(readings.startTimeSeconds));
  out.family("process_open_fds", "gauge", "Open file descriptors.");
  if (readings.openFds !== null) out.sample("process_open_fds", {}, readings.openFds);
  out.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
  out.sample("process_resident_memory_bytes", {}, readings.residentBytes);
}
