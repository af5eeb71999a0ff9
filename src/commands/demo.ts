/**
 * `ivbsnetd demo` (`deno task demo`): everything on one machine. Starts the
 * embedded IVBS test server (memory image "demo", user demo / password demo),
 * the daemon with its HTTP API on 127.0.0.1:8080, serves the image as the NBD
 * export "demo" on a unix socket (this works anywhere: no root, no kernel nbd)
 * and prints the nbdinfo / qemu-img / qemu-io / fio command lines to use it.
 * When the kernel has nbd and we are root it also mounts the image on the first
 * free /dev/nbdX; otherwise it says exactly why. Runs until Ctrl-C or SIGTERM:
 * both detach the device and stop the test server, because nothing would take
 * over a demo's device (unlike `serve`, where SIGTERM leaves it to the next daemon).
 * @module
 */
import { UsageError } from "../args.ts";
import type { CommandLine } from "../command_line.ts";
import { startIvbsServer } from "../ivbs/server/mod.ts";
import { logger } from "../log.ts";
import { type DaemonConfig, type ListenAddress, parseConfig } from "../daemon/config.ts";
import type { Daemon } from "../daemon/daemon.ts";
import { nbdHealthOf } from "../daemon/host_health.ts";
import { listenFlag, type ServeDependencies, startServing } from "./serve.ts";
import { onStopSignal } from "./signals.ts";
import type { DEMO } from "./definitions.ts";

const GIB = 1024 * 1024 * 1024;

/** Command lines that use an NBD export, for people to paste (the URI is single-quoted). */
export function exportUsage(uri: string): string[] {
  const quoted = `'${uri.replaceAll("'", "'\\''")}'`;
  return [
    `nbdinfo ${quoted}`,
    `qemu-img info ${quoted}`,
    `qemu-io -f raw -c 'write -P 0xa5 0 1M' -c 'read -P 0xa5 0 1M' ${quoted}`,
    `fio --name=demo --ioengine=nbd --uri=${quoted} --rw=randrw --bs=64k --iodepth=16 --size=256M --runtime=10 --time_based`,
  ];
}

/** `ivbsnetd demo` on this machine (mounting where the kernel and our uid allow). */
export async function run(line: CommandLine<typeof DEMO.flags>): Promise<number> {
  const { kernelMountDriver } = await import("./kernel_driver.ts");
  return await demoCommand(line, { createDriver: kernelMountDriver });
}

async function demoCommand(
  { values }: CommandLine<typeof DEMO.flags>,
  deps: ServeDependencies,
): Promise<number> {
  const log = logger("demo");
  const listenText = values.listen ?? "127.0.0.1:8080";
  const listen = listenFlag(listenText);
  const sizeText = values["size-gib"] ?? "1";
  const sizeGib = Number(sizeText);
  if (!(sizeGib > 0 && sizeGib <= 1024)) {
    throw new UsageError(`--size-gib "${sizeText}" must be a number of GiB, 0 < N <= 1024`);
  }
  if (values.socket !== undefined && !values.socket.startsWith("/")) {
    throw new UsageError(`--socket ${values.socket} must be an absolute path`);
  }

  // From here a stop signal means: undo everything started so far, then exit.
  let daemon: Daemon | null = null;
  let stopSignal: Deno.Signal | null = null;
  const removeSignals = onStopSignal((signal) => {
    if (daemon === null) {
      stopSignal ??= signal;
    } else if (daemon.stopping) {
      log.warn(`${signal} again: still stopping, please wait`);
    } else {
      // Never keepDevices: no daemon comes after the demo to take its device over.
      void daemon.shutdown(`${signal}: the demo detaches its device and stops`);
    }
  });
  try {
    return await demo(
      { listen: listenText, socket: values.socket },
      listen,
      sizeGib,
      deps,
      (started) => {
        daemon = started;
        if (stopSignal !== null) void started.shutdown(`${stopSignal} during start-up`);
      },
    );
  } finally {
    removeSignals();
  }
}

/** The demo's body once the flags are good; `started` hands over the daemon as soon as it runs. */
async function demo(
  values: { listen: string; socket?: string },
  listen: ListenAddress,
  sizeGib: number,
  deps: ServeDependencies,
  started: (daemon: Daemon) => void,
): Promise<number> {
  const ivbs = await startIvbsServer({
    users: [{ username: "demo", password: "demo" }],
    images: [{ name: "demo", size: Math.round(sizeGib * GIB) }],
  });
  // A directory of our own (mode 0700) so the demo never meets a real daemon's socket.
  const stateDir = await Deno.makeTempDir({ prefix: "ivbsnetd-demo-" });
  const config: DaemonConfig = parseConfig("{}", "(demo)").config;
  config.http.listen = listen;
  config.ivbs.proxies = ivbs.addresses();
  config.stateDir = stateDir;
  config.exports.socket = values.socket ?? `${stateDir}/nbd.sock`;
  const driver = await deps.createDriver(config);
  const cleanup = async () => {
    await ivbs.close();
    await Deno.remove(stateDir, { recursive: true }).catch(() => {});
  };

  let serving;
  try {
    serving = startServing(config, driver);
  } catch (error) {
    await cleanup();
    const why = error instanceof Deno.errors.AddrInUse ? "address in use" : String(error);
    console.error(
      `ivbsnetd demo: cannot listen on ${values.listen}: ${why} (try --listen 127.0.0.1:0)`,
    );
    return 1;
  }
  const { daemon, url } = serving;
  started(daemon);
  const proxies = ivbs.addresses().map((a) => `${a.host}:${a.port}`).join(", ");

  // The export is the part that works on any machine, so it comes first.
  let exported: string[];
  try {
    const info = await daemon.exports.add({
      name: "demo",
      image: "demo",
      username: "demo",
      password: "demo",
    });
    const [first, ...rest] = exportUsage(info.uri);
    exported = [
      `  NBD export:   ${info.uri}`,
      `  try:          ${first}`,
      ...rest.map((line) => `                ${line}`),
    ];
  } catch (error) {
    exported = [`  NBD export:   failed: ${(error as Error).message}`];
  }

  const blocker = (await nbdHealthOf(driver)).reason;
  let mounted = "";
  if (daemon.stopping) {
    mounted = "not mounting a device: stopping";
  } else if (blocker === undefined) {
    try {
      const mount = await daemon.table.mount({
        image: "demo",
        username: "demo",
        password: "demo",
      });
      mounted = `image ${mount.image} mounted on ${mount.device}\n` +
        `  try:          mkfs.ext4 ${mount.device} && mount ${mount.device} /mnt`;
    } catch (error) {
      mounted = `mount failed: ${(error as Error).message}`;
    }
  } else {
    mounted = `not mounting a device: ${blocker}.\n` +
      "                The NBD export above, the daemon, its API and the status page work anyway;\n" +
      "                mounts will answer the same reason.";
  }
  const cli = "deno run -A main.ts";
  console.log([
    "",
    "ivbsnetd demo is running",
    `  IVBS proxies: ${proxies} (image demo, ${sizeGib} GiB in memory; user demo, password demo)`,
    ...exported,
    `  device:       ${mounted}`,
    `  status page:  ${url}/`,
    `  API:          curl ${url}/api/mounts    curl ${url}/api/exports    curl ${url}/metrics`,
    `  netdclient:   ${cli} client --server ${url}`,
    "                then: help, liste, export demo2 demo demo, lista, listm, mount auto demo demo",
    `  one-shot:     ${cli} export-list --server ${url}`,
    `                ${cli} list --all --server ${url}`,
    `                ${cli} mount auto demo demo --password-stdin --server ${url} <<< demo`,
    "Ctrl-C or SIGTERM stops everything (every device is detached and every export closed first).",
    "",
  ].join("\n"));

  await daemon.done;
  await cleanup();
  return 0;
}
