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
import { type FioResult, runFio, type Workload, WORKLOADS } from "./fio.ts";
import { Child, exists, waitFor } from "./processes.ts";

const IMAGE_SIZE = "2G";
const FIO_FILE_SIZE = "1G";
const WARMUP_SECONDS = 2;

interface Target {
  label: string;
  child: Child;
  socket: string;
  uri: string;
}

interface Sample {
  result: FioResult;
  /** Server CPU per completed I/O, µs. */
  cpuUsPerIo: number;
}

function startExport(label: string, main: string, dir: string): Target {
  const socket = `${dir}/${label}.sock`;
  const child = new Child(label, Deno.execPath(), [
    "run",
    "--allow-all",
    main,
    "export",
    "--socket",
    socket,
    "--name",
    "bench",
    "--memory",
    IMAGE_SIZE,
  ]);
  return { label, child, socket, uri: `nbd+unix:///bench?socket=${socket}` };
}

function startNbdkit(dir: string): Target {
  const socket = `${dir}/nbdkit.sock`;
  const child = new Child("nbdkit", "nbdkit", [
    "--foreground",
    "--unix",
    socket,
    "memory",
    IMAGE_SIZE,
  ]);
  return { label: "nbdkit", child, socket, uri: `nbd+unix:///?socket=${socket}` };
}

async function measure(target: Target, workload: Workload, seconds: number): Promise<Sample> {
  const before = target.child.usage().cpuSeconds;
  const result = await runFio({ kind: "nbd-uri", uri: target.uri }, workload, {
    seconds,
    fileSize: FIO_FILE_SIZE,
    rampSeconds: 0,
  });
  const cpu = target.child.usage().cpuSeconds - before;
  return { result, cpuUsPerIo: result.ios > 0 ? (cpu * 1e6) / result.ios : 0 };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** "median (min–max)" with `digits` decimals. */
function spread(values: number[], digits = 0): string {
  const f = (v: number) =>
    v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  return `${f(median(values))} (${f(Math.min(...values))}–${f(Math.max(...values))})`;
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
  const targets: Target[] = [
    startExport("ivbsnetd", new URL("../main.ts", import.meta.url).pathname, dir),
    startNbdkit(dir),
  ];
  if (values.before) targets.push(startExport("before", `${values.before}/main.ts`, dir));
  for (const spec of values.also ?? []) {
    const [label, tree] = spec.split("=", 2);
    targets.push(startExport(label, `${tree}/main.ts`, dir));
  }
  // samples[workload][target] = one Sample per round
  const samples = new Map<string, Map<string, Sample[]>>();
  try {
    for (const target of targets) await waitFor(target.label, () => exists(target.socket));
    for (const workload of workloads) {
      samples.set(workload.name, new Map(targets.map((t) => [t.label, []])));
      for (const target of targets) await measure(target, workload, WARMUP_SECONDS);
    }
    for (let round = 0; round < rounds; round++) {
      for (const workload of workloads) {
        for (let i = 0; i < targets.length; i++) {
          const target = targets[(i + round) % targets.length];
          const sample = await measure(target, workload, seconds);
          samples.get(workload.name)!.get(target.label)!.push(sample);
          console.error(
            `round ${round + 1} ${workload.name} ${target.label}: ${
              sample.result.value.toFixed(0)
            } ${workload.unit}, p50 ${sample.result.p50Us.toFixed(0)} µs, ${
              sample.cpuUsPerIo.toFixed(1)
            } µs CPU/IO`,
          );
        }
      }
    }
  } finally {
    for (const target of targets) await target.child.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  const ours = targets.filter((t) => t.label !== "nbdkit").map((t) => t.label);
  const lines: string[] = [];
  for (const workload of workloads) {
    const byTarget = samples.get(workload.name)!;
    const peer = byTarget.get("nbdkit")!;
    for (const label of [...ours, "nbdkit"]) {
      const list = byTarget.get(label)!;
      const ratio = label === "nbdkit"
        ? ""
        : spread(list.map((s, r) => s.result.value / peer[r].result.value), 2);
      lines.push(
        `| ${workload.name} | ${label} | ${
          spread(list.map((s) => s.result.value))
        } ${workload.unit} | ${ratio} | ${spread(list.map((s) => s.result.p50Us))} | ${
          spread(list.map((s) => s.result.p99Us))
        } | ${spread(list.map((s) => s.cpuUsPerIo), 1)} |`,
      );
    }
  }
  const cpuModel = /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1];
  const load = Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  const report = [
    "## One hop: fio nbd engine → `ivbsnetd export --memory` vs `nbdkit memory`",
    "",
    `${new Date().toISOString()}; ${navigator.hardwareConcurrency} CPUs (${cpuModel}); ` +
    `load average at the end ${load}; ${rounds} interleaved rounds of ${seconds} s per job ` +
    `(after a ${WARMUP_SECONDS} s warm-up each); image ${IMAGE_SIZE}, fio size ${FIO_FILE_SIZE}. ` +
    "Each cell: median (min–max) over the rounds; ratio = that round's figure / nbdkit's; " +
    "CPU = server process user+system time per completed I/O.",
    "",
    "| workload | server | throughput | / nbdkit | p50 µs | p99 µs | CPU µs per I/O |",
    "|---|---|---:|---:|---:|---:|---:|",
    ...lines,
    "",
  ].join("\n");
  console.log(report);
  if (values.out) await Deno.writeTextFile(values.out, report);
}

if (import.meta.main) await main();
