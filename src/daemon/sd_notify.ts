/**
 * systemd's readiness protocol (sd_notify(3)) without libsystemd: one
 * datagram of `KEY=VALUE` lines to the unix socket named by $NOTIFY_SOCKET.
 * With `Type=notify`, systemd holds back units ordered after ivbsnetd (the
 * `_netdev` mounts behind `remote-fs-pre.target`) until the daemon says
 * READY=1, that is, until the configured devices are attached.
 * @module
 */
import {
  AF_UNIX,
  close,
  connectUnix,
  sendNow,
  SOCK_CLOEXEC,
  SOCK_DGRAM,
  socket,
} from "../../ffi/libc.ts";

/**
 * Sends `state` (e.g. "READY=1", "STOPPING=1") to systemd. Returns false when
 * the daemon was not started by systemd (no $NOTIFY_SOCKET); throws a
 * LibcError when the socket is named but cannot be reached.
 */
export function notifySystemd(
  state: string,
  notifySocket: string | undefined = Deno.env.get("NOTIFY_SOCKET"),
): boolean {
  if (!notifySocket) return false;
  const fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC);
  try {
    connectUnix(fd, notifySocket);
    const sent = sendNow(fd, new TextEncoder().encode(state));
    if (sent === null) throw new Error(`sd_notify: ${notifySocket} is not taking messages`);
    return true;
  } finally {
    close(fd);
  }
}
