/**
 * Connections per kernel device, measured: `ivbsnetd serve` with
 * nbd.connections 1, 2 and 4 in interleaved rounds (each round runs every
 * count once, the order rotating), over an IVBS test server with 4 proxies,
 * fio with 4 jobs (libaio, direct) on the raw /dev/nbdX. Prints medians with
 * min–max per row; the default of nbd.connections is chosen from it.
 *
 * Run in the NBD VM with as many CPUs as connections (the block layer maps
 * CPUs to the device's hardware queues, one per connection):
 *   /work/shared/vm/nbd-vm --mem 3G --cpus 4 -- deno run -A bench/kernel_connections.ts --rounds 3
 * @module
 */
import { parseArgs } from "node:util";
import { DaemonProcess, USER, writeConfig } from "./rigs/daemon_harness.ts";
import { mountedOn } from "./rigs/restart_rig.ts";
import { startIvbsServer } from "../src/ivbs/server/mod.ts";

const MIB = 1024 * 1024;
const COUNTS = [1, 2, 4];

interface Row {
  name: string;
  rw: "write" | "randread" | "randwrite";
  bs: string;
  iodepth: number;
  unit: "MB/s" | "IOPS";
}

const ROWS: Row[] = [
  { name: "seq write 1M qd8 x4 jobs", rw: "write", bs: "1M", iodepth: 8, unit: "MB/s" },
  { name: "rand read 4k qd16 x4 jobs", rw: "randread", bs: "4k", iodepth: 16, unit: "IOPS" },
  { name: "rand write 64k qd8 x4 jobs", rw: "randwrite", bs: "64k", iodepth: 8, unit: "MB/s" },
];

async function fio(device: string, row: Row, seconds: number): Promise<number> {
  const out = await new Deno.Command("fio", {
    args: [
      `--name=${row.rw}`,
      `--filename=${device}`,
      `--rw=${row.rw}`,
      `--bs=${row.bs}`,
      `--iodepth=${row.iodepth}`,
      "--numjobs=4",
      "--offset_increment=256M",
      "--size=256M",
      "--ioengine=libaio",
      "--direct=1",
      "--time_based",
      `--runtime=${seconds}`,
      "--ramp_time=1",
      "--group_reporting",
      "--output-format=json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`fio: ${new TextDecoder().decode(out.stderr)}`);
  const text = new TextDecoder().decode(out.stdout);
  const job = JSON.parse(text.slice(text.indexOf("{"))).jobs[0];
  const side = row.rw === "randread" ? job.read : job.write;
  return row.unit === "MB/s" ? side.bw_bytes / 1e6 : side.iops;
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
};

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rounds: { type: "string", default: "3" },
      seconds: { type: "string", default: "6" },
    },
  });
  const rounds = Number(values.rounds);
  const seconds = Number(values.seconds);
  const ivbs = await startIvbsServer({
    users: [USER],
    images: [{ name: "disk", size: 1024 * MIB }],
    listProxiesIntervalMs: 0,
    ports: [0, 0, 0, 0],
  });
  const results = new Map<string, number[]>();
  try {
    for (let round = 0; round < rounds; round++) {
      const order = COUNTS.map((_, i) => COUNTS[(i + round) % COUNTS.length]);
      for (const connections of order) {
        const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-state-" });
        const { dir, path } = await writeConfig({
          http: { listen: "127.0.0.1:0" },
          ivbs: { proxies: ivbs.addresses() },
          nbd: { attach: "netlink", connections },
          users: [USER],
          mounts: [{ device: "auto", image: "disk", user: USER.username }],
          stateDir,
        });
        const daemon = await DaemonProcess.start(path);
        try {
          const { device } = await mountedOn(daemon.url);
          for (const row of ROWS) {
            const value = await fio(device, row, seconds);
            const key = `${row.name}|${connections}`;
            results.set(key, [...results.get(key) ?? [], value]);
            console.error(
              `round ${round + 1} connections ${connections} ${row.name}: ${
                value.toFixed(0)
              } ${row.unit}`,
            );
          }
        } finally {
          await daemon.stop("SIGINT");
          await Deno.remove(dir, { recursive: true });
          await Deno.remove(stateDir, { recursive: true });
        }
      }
    }
  } finally {
    await ivbs.close();
  }
  console.log(`| row | ${COUNTS.map((n) => `${n} connection${n > 1 ? "s" : ""}`).join(" | ")} |`);
  console.log(`|---|${COUNTS.map(() => "---|").join("")}`);
  for (const row of ROWS) {
    const cells = COUNTS.map((n) => {
      const v = results.get(`${row.name}|${n}`) ?? [];
      return `${median(v).toFixed(0)} (${Math.min(...v).toFixed(0)}–${Math.max(...v).toFixed(0)})`;
    });
    console.log(`| ${row.name} (${row.unit}) | ${cells.join(" | ")} |`);
  }
}
