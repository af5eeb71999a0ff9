/**
 * The HTTP API's contract as the CLI sees it: the JSON shapes of mounts,
 * devices, exports, events and proxies, and the API's limits. The CLI
 * imports the daemon through this module only (tests/layering_test.ts), so
 * it depends on what the API answers, not on how the daemon keeps it.
 * @module
 */
export type { ConnectionInfo, DeviceInfo, MountInfo } from "./mount_types.ts";
export type { ExportInfo } from "./export_table.ts";
export type { DaemonEvent, EventPage } from "./events.ts";
export { MAX_EVENT_PAGE } from "./events.ts";
export type { ProxyInfo } from "./proxy_registry.ts";
export type { ImageCheckRequest, ImageInfo } from "./image_check.ts";
