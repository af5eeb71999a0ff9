/**
 * How long an IVBS failover stalls I/O on the kernel path: fio (libaio,
 * O_DIRECT) on /dev/nbdN served by `ivbsnetd attach` from the IVBS test server
 * (3 proxies, subprocesses), first with no faults, then with a fault every
 * `--every-ms` (stop and restart the serving proxy, USE_ANOTHER_PROXY,
 * EXPIRED, drop its connections, stall it: a silent proxy, 3 s). fio logs every I/O's latency with Unix
 * timestamps, so each fault is charged the slowest I/O that completed between
 * it and the next fault. Prints a table; a measurement, not a test.
 *
 *   deno run -A bench/kernel_failover_stall.ts [--seconds 20] [--every-ms 3000]
 *
 * Without /dev/nbd0 and root it runs itself inside ../shared/vm/nbd-vm.
 * @module
 */
import { parseArgs } from "node:util";
import { findFreeDevice } from "../src/nbd/devices.ts";
import {
  applyFault,
  FAILOVER_LINE,
  type Fault,
  FAULTS,
  type LineChild,
  RETRY_LINE,
  type ServerProcess,
  sleep,
  stallServing,
  startAttachProcess,
  startServerProcess,
} from "./rigs/failover_rig.ts";

const USAGE = `usage: deno run -A bench/kernel_failover_stall.ts [options]
  --seconds N     length of each phase, no faults then faults (default 20)
  --every-ms N    one fault this often in the faults phase (default 3000)
  --warmup N      seconds of unmeasured fio first: Deno's JIT under emulation (default 10)
  --rw MODE       fio rw: randwrite, write, randread, read (default randwrite)
  --bs SIZE       fio block size (default 4k)
  --iodepth N     fio iodepth (default 8)
  --out FILE      also write the table to FILE (markdown)`;

const VM = new URL("../../shared/vm/nbd-vm", import.meta.url).pathname;

interface Options {
  seconds: number;
  everyMs: number;
  warmup: number;
  rw: string;
  bs: string;
  iodepth: number;
  out?: string;
}

function parse(args: string[]): Options | null {
  const { values } = parseArgs({
    args,
    options: {
      seconds: { type: "string" },
      "every-ms": { type: "string" },
      warmup: { type: "string" },
      rw: { type: "string" },
      bs: { type: "string" },
      iodepth: { type: "string" },
      out: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return null;
  const whole = (name: string, text: string | undefined, fallback: number) => {
    if (text === undefined) return fallback;
    if (!/^\d+$/.test(text) || Number(text) < 1) {
      throw new Error(`--${name} must be a positive whole number, got "${text}"`);
    }
    return Number(text);
  };
  const rw = values.rw ?? "randwrite";
  if (!["randwrite", "write", "randread", "read"].includes(rw)) {
    throw new Error(`--rw must be randwrite, write, randread or read, got "${rw}"`);
  }
  const bs = values.bs ?? "4k";
  if (!/^\d+[kKmM]?$/.test(bs)) throw new Error(`--bs must look like 4k or 1M, got "${bs}"`);
  return {
    seconds: whole("seconds", values.seconds, 20),
    everyMs: whole("every-ms", values["every-ms"], 3000),
    warmup: whole("warmup", values.warmup, 10),
    rw,
    bs,
    iodepth: whole("iodepth", values.iodepth, 8),
    out: values.out,
  };
}

/** One I/O from fio's latency log: completion time (Unix ms) and latency (ms). */
interface Sample {
  at: number;
  latencyMs: number;
}

interface Phase {
  samples: Sample[];
  /** fio's own figures from its JSON output: total latency max, completion latency percentiles. */
  ios: number;
  errors: number;
  maxLatencyMs: number;
  p999Ms: number;
  medianMs: number;
  startedAt: number;
  endedAt: number;
}

/** Runs fio on `device` for `seconds`, logging every I/O's total latency. */
async function runFio(
  device: string,
  options: Options,
  dir: string,
  name: string,
  seconds = options.seconds,
) {
  const prefix = `${dir}/${name}`;
  const startedAt = Date.now();
  const out = await new Deno.Command("fio", {
    args: [
      `--name=${name}`,
      `--filename=${device}`,
      "--ioengine=libaio",
      "--direct=1",
      `--rw=${options.rw}`,
      `--bs=${options.bs}`,
      `--iodepth=${options.iodepth}`,
      "--size=1G",
      "--time_based",
      `--runtime=${seconds}`,
      "--output-format=json",
      `--write_lat_log=${prefix}`,
      "--log_unix_epoch=1",
      "--per_job_logs=0",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const endedAt = Date.now();
  const text = new TextDecoder().decode(out.stdout);
  if (out.code !== 0) {
    throw new Error(`fio exited ${out.code}: ${new TextDecoder().decode(out.stderr)}${text}`);
  }
  const job = JSON.parse(text.slice(text.indexOf("{"))).jobs[0];
  const side = options.rw.includes("write") ? job.write : job.read;
  const samples: Sample[] = [];
  // "time_ms, latency_ns, direction, block size, offset[, priority]" per I/O.
  for (const line of (await Deno.readTextFile(`${prefix}_lat.log`)).split("\n")) {
    const fields = line.split(",");
    if (fields.length < 2) continue;
    samples.push({ at: Number(fields[0]), latencyMs: Number(fields[1]) / 1e6 });
  }
  // fio keeps percentiles of completion latency only (lat_percentiles is off).
  const pick = (p: string) => (side.clat_ns.percentile?.[p] ?? NaN) / 1e6;
  return {
    samples,
    ios: side.total_ios,
    errors: job.error ?? 0,
    maxLatencyMs: side.lat_ns.max / 1e6,
    p999Ms: pick("99.900000"),
    medianMs: pick("50.000000"),
    startedAt,
    endedAt,
  } satisfies Phase;
}

/** Longest time with no completion between the first and the last I/O. */
function longestGap(samples: Sample[]): number {
  const times = samples.map((s) => s.at).sort((a, b) => a - b);
  let gap = 0;
  for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i] - times[i - 1]);
  return gap;
}

/** The rig's faults plus a silent proxy (hung-proxy detection, default settings). */
type BenchFault = Fault | "stall";
const BENCH_FAULTS: readonly BenchFault[] = [...FAULTS, "stall"];

interface FaultDone {
  fault: BenchFault;
  at: number;
  proxy: number | null;
}

async function faultEvery(server: ServerProcess, everyMs: number, running: () => boolean) {
  const done: FaultDone[] = [];
  await sleep(everyMs);
  for (let turn = 0; running(); turn++) {
    const fault = BENCH_FAULTS[turn % BENCH_FAULTS.length];
    const at = Date.now();
    const hit = fault === "stall"
      ? await stallServing(server, turn)
      : await applyFault(server, fault, turn);
    done.push({ fault, at, proxy: hit.proxy });
    const next = at + everyMs;
    while (running() && Date.now() < next) await sleep(50);
  }
  return done;
}

const ms = (value: number) => value.toFixed(1);
/** A failover whose cause was a liveness probe left unanswered (a silent proxy found). */
const PROBE_FAILOVER_LINE = /failing over.*cause=probe-timeout/;

async function measure(options: Options): Promise<string> {
  const tmp = await Deno.makeTempDir({ prefix: "failover-stall-" });
  const password = "stall-bench-password";
  await Deno.writeTextFile(`${tmp}/password`, `${password}\n`, { mode: 0o600 });
  await Deno.writeTextFile(`${tmp}/users.json`, JSON.stringify([{ username: "bench", password }]), {
    mode: 0o600,
  });
  let server: ServerProcess | undefined;
  let attach: LineChild | undefined;
  try {
    const device = await findFreeDevice();
    if (!device) throw new Error("no free /dev/nbdN");
    server = await startServerProcess({
      proxies: 3,
      image: "disk",
      size: "1G",
      user: "bench",
      usersFile: `${tmp}/users.json`,
    });
    attach = await startAttachProcess({
      device,
      image: "disk",
      user: "bench",
      passwordFile: `${tmp}/password`,
      proxies: server.proxies,
    });
    // The first seconds run Deno's cold code (slow under emulation): not a failover's doing.
    await runFio(device, options, tmp, "warm-up", options.warmup);
    const quiet = await runFio(device, options, tmp, "no-faults");
    const failoversBefore = attach.count(FAILOVER_LINE);
    attach.watch(PROBE_FAILOVER_LINE);
    let running = true;
    const faultsDone = faultEvery(server, options.everyMs, () => running);
    const faulted = await runFio(device, options, tmp, "faults").finally(() => running = false);
    const faults = await faultsDone;
    const failovers = attach.count(FAILOVER_LINE) - failoversBefore;

    const rows: string[] = [];
    const byKind = new Map<BenchFault, number[]>();
    for (let i = 0; i < faults.length; i++) {
      const from = faults[i].at;
      const to = faults[i + 1]?.at ?? faulted.endedAt;
      const inWindow = faulted.samples.filter((s) => s.at >= from && s.at < to);
      const worst = Math.max(0, ...inWindow.map((s) => s.latencyMs));
      byKind.set(faults[i].fault, [...(byKind.get(faults[i].fault) ?? []), worst]);
      rows.push(
        `| ${i + 1} | ${faults[i].fault} | ${faults[i].proxy ?? "-"} | ${inWindow.length} | ${
          ms(worst)
        } |`,
      );
    }
    const worstOf = (values: number[]) => Math.max(...values);
    const lines = [
      `# Failover stall on the kernel path (${device})`,
      "",
      `fio ${options.rw} bs=${options.bs} iodepth=${options.iodepth} libaio O_DIRECT, ` +
      `${options.warmup} s unmeasured warm-up, then ${options.seconds} s per phase; a fault every ${options.everyMs} ms in the second; ` +
      `\`ivbsnetd attach\` over 3 IVBS test-server proxies (subprocesses); ${Deno.build.arch}, ` +
      (Deno.env.get("NBD_VM") ? "inside the NBD VM (TCG emulation)" : "on this host"),
      "",
      "| phase | I/Os | errors | clat median ms | clat p99.9 ms | max latency ms | longest gap ms |",
      "|---|---|---|---|---|---|---|",
      ...[["no faults", quiet], ["faults", faulted]].map(([name, p]) => {
        const phase = p as Phase;
        return `| ${name} | ${phase.ios} | ${phase.errors} | ${ms(phase.medianMs)} | ${
          ms(phase.p999Ms)
        } | ${ms(phase.maxLatencyMs)} | ${ms(longestGap(phase.samples))} |`;
      }),
      "",
      `Faults: ${faults.length}; failovers the attach process logged meanwhile: ${failovers} ` +
      `(${attach.count(PROBE_FAILOVER_LINE)} after an unanswered liveness probe); ` +
      `retries logged in all: ${attach.count(RETRY_LINE)}.`,
      "",
      "Worst I/O latency that completed after each kind of fault (before the next one), ms:",
      "",
      "| fault | count | worst | all |",
      "|---|---|---|---|",
      ...[...byKind].map(([kind, values]) =>
        `| ${kind} | ${values.length} | ${ms(worstOf(values))} | ${values.map(ms).join(", ")} |`
      ),
      "",
      "<details><summary>every fault</summary>",
      "",
      "| # | fault | proxy | I/Os after it | worst latency ms |",
      "|---|---|---|---|---|",
      ...rows,
      "",
      "</details>",
      "",
    ];
    return lines.join("\n");
  } finally {
    const detached = await attach?.stop("SIGTERM", 120_000);
    if (detached && detached.code !== 0) console.error(`attach exited ${detached.code}`);
    await server?.stop();
    await Deno.remove(tmp, { recursive: true });
  }
}

async function main(args: string[]): Promise<number> {
  let options: Options | null;
  try {
    options = parse(args);
  } catch (error) {
    console.error(`${error instanceof Error ? error.message : error}\n${USAGE}`);
    return 2;
  }
  if (options === null) {
    console.log(USAGE);
    return 0;
  }
  let inKernelReach = false;
  try {
    Deno.statSync("/dev/nbd0");
    inKernelReach = Deno.uid() === 0;
  } catch {
    // No device here.
  }
  if (!inKernelReach) {
    try {
      Deno.statSync(VM);
    } catch {
      console.error(`no /dev/nbd0 (or not root) and no NBD VM at ${VM}`);
      return 2;
    }
    const script = new URL(import.meta.url).pathname;
    const status = await new Deno.Command(VM, {
      args: [
        "--mem",
        "4G",
        "--timeout",
        "1800",
        "--",
        Deno.execPath(),
        "run",
        "-A",
        script,
        ...args,
      ],
      cwd: new URL("..", import.meta.url).pathname,
    }).spawn().status;
    return status.code;
  }
  const table = await measure(options);
  console.log(table);
  if (options.out) await Deno.writeTextFile(options.out, table);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
