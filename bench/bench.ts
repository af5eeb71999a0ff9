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
 * Targets run interleaved (bench/rounds.ts): a warm-up, then `--rounds` rounds
 * in which every target runs every workload once, the order rotating; each
 * cell is the median (min–max) over the rounds, ratios to the peer are taken
 * per round, and CPU µs per I/O counts every process of a target (ivbsnetd:
 * the daemon and the IVBS test server; peer: both nbdkit processes).
 *
 * usage: deno run -A bench/bench.ts host|kernel [--rounds 3] [--seconds 5]
 *          [--only SUBSTRING[,SUBSTRING]] [--out FILE] [--before DIR] [--no-ceiling]
 *          [--before-v8-flags ARG] [--connections N] [--peer-tcp] [--warmup SECONDS]
 *   --before DIR: also run the export pair of another checkout (before/after, same run).
 *   --before-v8-flags ARG: the before pair's `--v8-flags=…` argument instead of
 *     ours (src/runtime_flags.ts); "" runs it with V8's defaults.
 *   --connections N: add the 1 MiB qd8 rows with N fio jobs, one NBD connection each
 *     (host setting: each export connection has its own IVBS session).
 *   --peer-tcp: also run the peer with its second hop over TCP 127.0.0.1, as
 *     the daemon's hop to IVBS is ("peer tcp"; ratios stay against "peer").
 *   --warmup SECONDS: the untimed job each target runs per workload before the
 *     rounds (default 2); qd1 tails need longer on this machine (bench/results.md).
 * @module
 */
import { parseArgs } from "node:util";
import { connectionRows, WORKLOADS } from "./fio.ts";
import { Child, exists, freePort, portOpen, type Usage, waitFor } from "./processes.ts";
import { V8_FLAGS_ARG } from "../src/runtime_flags.ts";
import {
  comparisonTable,
  fmt,
  hostLine,
  loadAverage,
  type RoundTarget,
  runRounds,
  type Samples,
} from "./rounds.ts";

const IMAGE_SIZE = "2G";
const FIO_FILE_SIZE = "1G";
const MAIN = new URL("../main.ts", import.meta.url).pathname;
/** Warm-up per target and workload unless `--warmup` says otherwise. */
const WARMUP_SECONDS = 2;

interface Setup {
  targets: RoundTarget[];
  children: Child[];
  /** The ivbsnetd process whose CPU and RSS we report. */
  ivbsnetd: Child;
  teardown(): Promise<void>;
}

/** Our processes run as the product does (src/runtime_flags.ts) unless told otherwise. */
function deno(name: string, args: string[], main = MAIN, v8Flags = V8_FLAGS_ARG): Child {
  const flags = v8Flags === "" ? [] : [v8Flags];
  return new Child(name, Deno.execPath(), ["run", "--allow-all", ...flags, main, ...args]);
}

async function startIvbsServer(
  dir: string,
  main = MAIN,
  v8Flags = V8_FLAGS_ARG,
): Promise<{ child: Child; port: number }> {
  const port = freePort();
  const child = deno(
    "ivbs-server",
    [
      "ivbs-server",
      "--port",
      String(port),
      "--create",
      `bench:${IMAGE_SIZE}`,
      "--user",
      "bench:bench",
    ],
    main,
    v8Flags,
  );
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

/**
 * nbdkit nbd → nbdkit memory with the second hop over TCP 127.0.0.1, like the
 * daemon's hop to IVBS (`--peer-tcp`): separates what the transport costs
 * from what the implementation costs. [nbdkit memory, nbdkit nbd].
 */
async function startNbdkitTcpPeers(dir: string): Promise<Child[]> {
  const port = freePort();
  const memory = new Child("nbdkit memory (tcp)", "nbdkit", [
    "--foreground",
    "--ipaddr",
    "127.0.0.1",
    "--port",
    String(port),
    "memory",
    IMAGE_SIZE,
  ]);
  await waitFor("nbdkit memory on TCP", () => portOpen(port));
  const proxy = new Child("nbdkit nbd (tcp)", "nbdkit", [
    "--foreground",
    "--unix",
    `${dir}/peer-tcp.sock`,
    "nbd",
    "hostname=127.0.0.1",
    `port=${port}`,
  ]);
  await waitFor("nbdkit nbd over TCP", () => exists(`${dir}/peer-tcp.sock`));
  return [memory, proxy];
}

/** [nbdkit memory, nbdkit nbd in front of it]. */
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

/** `ivbsnetd export` (from the tree of `main`) in front of its own IVBS test server. */
async function startExportPair(
  dir: string,
  label: string,
  main = MAIN,
  v8Flags = V8_FLAGS_ARG,
): Promise<{ export: Child; server: Child; uri: string }> {
  const server = await startIvbsServer(dir, main, v8Flags);
  const socket = `${dir}/${label}.sock`;
  const child = deno(
    `${label} export`,
    [
      "export",
      "--socket",
      socket,
      "--name",
      "bench",
      ...ivbsArgs(dir, server.port),
    ],
    main,
    v8Flags,
  );
  await waitFor(`the ${label} export`, () => exists(socket));
  return { export: child, server: server.child, uri: `nbd+unix:///bench?socket=${socket}` };
}

/**
 * `before`: another checkout whose export pair runs interleaved beside ours
 * (before/after), with `beforeV8Flags` (a `--v8-flags=` argument, "" for V8's
 * defaults); `peerTcp`: also the peer with its second hop over TCP.
 */
async function setupHost(
  dir: string,
  before?: string,
  beforeV8Flags = V8_FLAGS_ARG,
  peerTcp = false,
): Promise<Setup> {
  const ours = await startExportPair(dir, "ivbsnetd");
  const old = before
    ? await startExportPair(dir, "before", `${before}/main.ts`, beforeV8Flags)
    : undefined;
  const peers = await startNbdkitPeers(dir);
  const tcpPeers = peerTcp ? await startNbdkitTcpPeers(dir) : [];
  const uri = (socket: string) => `nbd+unix:///?socket=${dir}/${socket}`;
  const children = [
    ours.export,
    ours.server,
    ...(old ? [old.export, old.server] : []),
    ...peers,
    ...tcpPeers,
  ];
  const target = (label: string, uri: string, processes: Child[]): RoundTarget => ({
    label,
    fio: { kind: "nbd-uri", uri },
    processes,
  });
  return {
    targets: [
      target("ivbsnetd", ours.uri, [ours.export, ours.server]),
      ...(old ? [target("before", old.uri, [old.export, old.server])] : []),
      // nbdkit nbd first: the front process, as the export is ours.
      target("peer", uri("peer.sock"), [peers[1], peers[0]]),
      ...(peerTcp ? [target("peer tcp", uri("peer-tcp.sock"), [tcpPeers[1], tcpPeers[0]])] : []),
      target("ceiling", uri("memory.sock"), [peers[0]]),
    ],
    children,
    ivbsnetd: ours.export,
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
      {
        label: "ivbsnetd",
        fio: { kind: "block-device", path: "/dev/nbd0" },
        processes: [ivbsnetd, server.child],
      },
      {
        label: "peer",
        fio: { kind: "block-device", path: "/dev/nbd1" },
        processes: [peers[1], peers[0]],
      },
      {
        label: "ceiling",
        fio: { kind: "block-device", path: "/dev/nbd2" },
        processes: [peers[0]],
      },
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

async function main() {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: {
      rounds: { type: "string", default: "3" },
      seconds: { type: "string", default: "5" },
      out: { type: "string" },
      only: { type: "string" },
      before: { type: "string" },
      "before-v8-flags": { type: "string" },
      "no-ceiling": { type: "boolean" },
      connections: { type: "string" },
      "peer-tcp": { type: "boolean" },
      warmup: { type: "string", default: String(WARMUP_SECONDS) },
    },
  });
  const setting = positionals[0];
  if (setting !== "host" && setting !== "kernel") {
    console.error(
      "usage: bench.ts host|kernel [--rounds N] [--seconds N] [--out FILE] [--only SUBSTRING]",
    );
    Deno.exit(2);
  }
  const rounds = Number(values.rounds);
  const seconds = Number(values.seconds);
  const warmupSeconds = Number(values.warmup);
  const loadBefore = loadAverage();
  const dir = await Deno.makeTempDir({ prefix: "ivbsnetd-bench-" });
  const setup = setting === "host"
    ? await setupHost(dir, values.before, values["before-v8-flags"], values["peer-tcp"])
    : await setupKernel(dir);
  if (values["no-ceiling"]) setup.targets = setup.targets.filter((t) => t.label !== "ceiling");
  const workloads = [...WORKLOADS, ...connectionRows(Number(values.connections ?? 1))].filter(
    (w) => !values.only || values.only.split(",").some((o) => w.name.includes(o)),
  );
  const extra: string[] = [];
  let samples: Samples;
  let usage: Usage | undefined;
  try {
    samples = await runRounds(setup.targets, workloads, {
      rounds,
      seconds,
      warmupSeconds,
      fileSize: FIO_FILE_SIZE,
    });
    if (setting === "kernel") {
      const dd = [];
      for (const target of setup.targets) {
        if (target.fio.kind === "block-device") dd.push(await ddWrite(target.fio.path));
      }
      extra.push(
        `dd 1 GiB bs=1M oflag=direct, one run each: ivbsnetd ${fmt(dd[0], 1)} MB/s, peer ${
          fmt(dd[1], 1)
        } MB/s, ceiling ${fmt(dd[2], 1)} MB/s (**${(dd[0] / dd[1]).toFixed(2)}×** the peer).`,
        "",
      );
    }
    usage = setup.ivbsnetd.usage();
  } finally {
    await setup.teardown();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const { lines, notes } = comparisonTable(
    workloads,
    samples,
    setup.targets.map((t) => t.label),
    "peer",
  );
  const report = [
    `## Setting ${setting === "host" ? "A: host, fio nbd engine" : "B: kernel /dev/nbdX"}`,
    "",
    `${new Date().toISOString()}; ${hostLine()} at the end (${loadBefore} at the start; the ` +
    `host is shared with other work); ${rounds} interleaved rounds of ${seconds} s per ` +
    `time-based job after a ${warmupSeconds} s warm-up each; image ${IMAGE_SIZE}, fio size ` +
    `${FIO_FILE_SIZE}. Each cell: median (min–max) over the rounds; ratios are taken per round ` +
    "against the peer (2 hops: nbdkit nbd → nbdkit memory); CPU µs per I/O counts all of a " +
    "target's processes (ivbsnetd: the daemon + the IVBS test server; peer: both nbdkits), " +
    "then split: front = the daemon / nbdkit nbd, store = the IVBS test server (a stand-in " +
    "for IVBS, not the product) / nbdkit memory.",
    "",
    ...lines,
    "",
    ...extra,
    ...(notes.length > 0 ? [...notes.map((n) => `- ${n}`), ""] : []),
    `ivbsnetd process: ${usage?.cpuSeconds.toFixed(1)} s CPU, peak RSS ${
      usage?.peakRssMiB.toFixed(0)
    } MiB over the whole run.`,
    "",
  ].join("\n");
  console.log(`\n${report}`);
  if (values.out) await Deno.writeTextFile(values.out, report);
}

if (import.meta.main) await main();
