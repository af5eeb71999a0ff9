/**
 * Serves the daemon's HTTP API and status page over the in-memory fake driver,
 * with two mounted images and simulated traffic, so the page can be looked at
 * (or screenshotted) on a machine without the nbd module:
 *
 *   deno run -A docs/status_page_fake.ts [--listen 127.0.0.1:8089]
 *
 * Prints `listening on URL`; stops on Ctrl-C / SIGTERM.
 * @module
 */
import { parseArgs } from "node:util";
import { parseConfig } from "../src/daemon/config.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { startServing, stopOnSignals } from "../src/commands/serve.ts";
import { logger } from "../src/log.ts";

const GIB = 1024 * 1024 * 1024;
const { values } = parseArgs({
  args: Deno.args,
  options: { listen: { type: "string", default: "127.0.0.1:8089" } },
});
const { config } = parseConfig(
  JSON.stringify({ http: { listen: values.listen }, nbd: { devices: 8 } }),
  "(fake)",
);
const driver = new FakeMountDriver({
  devices: 8,
  images: { "vm-web01": { size: 20 * GIB }, "db-primary": { size: 100 * GIB }, iso: { size: GIB } },
  users: { demo: "demo" },
});
driver.foreign.add("/dev/nbd7");
const { daemon, url } = startServing(config, driver, logger("fake"));
for (
  const [device, image, readOnly] of [["nbd0", "vm-web01", false], ["nbd1", "db-primary", false], [
    "nbd3",
    "iso",
    true,
  ]] as const
) {
  await daemon.table.mount({ device, image, username: "demo", password: "demo", readOnly });
}
driver.backends[1].stats.failovers = 1;
// Simulated I/O: the throughput column is computed from these counters.
const traffic = setInterval(() => {
  driver.attached.get("/dev/nbd0")?.stats.observe("read", 12 * 1024 * 1024, 0.8);
  driver.attached.get("/dev/nbd0")?.stats.observe("write", 3 * 1024 * 1024, 2.1);
  driver.attached.get("/dev/nbd1")?.stats.observe("write", 40 * 1024 * 1024, 4.5);
}, 250);
const stop = stopOnSignals(daemon, logger("fake"));
console.log(`listening on ${url}`);
await daemon.done;
clearInterval(traffic);
stop();
