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
 * @module
 */

/** Each flag as V8 spells it. */
export const V8_FLAGS: readonly string[] = ["--min-semi-space-size=16"];

/** The one `deno run` / `deno compile` argument that passes them. */
export const V8_FLAGS_ARG = `--v8-flags=${V8_FLAGS.join(",")}`;
