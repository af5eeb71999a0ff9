/**
 * Status page data for N mounts with full graphs, proxies and events: for the
 * render test and the render benchmark (bench/status_page_bench.ts).
 */
import type { DaemonEvent } from "../../src/daemon/events.ts";
import { type HistoryPoint, mountKey } from "../../src/daemon/history.ts";
import type { MountInfo } from "../../src/daemon/mount_table.ts";
import type { ProxyInfo } from "../../src/daemon/proxy_registry.ts";
import type { StatusPageData } from "../../src/http/status_page.ts";

const GIB = 1024 * 1024 * 1024;

export function fakePageData(mountCount: number, pointCount: number): StatusPageData {
  const now = Date.UTC(2026, 0, 1, 12);
  const mounts: MountInfo[] = [];
  const history = new Map<string, HistoryPoint[]>();
  for (let i = 0; i < mountCount; i++) {
    const device = `/dev/nbd${i}`;
    mounts.push({
      device,
      image: `vm-${i}`,
      username: "ops",
      state: "mounted",
      sizeBytes: 20 * GIB,
      readOnly: false,
      proxy: "127.0.0.1:11417",
      inFlight: i % 4,
      reads: 1000 * i,
      writes: 500 * i,
      bytesRead: i * GIB,
      bytesWritten: i * GIB / 2,
      errors: 0,
      failovers: i % 3,
      reconnects: i % 3,
      retries: 0,
      mountedAt: new Date(now - 3_600_000).toISOString(),
      throughput: { readBytesPerSec: 12e6, writeBytesPerSec: 3e6 },
      connections: [{
        proxy: "127.0.0.1:11417",
        inFlight: i % 4,
        reads: 1000 * i,
        writes: 500 * i,
        bytesRead: i * GIB,
        bytesWritten: i * GIB / 2,
        failovers: i % 3,
      }],
    });
    history.set(
      mountKey(device),
      Array.from({ length: pointCount }, (_, p) => ({
        at: now - (pointCount - 1 - p) * 5000,
        readBytesPerSec: 1e6 * (10 + Math.sin(p / 4 + i) * 5),
        writeBytesPerSec: 1e6 * (4 + Math.cos(p / 5 + i) * 2),
        requests: 100,
        p50Ms: 0.8 + (p % 7) / 10,
        p99Ms: 4 + (p % 11),
      })),
    );
  }
  const proxies: ProxyInfo[] = [0, 1, 2].map((n) => ({
    address: `127.0.0.1:${11417 + n}`,
    name: `proxy-${n}`,
    origins: n === 2 ? ["listed"] : ["configured", "listed"],
    state: n === 1 ? "backoff" : "connected",
    usedBy: n === 1 ? [] : mounts.map((m) => m.device).slice(0, 4),
    backoffUntil: n === 1 ? new Date(now + 20_000).toISOString() : null,
    lastError: n === 1 ? "connection refused" : null,
    lastErrorAt: n === 1 ? new Date(now - 10_000).toISOString() : null,
    lastConnectedAt: new Date(now - 60_000).toISOString(),
    checkedAt: null,
    connects: 3,
    failures: n === 1 ? 2 : 0,
    failoversFrom: n === 1 ? 2 : 0,
    failoversTo: n === 1 ? 0 : 1,
  }));
  const events: DaemonEvent[] = Array.from({ length: 25 }, (_, k) => ({
    seq: 100 - k,
    time: new Date(now - k * 1000).toISOString(),
    level: k % 5 === 0 ? "warn" : "info",
    component: "ivbs",
    message: k === 3 ? "<script>alert(1)</script>" : "failover",
    device: `/dev/nbd${k % mountCount}`,
    fields: { from: "127.0.0.1:11418", to: "127.0.0.1:11417", cause: "closed", replayed: 2 },
  }));
  return {
    mounts,
    devices: [],
    exports: [],
    version: "test",
    generatedAt: new Date(now),
    proxies,
    events,
    history: (key) => history.get(key) ?? [],
    historyWindowMs: pointCount * 5000,
  };
}
