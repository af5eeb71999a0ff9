/**
 * The one-hop pair that isolates our NBD serve loop (issue 13): fio's nbd
 * engine against `ivbsnetd export --memory` and against `nbdkit memory`, each
 * one process over a unix socket, no IVBS and no kernel. Optionally a second
 * ivbsnetd tree (`--before DIR`, e.g. a git worktree of an older commit) runs
 * beside them, for before/after comparisons on the same host in the same run.
 *
 * Rounds are interleaved (every target runs each workload once per round, the
 * order rotating from round to round) so that a noisy neighbour hits all of
 * them alike; the report gives the median and the range over the rounds, and
 * per-round ratios against nbdkit. CPU time per request is the server
 * process's user+system time (all threads, from /proc) over the run divided by
 * the I/Os fio completed (no ramp: a warm-up pass runs first instead).
 *
 * usage: deno run -A bench/one_hop.ts [--rounds 3] [--seconds 5] [--before DIR]
 *          [--also LABEL=DIR]... [--only SUBSTRING[,SUBSTRING]] [--out FILE]
 * @module
 */
import { parseArgs } from "node:util";
import { WORKLOADS } from "./fio.ts";
import { Child, exists, waitFor } from "./processes.ts";
import { comparisonTable, hostLine, loadAverage, type RoundTarget, runRounds } from "./rounds.ts";
import { V8_FLAGS_ARG } from "../src/runtime_flags.ts";

const IMAGE_SIZE = "2G";
const FIO_FILE_SIZE = "1G";
const WARMUP_SECONDS = 2;

interface Server extends RoundTarget {
  socket: string;
}

function startExport(label: string, main: string, dir: string): Server {
  const socket = `${dir}/${label}.sock`;
  const child = new Child(label, Deno.execPath(), [
    "run",
    "--allow-all",
    V8_FLAGS_ARG, // as the product runs (src/runtime_flags.ts)
    main,
    "export",
    "--socket",
    socket,
    "--name",
    "bench",
    "--memory",
    IMAGE_SIZE,
  ]);
  const uri = `nbd+unix:///bench?socket=${socket}`;
  return { label, processes: [child], socket, fio: { kind: "nbd-uri", uri } };
}

function startNbdkit(dir: string): Server {
  const socket = `${dir}/nbdkit.sock`;
  const child = new Child("nbdkit", "nbdkit", [
    "--foreground",
    "--unix",
    socket,
    "memory",
    IMAGE_SIZE,
  ]);
  const uri = `nbd+unix:///?socket=${socket}`;
  return { label: "nbdkit", processes: [child], socket, fio: { kind: "nbd-uri", uri } };
}

async function main() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rounds: { type: "string", default: "3" },
      seconds: { type: "string", default: "5" },
      before: { type: "string" },
      also: { type: "string", multiple: true },
      only: { type: "string" },
      out: { type: "string" },
    },
  });
  const rounds = Number(values.rounds);
  const seconds = Number(values.seconds);
  const workloads = WORKLOADS.filter((w) =>
    !w.size && (!values.only || values.only.split(",").some((o) => w.name.includes(o)))
  );
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-onehop-" });
  const targets: Server[] = [
    startExport("ivbsnetd", new URL("../main.ts", import.meta.url).pathname, dir),
    startNbdkit(dir),
  ];
  if (values.before) targets.push(startExport("before", `${values.before}/main.ts`, dir));
  for (const spec of values.also ?? []) {
    const [label, tree] = spec.split("=", 2);
    targets.push(startExport(label, `${tree}/main.ts`, dir));
  }
  const loadBefore = loadAverage();
  let samples;
  try {
    for (const target of targets) await waitFor(target.label, () => exists(target.socket));
    samples = await runRounds(targets, workloads, {
      rounds,
      seconds,
      warmupSeconds: WARMUP_SECONDS,
      fileSize: FIO_FILE_SIZE,
    });
  } finally {
    for (const target of targets) for (const child of target.processes) await child.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  const ours = targets.filter((t) => t.label !== "nbdkit").map((t) => t.label);
  const { lines, notes } = comparisonTable(workloads, samples, [...ours, "nbdkit"], "nbdkit");
  const report = [
    "## One hop: fio nbd engine → `ivbsnetd export --memory` vs `nbdkit memory`",
    "",
    `${new Date().toISOString()}; ${hostLine()} at the end (${loadBefore} at the start; the ` +
    `host is shared); ${rounds} interleaved rounds of ${seconds} s per job (after a ` +
    `${WARMUP_SECONDS} s warm-up each); image ${IMAGE_SIZE}, fio size ${FIO_FILE_SIZE}. ` +
    "Each cell: median (min–max) over the rounds; ratios = that round's figure / nbdkit's; " +
    "CPU = server process user+system time per completed I/O.",
    "",
    ...lines,
    "",
    ...(notes.length > 0 ? [...notes.map((n) => `- ${n}`), ""] : []),
  ].join("\n");
  console.log(report);
  if (values.out) await Deno.writeTextFile(values.out, report);
}

if (import.meta.main) await main();
