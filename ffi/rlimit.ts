/**
 * getrlimit(2) / setrlimit(2) for RLIMIT_NOFILE, through Deno FFI: the daemon
 * raises its soft descriptor limit to the hard one at start-up (systemd and
 * shells default the soft limit to 1024, far below what the kernel allows).
 * No policy here, only the calls. Needs `--allow-ffi`; the symbols are ffi/libc.ts's (one libc handle).
 * @module
 */
import { errno, libc, LibcError } from "./libc.ts";

/** RLIMIT_NOFILE from asm-generic/resource.h (x86-64 and aarch64). */
export const RLIMIT_NOFILE = 7;
/** RLIM_INFINITY: all bits set in the 64-bit rlim_t. */
export const RLIM_INFINITY = 0xffff_ffff_ffff_ffffn;

/** A resource limit: `struct rlimit { rlim_t rlim_cur, rlim_max; }` (two u64). */
export interface ResourceLimit {
  soft: bigint;
  hard: bigint;
}

export function getrlimit(resource: number): ResourceLimit {
  const buffer = new BigUint64Array(2);
  if (libc().getrlimit(resource, buffer) !== 0) throw new LibcError("getrlimit", errno());
  return { soft: buffer[0], hard: buffer[1] };
}

export function setrlimit(resource: number, limit: ResourceLimit): void {
  const buffer = new BigUint64Array([limit.soft, limit.hard]);
  if (libc().setrlimit(resource, buffer) !== 0) throw new LibcError("setrlimit", errno());
}
