/**
 * `ivbsnetd demo` (`deno task demo`): everything on one machine. Starts the
 * embedded IVBS test server (memory image "demo", user demo / password demo),
 * the daemon with its HTTP API on 127.0.0.1:8080, and mounts the image on the
 * first free /dev/nbdX when the kernel has nbd and we are root; otherwise says
 * exactly why and keeps the daemon and status page up. Runs until Ctrl-C.
 * @module
 */
import { parseArgs } from "node:util";
import { startIvbsServer } from "../ivbs/server/mod.ts";
import { logger } from "../log.ts";
import { type DaemonConfig, parseConfig, parseListenAddress } from "./config.ts";
import { type ServeDependencies, startServing, stopOnSignals } from "./serve_command.ts";

const GIB = 1024 * 1024 * 1024;

export const DEMO_HELP = [
  "usage: ivbsnetd demo [--listen HOST:PORT] [--size-gib N]",
  "",
  "Starts an IVBS test server (image demo, user demo, password demo), the daemon",
  "and its status page, and mounts the image when this machine can (nbd + root).",
  "",
  "options:",
  "  --listen HOST:PORT  HTTP address (default 127.0.0.1:8080)",
  "  --size-gib N        size of the demo image in GiB (default 1; memory, sparse)",
  "  -h, --help          this help",
].join("\n");

/** Why a real mount cannot happen here, or null when it can. */
export function mountBlocker(deviceCount: number, uid: number | null): string | null {
  if (deviceCount === 0) {
    return "the kernel has no nbd module loaded (no /dev/nbd0); as root, run: modprobe nbd";
  }
  if (uid !== 0) return `not running as root (uid ${uid}); attaching /dev/nbdX needs root`;
  return null;
}

export async function runDemo(args: string[], deps: ServeDependencies): Promise<number> {
  const log = logger("demo");
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      options: {
        listen: { type: "string", default: "127.0.0.1:8080" },
        "size-gib": { type: "string", default: "1" },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (error) {
    console.error(`ivbsnetd demo: ${(error as Error).message}\n\n${DEMO_HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(DEMO_HELP);
    return 0;
  }
  const listen = parseListenAddress(values.listen);
  const sizeGib = Number(values["size-gib"]);
  if (!listen || !(sizeGib > 0 && sizeGib <= 1024)) {
    console.error(`ivbsnetd demo: bad --listen or --size-gib\n\n${DEMO_HELP}`);
    return 2;
  }

  const ivbs = await startIvbsServer({
    users: [{ username: "demo", password: "demo" }],
    images: [{ name: "demo", size: Math.round(sizeGib * GIB) }],
  });
  const config: DaemonConfig = parseConfig("{}", "(demo)").config;
  config.http.listen = listen;
  config.ivbs.proxies = ivbs.addresses();
  const driver = await deps.createDriver(config);

  let serving;
  try {
    serving = startServing(config, driver);
  } catch (error) {
    await ivbs.close();
    const why = error instanceof Deno.errors.AddrInUse ? "address in use" : String(error);
    console.error(
      `ivbsnetd demo: cannot listen on ${values.listen}: ${why} (try --listen 127.0.0.1:0)`,
    );
    return 1;
  }
  const { daemon, url } = serving;
  const removeSignals = stopOnSignals(daemon, log);
  const proxies = ivbs.addresses().map((a) => `${a.host}:${a.port}`).join(", ");

  const devices = await driver.listDevices();
  const uid = Deno.uid();
  const blocker = mountBlocker(devices.length, uid);
  let mounted = "";
  if (blocker === null) {
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
      "                The daemon, its API and the status page stay up; mounts will answer the same reason.";
  }
  const cli = "deno run -A main.ts";
  console.log([
    "",
    "ivbsnetd demo is running",
    `  IVBS proxies: ${proxies} (image demo, ${sizeGib} GiB in memory; user demo, password demo)`,
    `  device:       ${mounted}`,
    `  status page:  ${url}/`,
    `  API:          curl ${url}/api/mounts    curl ${url}/api/devices    curl ${url}/metrics`,
    `  netdclient:   ${cli} client --server ${url}   then: help, lista, listm, mount auto demo demo`,
    `  one-shot:     ${cli} list --all --server ${url}`,
    `                ${cli} mount auto demo demo --password-stdin --server ${url} <<< demo`,
    "Ctrl-C stops everything (every device is detached first).",
    "",
  ].join("\n"));

  await daemon.done;
  removeSignals();
  await ivbs.close();
  return 0;
}
