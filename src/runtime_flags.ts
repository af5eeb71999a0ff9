/**
 * The V8 flags ivbsnetd runs with, wherever it is launched: `deno task compile`
 * embeds them, the installed launcher and `deno task demo` pass them, and the
 * benchmarks start our processes with them. `tests/runtime_flags_test.ts` keeps
 * those places in step with this list.
 *
 * Why: a qd1 request that meets a scavenge waits for it. With V8's default
 * young generation (semi-spaces of ~1 MiB) the export scavenges every ~200 4k
 * requests (it allocates ~14.5 KB per request) and the IVBS test server every
 * ~400, so about 1 % of requests carry a 0.1–0.3 ms pause: the p99. 16 MiB
 * semi-spaces make that one scavenge per ~1,100 requests. Cost: about 30 MB
 * more resident memory per process once the young generation has filled.
 * Measured in bench/results.md ("The qd1 tail and V8's young generation").
 *
 * `--no-memory-reducer`: once a process has been idle for a while, V8's memory
 * reducer runs shrinking mark-compacts that hand the young generation and other
 * heap pages back to the OS. The next I/O burst then pays to fault them in again
 * and to warm up again: after 40 s idle, the first 2 s of 4k qd1 had a p99 of
 * 578–766 µs against 144–198 µs without the reducer (fresh processes, 4 trials,
 * bench/results.md "Issue 19: the qd1 tail after idle"). A block device is often
 * idle and then busy at once, so we keep the heap. Cost: the idle export stays at
 * its working-set RSS (110 MiB, not 67 MiB, after 10 s of 4k writes).
 * @module
 */

/** Each flag as V8 spells it. */
export const V8_FLAGS: readonly string[] = ["--min-semi-space-size=16", "--no-memory-reducer"];

/** The one `deno run` / `deno compile` argument that passes them. */
export const V8_FLAGS_ARG = `--v8-flags=${V8_FLAGS.join(",")}`;
