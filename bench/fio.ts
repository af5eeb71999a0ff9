/**
 * Runs one fio job and reduces its JSON output to the figures the benchmark
 * table reports: throughput, IOPS and completion-latency percentiles.
 * @module
 */

/** A workload of the benchmark table. */
export interface Workload {
  name: string;
  rw: "write" | "read" | "randwrite" | "randread";
  blockSize: string;
  iodepth: number;
  /** Bytes to move instead of running for a time (the dd-like 1 GiB write). */
  size?: string;
  /** Report MB/s (sequential) or IOPS (random). */
  unit: "MB/s" | "IOPS";
  /**
   * fio jobs, each with a connection of its own (the nbd engine opens one per
   * job), each on its own slice of the file; default 1.
   */
  jobs?: number;
}

export const WORKLOADS: readonly Workload[] = [
  { name: "seq write 1M qd8", rw: "write", blockSize: "1M", iodepth: 8, unit: "MB/s" },
  { name: "seq read 1M qd8", rw: "read", blockSize: "1M", iodepth: 8, unit: "MB/s" },
  { name: "rand read 4k qd1", rw: "randread", blockSize: "4k", iodepth: 1, unit: "IOPS" },
  { name: "rand write 4k qd1", rw: "randwrite", blockSize: "4k", iodepth: 1, unit: "IOPS" },
  { name: "rand read 4k qd32", rw: "randread", blockSize: "4k", iodepth: 32, unit: "IOPS" },
  { name: "rand write 4k qd32", rw: "randwrite", blockSize: "4k", iodepth: 32, unit: "IOPS" },
  {
    name: "1 GiB write 1M qd1 (dd-like)",
    rw: "write",
    blockSize: "1M",
    iodepth: 1,
    size: "1G",
    unit: "MB/s",
  },
];

/**
 * The 1 MiB qd8 rows again, spread over `connections` fio jobs (one NBD
 * connection each: what multi-conn is for), to append to a run.
 */
export function connectionRows(connections: number): Workload[] {
  if (!Number.isSafeInteger(connections) || connections < 2) return [];
  return WORKLOADS.filter((w) => w.blockSize === "1M" && w.iodepth === 8).map((w) => ({
    ...w,
    name: `${w.name} x${connections} conns`,
    jobs: connections,
  }));
}

/** Where fio sends its I/O. */
export type FioTarget =
  | { kind: "nbd-uri"; uri: string }
  | { kind: "block-device"; path: string };

export interface FioResult {
  /** MB/s (10^6 bytes/s) or IOPS, per the workload's unit. */
  value: number;
  p50Us: number;
  p99Us: number;
  /** I/Os completed in the measured period (after the ramp). */
  ios: number;
}

interface FioJobSide {
  bw_bytes: number;
  iops: number;
  total_ios: number;
  clat_ns?: { percentile?: Record<string, number> };
}

/** Runs fio for one workload against one target and returns its figures. */
export async function runFio(
  target: FioTarget,
  workload: Workload,
  options: { seconds: number; fileSize: string; rampSeconds?: number },
): Promise<FioResult> {
  const jobs = workload.jobs ?? 1;
  const args = [
    `--name=${workload.rw}`,
    `--rw=${workload.rw}`,
    `--bs=${workload.blockSize}`,
    `--iodepth=${workload.iodepth}`,
    `--numjobs=${jobs}`,
    "--group_reporting",
    "--output-format=json",
  ];
  if (workload.size) {
    args.push(`--size=${workload.size}`);
  } else {
    // Several jobs each take a slice: together they cover the file once.
    const size = jobs > 1 ? `${Math.floor(parseSize(options.fileSize) / jobs)}` : options.fileSize;
    if (jobs > 1) args.push(`--offset_increment=${size}`);
    args.push(`--size=${size}`, "--time_based", `--runtime=${options.seconds}`);
    args.push(`--ramp_time=${options.rampSeconds ?? 1}`);
  }
  if (target.kind === "nbd-uri") {
    args.push("--ioengine=nbd", `--uri=${target.uri}`);
  } else {
    args.push("--ioengine=libaio", "--direct=1", `--filename=${target.path}`);
  }
  const output = await new Deno.Command("fio", { args, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(output.stdout);
  if (!output.success) {
    throw new Error(`fio ${workload.name} failed: ${new TextDecoder().decode(output.stderr)}`);
  }
  // fio may print warnings before the JSON document.
  const json = JSON.parse(text.slice(text.indexOf("{")));
  const job = json.jobs[0];
  const side: FioJobSide = workload.rw.endsWith("read") ? job.read : job.write;
  const percentiles = side.clat_ns?.percentile ?? {};
  return {
    value: workload.unit === "MB/s" ? side.bw_bytes / 1e6 : side.iops,
    p50Us: (percentiles["50.000000"] ?? 0) / 1000,
    p99Us: (percentiles["99.000000"] ?? 0) / 1000,
    ios: side.total_ios,
  };
}

/** Bytes in a fio size such as "1G", "512M" or "4096". */
function parseSize(text: string): number {
  const match = /^(\d+)([KMG]?)$/.exec(text);
  if (!match) throw new Error(`cannot read fio size ${text}`);
  const scale = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[match[2]]!;
  return Number(match[1]) * scale;
}
