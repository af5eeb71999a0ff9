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

/** `value` as one line of JSON for scripts, or as `text` tells it for people. */
function show<T>(out: Output, json: boolean, value: T, text: (value: T) => string): void {
  out.print(json ? JSON.stringify(value) : text(value));
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
  show(out, json, await client.mounts(), mountsTable);
}

export async function listAllCommand(client: ApiClient, out: Output, json = false) {
  show(out, json, await client.devices(), devicesTable);
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
  show(out, json, await client.mount(request), describeMount);
}

export async function unmountCommand(client: ApiClient, out: Output, device: string, json = false) {
  const unmounted = { device: await client.unmount(device), state: "unmounted" };
  show(out, json, unmounted, (u) => `unmounted ${u.device}`);
}

export async function listExportsCommand(client: ApiClient, out: Output, json = false) {
  show(out, json, await client.exports(), exportsTable);
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
  show(out, json, await client.addExport(request), describeExport);
}

export async function removeExportCommand(
  client: ApiClient,
  out: Output,
  name: string,
  json = false,
) {
  const removed = { name: await client.removeExport(name), state: "removed" };
  show(out, json, removed, (r) => `removed export ${r.name} (its clients were disconnected)`);
}

export async function shutdownCommand(
  client: ApiClient,
  out: Output,
  json = false,
  keepDevices = false,
) {
  await client.shutdown({ keepDevices });
  const how = keepDevices ? "leaving its devices to the next daemon" : "detaching every device";
  const stopping = { status: "shutting down", keepDevices };
  show(out, json, stopping, () => `server ${client.server} is shutting down (${how})`);
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
  show(out, json, await client.reload(), describeReload);
}

export async function proxiesCommand(client: ApiClient, out: Output, json = false) {
  show(out, json, await client.proxies(), proxiesTable);
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
  const print = (event: DaemonEvent) => show(out, options.json ?? false, event, eventLine);
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
