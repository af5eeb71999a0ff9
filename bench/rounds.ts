/**
 * Interleaved rounds, medians and spreads: the method every fio comparison in
 * bench/ shares (bench.ts host|kernel, one_hop.ts), so that a noisy shared
 * host hits every target alike and the report says when it was too noisy.
 *
 * - Every target runs each workload once per round; the order rotates from
 *   round to round (ours, peer, …, then peer, …, ours) so neither side always
 *   runs first after a workload change.
 * - A warm-up pass per workload and target comes first; measured jobs have no
 *   fio ramp, so the CPU time read from /proc around a job divides exactly by
 *   the I/Os fio completed.
 * - Ratios are taken per round (ours / peer in the same round) and then
 *   summarised; a ratio whose range crosses 1.0 is flagged as inconclusive.
 * @module
 */
import { type FioResult, type FioTarget, runFio, type Workload } from "./fio.ts";
import type { Child } from "./processes.ts";

/** One thing fio is pointed at, and the processes whose CPU time it costs. */
export interface RoundTarget {
  label: string;
  fio: FioTarget;
  processes: readonly Child[];
}

export interface Sample {
  result: FioResult;
  /** CPU time (user + system) of the target's processes per completed I/O, µs. */
  cpuUsPerIo: number;
  /** The same split by process, in the order of the target's `processes`. */
  cpuUsPerIoByProcess: number[];
}

/** samples.get(workload name).get(target label) = one Sample per round. */
export type Samples = Map<string, Map<string, Sample[]>>;

export interface RoundsOptions {
  rounds: number;
  seconds: number;
  warmupSeconds: number;
  fileSize: string;
}

/** Runs one fio job against `target` and charges it the CPU its processes used meanwhile. */
export async function measure(
  target: RoundTarget,
  workload: Workload,
  seconds: number,
  fileSize: string,
): Promise<Sample> {
  const cpu = () => target.processes.map((p) => p.usage().cpuSeconds);
  const before = cpu();
  const result = await runFio(target.fio, workload, { seconds, fileSize, rampSeconds: 0 });
  const perIo = (seconds: number) => result.ios > 0 ? (seconds * 1e6) / result.ios : 0;
  const byProcess = cpu().map((after, i) => perIo(after - before[i]));
  return {
    result,
    cpuUsPerIo: byProcess.reduce((sum, us) => sum + us, 0),
    cpuUsPerIoByProcess: byProcess,
  };
}

/** Warm-up, then `rounds` interleaved rounds over every workload and target. */
export async function runRounds(
  targets: readonly RoundTarget[],
  workloads: readonly Workload[],
  options: RoundsOptions,
): Promise<Samples> {
  const samples: Samples = new Map();
  for (const workload of workloads) {
    samples.set(workload.name, new Map(targets.map((t) => [t.label, []])));
    // A size-based job (the 1 GiB write) runs whole anyway; the jobs before it warmed the path.
    if (workload.size) continue;
    for (const target of targets) {
      await measure(target, workload, options.warmupSeconds, options.fileSize);
    }
  }
  for (let round = 0; round < options.rounds; round++) {
    for (const workload of workloads) {
      for (let i = 0; i < targets.length; i++) {
        const target = targets[(i + round) % targets.length];
        const sample = await measure(target, workload, options.seconds, options.fileSize);
        samples.get(workload.name)!.get(target.label)!.push(sample);
        console.error(
          `round ${round + 1} ${workload.name} ${target.label}: ${
            sample.result.value.toFixed(0)
          } ${workload.unit}, p50 ${sample.result.p50Us.toFixed(0)} µs, p99 ${
            sample.result.p99Us.toFixed(0)
          } µs, ${sample.cpuUsPerIo.toFixed(1)} µs CPU/IO (${
            sample.cpuUsPerIoByProcess.map((us) => us.toFixed(1)).join(" + ")
          })`,
        );
      }
    }
  }
  return samples;
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function fmt(value: number, digits = 0): string {
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** "median (min–max)" with `digits` decimals; a single value alone. */
export function spread(values: readonly number[], digits = 0): string {
  if (values.length === 0) return "";
  if (values.length === 1) return fmt(values[0], digits);
  return `${fmt(median(values), digits)} (${fmt(Math.min(...values), digits)}–${
    fmt(Math.max(...values), digits)
  })`;
}

/** Per-round ratios ours[r] / peer[r] of one figure. */
export function ratios(
  ours: readonly Sample[],
  peer: readonly Sample[],
  figure: (result: FioResult) => number,
): number[] {
  const out: number[] = [];
  for (let r = 0; r < Math.min(ours.length, peer.length); r++) {
    const theirs = figure(peer[r].result);
    if (theirs > 0) out.push(figure(ours[r].result) / theirs);
  }
  return out;
}

/** True when the ratios fall on both sides of 1.0: the run cannot say which side is faster. */
export function crossesOne(values: readonly number[]): boolean {
  return values.length > 1 && Math.min(...values) < 1 && Math.max(...values) > 1;
}

/**
 * The comparison table: per workload a row per target with the median and
 * range of throughput, of its per-round ratio to `peer` (throughput, p50,
 * p99), of p50 and p99, of CPU µs per I/O, and of the CPU µs per I/O of the
 * target's first process (the front: the daemon, nbdkit nbd) and the rest (the
 * store behind it). Returns the table lines and the notes for inconclusive ratios.
 */
export function comparisonTable(
  workloads: readonly Workload[],
  samples: Samples,
  labels: readonly string[],
  peer: string,
): { lines: string[]; notes: string[] } {
  const lines = [
    `| workload | target | throughput | / ${peer} | p50 µs | p99 µs | p50 / ${peer} | ` +
    `p99 / ${peer} | CPU µs per I/O | front CPU µs per I/O | store CPU µs per I/O |`,
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  const notes: string[] = [];
  for (const workload of workloads) {
    const byTarget = samples.get(workload.name)!;
    const theirs = byTarget.get(peer) ?? [];
    const digits = workload.unit === "MB/s" ? 1 : 0;
    for (const label of labels) {
      const list = byTarget.get(label) ?? [];
      if (list.length === 0) continue;
      const mine = label === peer;
      const value = ratios(list, theirs, (r) => r.value);
      const p50 = ratios(list, theirs, (r) => r.p50Us);
      const p99 = ratios(list, theirs, (r) => r.p99Us);
      const bold = (text: string) => (text === "" ? "" : `**${text}**`);
      lines.push(
        `| ${workload.name} | ${label} | ${
          spread(list.map((s) => s.result.value), digits)
        } ${workload.unit} | ${mine ? "" : bold(spread(value, 2))} | ${
          spread(list.map((s) => s.result.p50Us))
        } | ${spread(list.map((s) => s.result.p99Us))} | ${mine ? "" : spread(p50, 2)} | ${
          mine ? "" : spread(p99, 2)
        } | ${spread(list.map((s) => s.cpuUsPerIo), 1)} | ${
          spread(list.map((s) => s.cpuUsPerIoByProcess[0]), 1)
        } | ${spread(list.map((s) => s.cpuUsPerIo - s.cpuUsPerIoByProcess[0]), 1)} |`,
      );
      if (!mine && crossesOne(value)) {
        notes.push(
          `${workload.name}, ${label}: throughput ratio ${
            spread(value, 2)
          } crosses 1.0 — too noisy to conclude.`,
        );
      }
    }
  }
  return { lines, notes };
}

/** CPU model, core count and load average: the context every result needs. */
export function hostLine(): string {
  const cpuModel = /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1];
  return `${navigator.hardwareConcurrency} CPUs (${cpuModel}); load average ${loadAverage()}`;
}

export function loadAverage(): string {
  return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
}
