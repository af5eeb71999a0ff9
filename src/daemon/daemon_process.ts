/**
 * Whether the pid a state file names is still an ivbsnetd daemon. A pid alone
 * proves nothing: after a reboot or a long uptime the number is handed to any
 * process, and a daemon that took such a stranger for "the other daemon on this
 * stateDir" would refuse to take the devices over and stop saving the state.
 * So the process must be alive, not a zombie, and its command line must be
 * ivbsnetd's `serve`: the installed launcher or binary, the bundle, or main.ts.
 * @module
 */

/** Program or script names that run ivbsnetd (`deno run -A main.ts serve`, `ivbsnetd serve`). */
const PROGRAM = /^(ivbsnetd|ivbsnetd\.js|main\.ts)$/;

/**
 * Whether `argv` (as /proc/PID/cmdline splits it) runs ivbsnetd's daemon: a
 * `serve` argument after an ivbsnetd program or script.
 */
export function isDaemonCommandLine(argv: readonly string[]): boolean {
  const serve = argv.indexOf("serve");
  if (serve < 0) return false;
  return argv.slice(0, serve).some((arg) => PROGRAM.test(arg.slice(arg.lastIndexOf("/") + 1)));
}

/** Whether `pid` is a live (not zombie) ivbsnetd `serve` process; false on any doubt. */
export async function isDaemonProcess(pid: number): Promise<boolean> {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    // A zombie (state Z) has exited; it only waits for its parent. The name in
    // parentheses may itself hold ") ", so the state is after the last one.
    if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) return false;
    const cmdline = await Deno.readTextFile(`/proc/${pid}/cmdline`);
    return isDaemonCommandLine(cmdline.split("\0"));
  } catch {
    // Gone, or not ours to read: either way not a daemon we could be racing.
    return false;
  }
}

/**
 * Waits until `pid` is no longer an ivbsnetd daemon (exited, or never was
 * one), checking every `pollMs`; false when it still is one after `waitMs`.
 */
export async function daemonGone(pid: number, waitMs: number, pollMs = 100): Promise<boolean> {
  const deadline = Date.now() + waitMs;
  while (await isDaemonProcess(pid)) {
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
  return true;
}
