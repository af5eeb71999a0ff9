/**
 * A mount's IVBS sessions, one per connection of its device: opened together
 * (all or none), closed together, and seen as one by metrics. The first step
 * of a mount or a takeover; handing them to the kernel is the second.
 * @module
 */
import { backendWithClose } from "../block/backend.ts";
import type { DeviceAttachment, MountBackend, MountDriver, SessionStats } from "./driver.ts";
import type { ConnectionInfo } from "./mount_types.ts";
import type { Logger } from "../log.ts";
import type { SessionWatch } from "./proxy_registry.ts";

/** Sessions being opened or open, with the proxy registry's view of each. */
export interface MountSessions {
  backends: MountBackend[];
  watches: (SessionWatch | undefined)[];
}

export interface SessionRequest {
  image: string;
  username: string;
  password: string;
  readOnly: boolean;
}

/** Connections for a mount: those wanted, within what the driver can attach (`most`). */
export function connectionCount(wanted: number, most: number, log: Logger): number {
  if (wanted > most) {
    log.warn("fewer connections than asked: this attach path serves fewer", {
      asked: wanted,
      connections: most,
    });
  }
  return Math.max(1, Math.min(wanted, most));
}

/**
 * Opens `count` sessions on one image in parallel (connection i starts on its
 * own proxy where there are enough); when any fails, closes the others and
 * throws the first failure.
 */
export async function openSessions(
  driver: MountDriver,
  request: SessionRequest,
  count: number,
  watch: () => SessionWatch | undefined,
): Promise<MountSessions> {
  const watches = Array.from({ length: count }, watch);
  const opened = await Promise.allSettled(watches.map((w, connection) =>
    driver.openBackend({
      ...request,
      connection,
      onEvent: w?.onEvent,
      log: w?.log,
    })
  ));
  const backends = opened.flatMap((r) => r.status === "fulfilled" ? [r.value] : []);
  const failed = opened.find((r) => r.status === "rejected");
  if (failed) {
    await closeSessions({ backends, watches: [] }, () => {});
    for (const w of watches) w?.closed();
    throw failed.reason;
  }
  return { backends, watches };
}

/** Closes every session; a failure is reported to `onError` and does not stop the others. */
export async function closeSessions(
  sessions: MountSessions,
  onError: (error: unknown) => void,
): Promise<void> {
  await Promise.all(sessions.backends.map((backend) => backend.close().catch(onError)));
  for (const watch of sessions.watches) watch?.closed();
}

/** The sessions as one backend for metrics: the first one's proxy, their counters summed. */
export function combinedBackend(backends: readonly MountBackend[]): MountBackend | null {
  if (backends.length <= 1) return backends[0] ?? null;
  const first = backends[0];
  const sum = (pick: (stats: SessionStats) => number | undefined) =>
    backends.reduce((total, b) => total + (b.stats ? pick(b.stats) ?? 0 : 0), 0);
  const causes = () => {
    const total: Record<string, number> = {};
    for (const b of backends) {
      for (const [cause, n] of Object.entries(b.stats?.failoverCauses ?? {})) {
        total[cause] = (total[cause] ?? 0) + n;
      }
    }
    return total;
  };
  // Never used for I/O (each connection has its own); closing it closes nothing.
  const view = backendWithClose(first, () => Promise.resolve());
  return Object.defineProperties(view, {
    proxy: { get: () => first.proxy ?? null },
    stats: {
      get: (): SessionStats => ({
        inFlight: sum((s) => s.inFlight),
        failovers: sum((s) => s.failovers),
        reconnects: sum((s) => s.reconnects),
        retries: sum((s) => s.retries),
        keepalivesSent: sum((s) => s.keepalivesSent),
        probesSent: sum((s) => s.probesSent),
        probesAnswered: sum((s) => s.probesAnswered),
        failoverCauses: causes(),
        bytesRead: sum((s) => s.bytesRead),
        bytesWritten: sum((s) => s.bytesWritten),
      }),
    },
  }) as MountBackend;
}

/** Each connection's proxy and counters (the kernel side's where attached, else the session's). */
export function connectionInfos(
  backends: readonly MountBackend[],
  attachment: DeviceAttachment | null,
): ConnectionInfo[] {
  return backends.map((backend, i) => {
    const io = attachment?.connections[i];
    const session = backend.stats;
    return {
      proxy: backend.proxy ?? null,
      inFlight: io?.inFlight ?? session?.inFlight ?? 0,
      reads: io?.reads ?? 0,
      writes: io?.writes ?? 0,
      bytesRead: io?.bytesRead ?? session?.bytesRead ?? 0,
      bytesWritten: io?.bytesWritten ?? session?.bytesWritten ?? 0,
      failovers: session?.failovers ?? 0,
    };
  });
}
