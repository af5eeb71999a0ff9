/**
 * Benchmark ivbsnetd side by side with the NBD peers a user would pick instead,
 * in one run on one machine (issue 7). Two settings:
 *
 *   host:   fio --ioengine=nbd (libnbd) over unix sockets, no kernel:
 *           ivbsnetd export → IVBS test server (memory)      "ivbsnetd"
 *           nbdkit nbd plugin → nbdkit memory (two hops)      "peer"
 *           nbdkit memory alone                               "ceiling"
 *   kernel: fio libaio direct on /dev/nbdX (run inside the NBD VM):
 *           /dev/nbd0 → ivbsnetd attach → IVBS test server    "ivbsnetd"
 *           /dev/nbd1 → nbd-client → nbdkit nbd → nbdkit memory "peer"
 *           /dev/nbd2 → nbd-client → nbdkit memory             "ceiling"
 *
 * usage: deno run -A bench/bench.ts host|kernel [--seconds 10] [--out FILE]
 * @module
 */
import { parseArgs } from "node:util";
import { type FioResult, type FioTarget, runFio, type Workload, WORKLOADS } from "./fio.ts";
import { Child, exists, freePort, portOpen, type Usage, waitFor } from "./processes.ts";

const IMAGE_SIZE = "2G";
const FIO_FILE_SIZE = "1G";
const MAIN = new URL("../main.ts", import.meta.url).pathname;

interface Target {
  label: "ivbsnetd" | "peer" | "ceiling";
  fio: FioTarget;
}

interface Setup {
  targets: Target[];
  children: Child[];
  /** The ivbsnetd process whose CPU and RSS we report. */
  ivbsnetd: Child;
  teardown(): Promise<void>;
}

function deno(name: string, args: string[]): Child {
  return new Child(name, Deno.execPath(), ["run", "--allow-all", MAIN, ...args]);
}

async function startIvbsServer(dir: string): Promise<{ child: Child; port: number }> {
  const port = freePort();
  const child = deno("ivbs-server", [
    "ivbs-server",
    "--port",
    String(port),
    "--create",
    `bench:${IMAGE_SIZE}`,
    "--user",
    "bench:bench",
  ]);
  await waitFor("the IVBS test server", () => portOpen(port));
  await Deno.writeTextFile(`${dir}/password`, "bench\n", { mode: 0o600 });
  return { child, port };
}

function ivbsArgs(dir: string, port: number): string[] {
  return [
    "--image",
    "bench",
    "--user",
    "bench",
    "--password-file",
    `${dir}/password`,
    "--proxy",
    `127.0.0.1:${port}`,
  ];
}

async function startNbdkitPeers(dir: string): Promise<Child[]> {
  const memory = new Child("nbdkit memory", "nbdkit", [
    "--foreground",
    "--unix",
    `${dir}/memory.sock`,
    "memory",
    IMAGE_SIZE,
  ]);
  await waitFor("nbdkit memory", () => exists(`${dir}/memory.sock`));
  const proxy = new Child("nbdkit nbd", "nbdkit", [
    "--foreground",
    "--unix",
    `${dir}/peer.sock`,
    "nbd",
    `socket=${dir}/memory.sock`,
  ]);
  await waitFor("nbdkit nbd", () => exists(`${dir}/peer.sock`));
  return [memory, proxy];
}

async function setupHost(dir: string): Promise<Setup> {
  const server = await startIvbsServer(dir);
  const ivbsnetd = deno("ivbsnetd export", [
    "export",
    "--socket",
    `${dir}/ivbsnetd.sock`,
    "--name",
    "bench",
    ...ivbsArgs(dir, server.port),
  ]);
  await waitFor("the ivbsnetd export", () => exists(`${dir}/ivbsnetd.sock`));
  const peers = await startNbdkitPeers(dir);
  const uri = (socket: string, name = "") => `nbd+unix:///${name}?socket=${dir}/${socket}`;
  const children = [ivbsnetd, server.child, ...peers];
  return {
    targets: [
      { label: "ivbsnetd", fio: { kind: "nbd-uri", uri: uri("ivbsnetd.sock", "bench") } },
      { label: "peer", fio: { kind: "nbd-uri", uri: uri("peer.sock") } },
      { label: "ceiling", fio: { kind: "nbd-uri", uri: uri("memory.sock") } },
    ],
    children,
    ivbsnetd,
    teardown: async () => {
      for (const child of children) await child.stop();
    },
  };
}

function deviceSize(name: string): number {
  try {
    return Number(Deno.readTextFileSync(`/sys/block/${name}/size`).trim());
  } catch {
    return 0;
  }
}

async function nbdClient(args: string[]): Promise<void> {
  const out = await new Deno.Command("nbd-client", { args, stdout: "piped", stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`nbd-client ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
}

async function setupKernel(dir: string): Promise<Setup> {
  if (!exists("/dev/nbd2")) throw new Error("kernel setting needs /dev/nbd0..2: run in the VM");
  const server = await startIvbsServer(dir);
  const ivbsnetd = deno("ivbsnetd attach", [
    "attach",
    "--device",
    "/dev/nbd0",
    ...ivbsArgs(dir, server.port),
  ]);
  await waitFor("/dev/nbd0 attached", () => deviceSize("nbd0") > 0);
  const peers = await startNbdkitPeers(dir);
  await nbdClient(["-unix", `${dir}/peer.sock`, "/dev/nbd1", "-b", "4096"]);
  await nbdClient(["-unix", `${dir}/memory.sock`, "/dev/nbd2", "-b", "4096"]);
  const children = [ivbsnetd, server.child, ...peers];
  return {
    targets: [
      { label: "ivbsnetd", fio: { kind: "block-device", path: "/dev/nbd0" } },
      { label: "peer", fio: { kind: "block-device", path: "/dev/nbd1" } },
      { label: "ceiling", fio: { kind: "block-device", path: "/dev/nbd2" } },
    ],
    children,
    ivbsnetd,
    teardown: async () => {
      await nbdClient(["-d", "/dev/nbd1"]).catch((e) => console.error(String(e)));
      await nbdClient(["-d", "/dev/nbd2"]).catch((e) => console.error(String(e)));
      for (const child of children) await child.stop();
    },
  };
}

/** Literal `dd bs=1M count=1024 oflag=direct` onto a block device, like the 2013 figures. */
async function ddWrite(path: string): Promise<number> {
  const out = await new Deno.Command("dd", {
    args: ["if=/dev/zero", `of=${path}`, "bs=1M", "count=1024", "oflag=direct"],
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr);
  const match = /copied, ([\d.]+) s/.exec(text);
  if (!out.success || !match) throw new Error(`dd on ${path} failed: ${text}`);
  return (1024 * 1024 * 1024) / Number(match[1]) / 1e6;
}

function fmt(value: number, digits = 0): string {
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

function row(workload: Workload, results: Record<string, FioResult>): string {
  const ours = results.ivbsnetd;
  const peer = results.peer;
  const ceiling = results.ceiling;
  const digits = workload.unit === "MB/s" ? 1 : 0;
  const ratio = peer.value > 0 ? ours.value / peer.value : 0;
  const p99Ratio = peer.p99Us > 0 ? ours.p99Us / peer.p99Us : 0;
  return `| ${workload.name} | ${workload.unit} | ${fmt(ours.value, digits)} | ${
    fmt(peer.value, digits)
  } | ${fmt(ceiling.value, digits)} | **${ratio.toFixed(2)}** | ${fmt(ours.p50Us)} / ${
    fmt(ours.p99Us)
  } | ${fmt(peer.p50Us)} / ${fmt(peer.p99Us)} | ${p99Ratio.toFixed(2)} |`;
}

async function main() {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      seconds: { type: "string", default: "10" },
      out: { type: "string" },
      only: { type: "string" },
    },
  });
  const setting = positionals[0];
  if (setting !== "host" && setting !== "kernel") {
    console.error("usage: bench.ts host|kernel [--seconds N] [--out FILE] [--only SUBSTRING]");
    Deno.exit(2);
  }
  const seconds = Number(values.seconds);
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-bench-" });
  const setup = setting === "host" ? await setupHost(dir) : await setupKernel(dir);
  const lines: string[] = [];
  let usage: Usage | undefined;
  try {
    const workloads = WORKLOADS.filter((w) => !values.only || w.name.includes(values.only));
    for (const workload of workloads) {
      const results: Record<string, FioResult> = {};
      for (const target of setup.targets) {
        results[target.label] = await runFio(target.fio, workload, {
          seconds,
          fileSize: FIO_FILE_SIZE,
        });
      }
      const line = row(workload, results);
      console.log(line);
      lines.push(line);
    }
    if (setting === "kernel") {
      const dd = [];
      for (const target of setup.targets) {
        if (target.fio.kind === "block-device") dd.push(await ddWrite(target.fio.path));
      }
      const line = `| dd 1 GiB bs=1M oflag=direct | MB/s | ${fmt(dd[0], 1)} | ${fmt(dd[1], 1)} | ${
        fmt(dd[2], 1)
      } | **${(dd[0] / dd[1]).toFixed(2)}** | | | |`;
      console.log(line);
      lines.push(line);
    }
    usage = setup.ivbsnetd.usage();
  } finally {
    await setup.teardown();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const cpuModel = /model name\s*:\s*(.*)/.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1];
  const report = [
    `## Setting ${setting === "host" ? "A: host, fio nbd engine" : "B: kernel /dev/nbdX"}`,
    "",
    `${new Date().toISOString()}; ${navigator.hardwareConcurrency} CPUs (${cpuModel}); ` +
    `fio ${seconds} s per time-based job; image ${IMAGE_SIZE}, fio size ${FIO_FILE_SIZE}.`,
    "",
    "| workload | unit | ivbsnetd | peer (2 hops) | ceiling (1 hop) | ivbsnetd / peer | " +
    "ivbsnetd p50 / p99 µs | peer p50 / p99 µs | p99 ratio |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ...lines,
    "",
    `ivbsnetd process: ${usage?.cpuSeconds.toFixed(1)} s CPU, peak RSS ${
      usage?.peakRssMiB.toFixed(0)
    } MiB over the whole run.`,
    "",
  ].join("\n");
  console.log(`\n${report}`);
  if (values.out) await Deno.writeTextFile(values.out, report);
}

if (import.meta.main) await main();
