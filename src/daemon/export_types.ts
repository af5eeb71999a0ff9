/**
 * The export table's vocabulary: its refusals (stable codes), requests and
 * what views show of an export.
 * @module
 */
import type { DeviceIoStats } from "./driver.ts";
import { CodedError } from "../error_info.ts";
import { IVBS_MOUNT_ERROR_CODES, type IvbsMountErrorCode } from "../ivbs/errors.ts";
import type { RefusalKind } from "./refusal.ts";
import type { DesiredState } from "./desired_status.ts";
import type { Throughput } from "./rate.ts";
import type { IoCounters } from "../block/counters.ts";

/** Why an export was refused; `code` is stable (the HTTP layer maps it to a status). */
export type ExportErrorCode =
  | "INVALID_NAME"
  | "DUPLICATE"
  | "UNKNOWN_EXPORT"
  | "BUSY" // being added or removed
  | "SHUTTING_DOWN"
  | "LISTEN_FAILED" // the export socket or port cannot be opened
  | IvbsMountErrorCode // passed through from IvbsSession.open
  | "OPEN_FAILED"; // anything else

export class ExportError extends CodedError<ExportErrorCode> {
  override readonly name = "ExportError";
}

/** What a failure below the table becomes (refusal.ts): IVBS session codes are kept. */
export const EXPORT_REFUSAL: RefusalKind<ExportErrorCode, ExportError> = {
  ErrorClass: ExportError,
  passThrough: new Set<string>(IVBS_MOUNT_ERROR_CODES),
  otherwise: "OPEN_FAILED",
  noun: "export",
};

export interface ExportRequest {
  name: string;
  image: string;
  username: string;
  password: string;
  readOnly?: boolean;
}

export type ExportState = "adding" | "ready" | "removing";

/** What views show of an export. Never carries the password. */
export interface ExportInfo extends IoCounters {
  name: string;
  image: string;
  username: string;
  /**
   * The table's own states while it holds the export; a desired export that
   * is not served yet shows the reconciler's "pending", "attaching" or
   * "failing" (with `reason`, `nextRetryAt`, `attempts`).
   */
  state: ExportState | Exclude<DesiredState, "ready">;
  reason?: string;
  nextRetryAt?: string;
  /** Attempts the reconciler made since the export was last ready. */
  attempts?: number;
  sizeBytes: number;
  readOnly: boolean;
  /** The unix socket clients connect to. */
  socket: string;
  /** `nbd+unix:///NAME?socket=PATH`, for qemu-img, nbdinfo, fio… */
  uri: string;
  /** `nbd://127.0.0.1:PORT/NAME` when exports also listen on TCP. */
  tcpUri: string | null;
  /** Clients in the transmission phase now (each with its own IVBS session). */
  clients: number;
  errors: number;
  /** Over every client session so far, open or closed. */
  failovers: number;
  reconnects: number;
  /** When the table took it (null while only desired). */
  createdAt: string | null;
  throughput: Throughput;
}

/** Everything metrics need about one export (live counters, read at scrape time). */
export interface ExportSnapshot {
  info: ExportInfo;
  stats: DeviceIoStats | null;
}

/** Where the export server listens (or will listen, before the first export). */
export interface ExportListenInfo {
  listening: boolean;
  socket: string;
  tcp: string | null;
}
