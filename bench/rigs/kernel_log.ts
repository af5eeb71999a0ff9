/**
 * Which kernel messages mean an error reached a user, and which are the nbd
 * driver narrating a socket death that it then recovers from. Pinned here,
 * once, for the restart tests and the restart benchmark (drivers/block/nbd.c,
 * 6.1, reads them all):
 *
 * Errors (a test fails on any):
 * - "I/O error" (blk_update_request / print_req_error: a request FAILED),
 *   "Buffer I/O error", any "EXT4-fs error" / "EXT4-fs warning", "Aborting
 *   journal", "JBD2: ... error" (what a filesystem says once a request failed);
 * - every other line from the nbd driver, e.g. "Connection timed out" (without
 *   ", retrying": the kernel failed the request), "Other side returned error",
 *   "Unexpected reply", "Wrong magic", "Double reply", "not configured, cannot
 *   reconfigure".
 *
 * Expected on a socket death and recovery (printed at KERN_ERR for some, yet
 * no request fails):
 * - "Receive control failed" / "Receive data failed": recv_work saw our socket
 *   close (the daemon died); the device is not disconnected, so the request
 *   is left for the timer to resend;
 * - "Send control failed", "Send data failed", "Request send failed,
 *   requeueing": a send hit the dead socket (-EAGAIN in nbd_send_cmd) and the
 *   request was requeued;
 * - "Dead connection, failed to find a fallback": with one connection a request
 *   found the socket dead and waits up to dead_conn_timeout for a new one;
 * - "Possible stuck request ... Runtime N seconds": TIMEOUT 0's timer fired
 *   (queue/io_timeout); the request is requeued once the socket was replaced;
 * - "Connection timed out, retrying": TIMEOUT > 0's timer fired and requeued;
 * - "reconnected socket" (RECONFIGURE), "NBD_DISCONNECT", "Disconnected due to
 *   user request", "shutting down sockets", "detected capacity change".
 * @module
 */

const FAILURE = [
  /I\/O error/,
  /EXT4-fs (error|warning)/,
  /Aborting journal/,
  /JBD2:.*error/i,
];

const NBD_LINE = /\bnbd\d+\b/;

const EXPECTED_NBD = [
  /Receive control failed \(result -?\d+\)/,
  /Receive data failed \(result -?\d+\)/,
  /Send control failed \(result -?\d+\)/,
  /Send data failed \(result -?\d+\)/,
  /Request send failed, requeueing/,
  /Dead connection, failed to find a fallback/,
  /Possible stuck request/,
  /Connection timed out, retrying/,
  /reconnected socket/,
  /NBD_DISCONNECT/,
  /Disconnected due to user request/,
  /shutting down sockets/,
  /detected capacity change/,
  /\bnbd\d+: (p\d+|unknown partition table)/, // partition scan
  /EXT4-fs \(nbd\d+\): (mounted|unmounting)/,
];

/** The lines of `lines` that report an error a user would see. */
export function errorLines(lines: string[]): string[] {
  return lines.filter((line) => {
    if (FAILURE.some((p) => p.test(line))) return true;
    if (!NBD_LINE.test(line)) return false;
    return !EXPECTED_NBD.some((p) => p.test(line));
  });
}

/** The kernel log's lines so far (needs root). */
export async function kernelLog(): Promise<string[]> {
  const out = await new Deno.Command("dmesg", { stdout: "piped", stderr: "piped" }).output();
  if (out.code !== 0) throw new Error(`dmesg failed: ${new TextDecoder().decode(out.stderr)}`);
  return new TextDecoder().decode(out.stdout).split("\n").filter((line) => line !== "");
}

/** Marks the log now; `since()` returns the lines logged after. */
export async function logMark(): Promise<{ since(): Promise<string[]> }> {
  const before = (await kernelLog()).length;
  return { since: async () => (await kernelLog()).slice(before) };
}
