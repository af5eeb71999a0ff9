/**
 * What each client command does against the API and what it prints (a table,
 * a sentence, or JSON); the command table (command_table.ts) runs these for
 * both the one-shot commands and the interactive netdclient.
 * @module
 */
import { MAX_EVENT_PAGE } from "../daemon/api_types.ts";
import { formatBytes } from "../units.ts";
import type {
  ApiClient,
  DaemonEvent,
  ExportInfo,
  ExportRequestBody,
  MountInfo,
  MountRequestBody,
  ReloadResult,
} from "./api_client.ts";
import { devicesTable, eventLine, exportsTable, mountsTable, proxiesTable } from "./table.ts";

export interface Output {
  /** One or more lines; a newline is added. */
  print(text: string): void;
}

export async function checkCommand(client: ApiClient, out: Output, json = false): Promise<void> {
  const health = await client.health();
  if (json) {
    out.print(JSON.stringify(health));
    return;
  }
  let mounts = `${health.mounts} mount${health.mounts === 1 ? "" : "s"}`;
  if (health.exports !== undefined) {
    mounts += `, ${health.exports} export${health.exports === 1 ? "" : "s"}`;
  }
  out.print(
    `server ${client.server} is ${
      health.status === "ok" ? "up" : health.status
    } (version ${health.version}, ${mounts}, up ${health.uptimeSeconds} s)`,
  );
}

export async function listMountedCommand(client: ApiClient, out: Output, json = false) {
  const mounts = await client.mounts();
  out.print(json ? JSON.stringify(mounts) : mountsTable(mounts));
}

export async function listAllCommand(client: ApiClient, out: Output, json = false) {
  const devices = await client.devices();
  out.print(json ? JSON.stringify(devices) : devicesTable(devices));
}

export function describeMount(m: MountInfo): string {
  return `mounted ${m.image} on ${m.device} (${formatBytes(m.sizeBytes)}, ${
    m.readOnly ? "read-only" : "read-write"
  }, proxy ${m.proxy ?? "none"})`;
}

export async function mountCommand(
  client: ApiClient,
  out: Output,
  request: MountRequestBody,
  json = false,
): Promise<void> {
  const mount = await client.mount(request);
  out.print(json ? JSON.stringify(mount) : describeMount(mount));
}

export async function unmountCommand(client: ApiClient, out: Output, device: string, json = false) {
  const canonical = await client.unmount(device);
  out.print(
    json ? JSON.stringify({ device: canonical, state: "unmounted" }) : `unmounted ${canonical}`,
  );
}

export async function listExportsCommand(client: ApiClient, out: Output, json = false) {
  const exports = await client.exports();
  out.print(json ? JSON.stringify(exports) : exportsTable(exports));
}

export function describeExport(e: ExportInfo): string {
  const tcp = e.tcpUri === null ? "" : ` or ${e.tcpUri}`;
  return `exported ${e.image} as ${e.name} (${formatBytes(e.sizeBytes)}, ${
    e.readOnly ? "read-only" : "read-write"
  }): ${e.uri}${tcp}`;
}

export async function addExportCommand(
  client: ApiClient,
  out: Output,
  request: ExportRequestBody,
  json = false,
): Promise<void> {
  const info = await client.addExport(request);
  out.print(json ? JSON.stringify(info) : describeExport(info));
}

export async function removeExportCommand(
  client: ApiClient,
  out: Output,
  name: string,
  json = false,
) {
  const removed = await client.removeExport(name);
  out.print(
    json
      ? JSON.stringify({ name: removed, state: "removed" })
      : `removed export ${removed} (its clients were disconnected)`,
  );
}

export async function shutdownCommand(
  client: ApiClient,
  out: Output,
  json = false,
  keepDevices = false,
) {
  await client.shutdown({ keepDevices });
  out.print(
    json
      ? JSON.stringify({ status: "shutting down", keepDevices })
      : `server ${client.server} is shutting down (${
        keepDevices ? "leaving its devices to the next daemon" : "detaching every device"
      })`,
  );
}

/** "1 added (mount /dev/nbd2: …), 0 removed, 2 unchanged". */
export function describeReload(result: ReloadResult): string {
  const part = (count: string[], what: string) =>
    `${count.length} ${what}${count.length === 0 ? "" : ` (${count.join(", ")})`}`;
  const lines = [
    `reloaded the config: ${part(result.added, "added")}, ${part(result.removed, "removed")}, ` +
    `${result.unchanged.length} unchanged`,
  ];
  if (result.restartNeeded?.length) {
    lines.push(`changed but only applied after a restart: ${result.restartNeeded.join(", ")}`);
  }
  return lines.join("\n");
}

export async function reloadCommand(client: ApiClient, out: Output, json = false) {
  const result = await client.reload();
  out.print(json ? JSON.stringify(result) : describeReload(result));
}

export async function proxiesCommand(client: ApiClient, out: Output, json = false) {
  const proxies = await client.proxies();
  out.print(json ? JSON.stringify(proxies) : proxiesTable(proxies));
}

export interface EventsOptions {
  json?: boolean;
  /** Keep printing new events (from the daemon's event stream) until `signal` aborts. */
  follow?: boolean;
  /** Only events after this sequence number. */
  since?: number;
  /** Print only the newest this many of the events already there. */
  last?: number;
  signal?: AbortSignal;
}

/**
 * Prints the daemon's recent events (one per line, or JSON lines), and with
 * `follow` keeps printing new ones as the daemon's event stream delivers them.
 */
export async function eventsCommand(
  client: ApiClient,
  out: Output,
  options: EventsOptions = {},
): Promise<void> {
  const print = (event: DaemonEvent) =>
    out.print(options.json ? JSON.stringify(event) : eventLine(event));
  let since = options.since ?? 0;
  if (options.follow) {
    for await (const item of client.followEvents(since, options.signal)) {
      if ("missed" in item) out.print(`(${item.missed} older events were dropped)`);
      else print(item.event);
    }
    return;
  }
  for (;;) {
    const page = await client.events(since);
    if (page.missed > 0 && since > 0) out.print(`(${page.missed} older events were dropped)`);
    const shown = options.last === undefined ? page.events : page.events.slice(-options.last);
    for (const event of shown) print(event);
    since = page.next;
    if (page.events.length < MAX_EVENT_PAGE) return; // else more are waiting
  }
}
