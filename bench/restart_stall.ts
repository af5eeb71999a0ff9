/**
 * How long a daemon restart stalls a busy filesystem, and whether it costs an
 * error: ext4 on a netlink-attached /dev/nbdN served by `ivbsnetd serve`, a fio
 * write+verify job on it (randwrite 64k, iodepth 16, crc32c, per-I/O latency
 * log), and the daemon replaced under fio by each restart kind in turn:
 * `kill -9` then start, SIGTERM then start (planned restart), and
 * `serve --replace` (the new daemon stops the old one once it is ready).
 * Reports, per kind and round, the longest I/O stall fio saw, fio's errors,
 * the kernel's "I/O error" lines and any other error line (bench/rigs/kernel_log.ts),
 * and when the new daemon was listening and had the device back.
 * A measurement, not a test (tests/kernel/restart_test.ts asserts).
 *
 *   deno run -A bench/restart_stall.ts [--rounds 1] [--fio-mb 512] [--requeue-after 2]
 *     [--kinds "serve --replace"] [--before DIR]
 *
 * `--before DIR` runs every kind a second time with the daemon of another
 * checkout (e.g. `git worktree add --detach DIR 6320cf8`), interleaved in the
 * same rounds: before and after in one run.
 *
 * Without /dev/nbd0 and root it runs itself inside ../shared/vm/nbd-vm.
 * @module
 */
import { parseArgs } from "node:util";
import {
  lifecycle,
  RESTART_KINDS,
  type RestartKind,
  type RestartOutcome,
  restartUnderFio,
} from "./rigs/restart_rig.ts";

const USAGE = `usage: deno run -A bench/restart_stall.ts [options]
  --rounds N          rounds; each runs every restart kind once, interleaved (default 1)
  --fio-mb N          fio file size in MiB (default 512)
  --requeue-after S   nbd.requeueAfterS of the daemon (default 2)
  --dead-conn S       nbd.deadConnTimeoutS of the daemon (default 120)
  --restart-after N   MiB the device has seen written when the restart begins (default 32)
  --kinds LIST        restart kinds, comma-separated (default: ${RESTART_KINDS.join(",")})
  --before DIR        also run each kind with the daemon of the checkout DIR (before/after)
  --out FILE          also write the table to FILE (markdown)`;

const VM = new URL("../../shared/vm/nbd-vm", import.meta.url).pathname;

function canRunHere(): boolean {
  try {
    Deno.statSync("/dev/nbd0");
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    rounds: { type: "string", default: "1" },
    "fio-mb": { type: "string", default: "512" },
    "requeue-after": { type: "string", default: "2" },
    "dead-conn": { type: "string", default: "120" },
    out: { type: "string" },
    kinds: { type: "string" },
    "restart-after": { type: "string", default: "32" },
    before: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(USAGE);
  Deno.exit(0);
}

if (!canRunHere()) {
  console.log(`no /dev/nbd0 or not root: running inside ${VM}`);
  const status = await new Deno.Command(VM, {
    args: [
      "--mem",
      "4G",
      "--timeout",
      "3600",
      "--",
      "deno",
      "run",
      "-A",
      "bench/restart_stall.ts",
      ...Deno.args,
    ],
    cwd: new URL("..", import.meta.url).pathname,
  }).spawn().status;
  Deno.exit(status.code);
}

const options = {
  fioMb: Number(values["fio-mb"]),
  requeueAfterS: Number(values["requeue-after"]),
  deadConnTimeoutS: Number(values["dead-conn"]),
  restartAfterMb: Number(values["restart-after"]),
};
const kinds = values.kinds === undefined
  ? RESTART_KINDS
  : values.kinds.split(",").map((k) => k.trim()) as RestartKind[];
for (const kind of kinds) {
  if (!RESTART_KINDS.includes(kind)) {
    console.error(`unknown restart kind "${kind}" (kinds: ${RESTART_KINDS.join(", ")})`);
    Deno.exit(2);
  }
}
/** Which checkouts run: ours ("after"), and with --before the other one first. */
const builds: { label: string; main?: string }[] = values.before
  ? [
    { label: "before", main: `${values.before.replace(/\/+$/, "")}/main.ts` },
    { label: "after" },
  ]
  : [{ label: "" }];
const rows: string[] = [];
const outcomes: RestartOutcome[] = [];
for (let round = 1; round <= Number(values.rounds); round++) {
  for (const kind of kinds) {
    for (const build of builds) {
      const label = build.label ? `${kind} (${build.label})` : kind;
      console.log(`round ${round}: ${label} …`);
      const o = await restartUnderFio(kind, { ...options, main: build.main });
      outcomes.push(o);
      const errors = o.fioError === 0 && o.fioCode === 0 ? 0 : 1;
      rows.push(
        `| ${label} | ${round} | **${o.stallMs.toFixed(0)}** | ${errors} | ${o.ioErrorLines} | ` +
          `${o.kernelErrors.length} | ${(o.verifiedBytes / 2 ** 20).toFixed(0)} | ` +
          `${o.listeningMs.toFixed(0)} | ${o.backMs.toFixed(0)} |`,
      );
      console.log(rows.at(-1));
      for (const line of o.kernelErrors) console.log(`  kernel: ${line}`);
      // Where the pause went: the daemons' start, take-over and shutdown lines.
      for (const line of [...lifecycle(o.oldLog), "--", ...lifecycle(o.newLog)]) {
        console.log(`  ${line}`);
      }
    }
  }
}

const cpus = (await Deno.readTextFile("/proc/cpuinfo")).split("\n")
  .filter((line) => line.startsWith("model name")).length;
const table = [
  "## Restart stall (kernel /dev/nbdX, netlink)",
  "",
  `${new Date().toISOString()}; ${cpus} CPUs${
    Deno.env.get("NBD_VM") ? " (NBD VM, TCG emulation)" : ""
  }; ext4, fio ${options.fioMb} MiB randwrite 64k qd16 libaio O_DIRECT + crc32c verify; ` +
  `nbd.requeueAfterS ${options.requeueAfterS}, nbd.deadConnTimeoutS ${options.deadConnTimeoutS}; ` +
  `the restart begins once fio has written ${options.restartAfterMb} MiB.` +
  (values.before ? ` before: the daemon of ${values.before}; after: this checkout.` : ""),
  "",
  "| restart | round | longest I/O stall ms | fio errors | kernel I/O error lines | other kernel error lines | verified MiB | new daemon listening at ms | device back at ms |",
  "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ...rows,
].join("\n");
console.log(`\n${table}`);
if (values.out) await Deno.writeTextFile(values.out, table + "\n");
