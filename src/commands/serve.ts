/**
 * `ivbsnetd serve --config FILE`: load the config (a broken one is one line on
 * stderr and exit code 2), start the HTTP API, mount and export the configured
 * images, and run until SIGINT/SIGTERM or `POST /api/shutdown`; then stop
 * taking requests, detach every device, close the NBD exports and exit 0.
 * @module
 */
import { UsageError } from "../args.ts";
import type { CommandLine } from "../command_line.ts";
import { createApp } from "../http/app.ts";
import { startHttpServer } from "../http/server.ts";
import { type Logger, logger } from "../log.ts";
import { onReloadSignal, onStopSignal } from "./signals.ts";
import { errorMessage } from "../error_info.ts";
import { onUncaughtError } from "./fatal.ts";
import {
  ConfigError,
  type DaemonConfig,
  type ListenAddress,
  loadConfig,
  parseConfig,
  parseListenAddress,
} from "../daemon/config.ts";
import { unsafeListenProblem } from "../daemon/config_checks.ts";
import { Daemon } from "../daemon/daemon.ts";
import { httpConnectionCap, raiseDescriptorLimit } from "../daemon/fd_limit.ts";
import { readState } from "../daemon/state_file.ts";
import { PreparedTakeover } from "../daemon/takeover.ts";
import { daemonGone, isDaemonProcess } from "../daemon/daemon_process.ts";
import { notifySystemd } from "../daemon/sd_notify.ts";
import { socketAnswers } from "../nbd/export_server.ts";
import { logNbdHealth, nbdHealthOf } from "../daemon/host_health.ts";
import type { MountDriver } from "../daemon/driver.ts";
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE } from "./exit_codes.ts";
import { SERVE } from "./definitions.ts";
import { runCommand } from "./run_command.ts";

/** How the command gets its mount driver; `run` passes the real one, tests a fake. */
export interface ServeDependencies {
  createDriver(config: DaemonConfig): Promise<MountDriver> | MountDriver;
}

/** A bad config or bad flags (the shared usage code). */
const EXIT_CONFIG = EXIT_USAGE;

/** A running daemon with its HTTP server. */
export interface Serving {
  daemon: Daemon;
  url: string;
}

function urlOf(address: ListenAddress): string {
  const host = address.host.includes(":") ? `[${address.host}]` : address.host;
  return `http://${host}:${address.port}`;
}

/** Starts the HTTP API over a new daemon; the daemon's shutdown stops the server first. */
export function startServing(
  config: DaemonConfig,
  driver: MountDriver,
  log: Logger = logger("daemon"),
  http: { maxConnections?: number; reload?: () => Promise<DaemonConfig> } = {},
): Serving {
  return serveHttp(new Daemon({ config, driver, log }), driver, http);
}

/** Starts the HTTP API over `daemon`; the daemon's shutdown stops the server first. */
function serveHttp(
  daemon: Daemon,
  driver: MountDriver,
  http: { maxConnections?: number; reload?: () => Promise<DaemonConfig> } = {},
): Serving {
  const config = daemon.config;
  const app = createApp({
    table: daemon.table,
    exports: daemon.exports,
    token: config.http.token,
    requestShutdown: (reason, options) => void daemon.shutdown(reason, options),
    startedAt: daemon.startedAt,
    log: logger("http"),
    events: daemon.events,
    proxies: daemon.proxies,
    history: daemon.history,
    listen: config.http.listen,
    hostname: machineName(),
    reload: http.reload && (() => daemon.reload(http.reload!)),
    nbdHealth: () => nbdHealthOf(driver),
    checkImage: (request) => daemon.checkImage(request),
  });
  // Our own server, not Deno.serve: a connection cap, timeouts, and accept
  // errors (EMFILE) that are survived instead of fatal (see http/server.ts).
  const server = startHttpServer({
    hostname: config.http.listen.host,
    port: config.http.listen.port,
    handler: app.fetch,
    maxConnections: http.maxConnections,
    log: logger("http"),
  });
  daemon.onStop(() => server.close());
  const addr = server.addr;
  return { daemon, url: urlOf({ host: addr.hostname, port: addr.port }) };
}

/** This machine's name (accepted as Host when the API listens on every interface). */
function machineName(): string | undefined {
  try {
    return Deno.hostname();
  } catch {
    return undefined;
  }
}

/**
 * Stops the daemon on SIGINT/SIGTERM; returns a function removing the listeners.
 * SIGTERM (a service manager's stop or restart, an upgrade) leaves the devices
 * that can outlive the daemon attached for the next one; SIGINT (Ctrl-C)
 * detaches every device, like `ivbsnetd shutdown`.
 */
export function stopOnSignals(daemon: Daemon, log: Logger): () => void {
  return onStopSignal((signal) => {
    if (daemon.stopping) {
      log.warn(`${signal} again: still stopping, please wait`);
      return;
    }
    void daemon.shutdown(signal, { keepDevices: signal === "SIGTERM" });
  });
}

/** Loads the config named by the arguments, or explains in one line why not. */
export async function loadServeConfig(
  path: string | undefined,
): Promise<{ config: DaemonConfig; warnings: string[] }> {
  if (path === undefined) return parseConfig("{}", "(defaults)");
  return await loadConfig(path);
}

/** `ivbsnetd serve` on this machine's NBD devices. */
export async function run(line: CommandLine<typeof SERVE.flags>): Promise<number> {
  const { kernelMountDriver } = await import("./kernel_driver.ts");
  return await serve(line, { createDriver: kernelMountDriver });
}

/** `ivbsnetd serve ARGS` with the driver `deps` makes (tests pass a fake one). */
export async function runServe(args: string[], deps: ServeDependencies): Promise<number> {
  return await runCommand(SERVE, args, (line) => serve(line, deps));
}

/** `--listen HOST:PORT` (serve, demo); a UsageError when it is not one. */
export function listenFlag(text: string): ListenAddress {
  const listen = parseListenAddress(text);
  if (!listen) throw new UsageError(`--listen "${text}" is not HOST:PORT`);
  return listen;
}

async function serve(
  { values }: CommandLine<typeof SERVE.flags>,
  deps: ServeDependencies,
): Promise<number> {
  const log = logger("daemon");
  const listen = values.listen === undefined ? null : listenFlag(values.listen);
  let config: DaemonConfig;
  let warnings: string[];
  try {
    const loaded = await loadServeConfig(values.config);
    config = loaded.config;
    warnings = loaded.warnings;
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(`ivbsnetd serve: ${error.message}`);
    return EXIT_CONFIG;
  }
  if (listen) config.http.listen = listen;
  const reloadConfig = configReloader(values.config, listen, log);
  const unsafe = unsafeListenProblem(config.http.listen, config.http.token);
  if (unsafe) {
    console.error(`ivbsnetd serve: ${unsafe}`);
    return EXIT_CONFIG;
  }
  if (config.format === "2013") log.info("config is in the 2013 format", { file: values.config });

  const maxConnections = httpConnectionCap(raiseDescriptorLimit(log));
  const driver = await deps.createDriver(config);
  const daemon = new Daemon({ config, driver, log });
  let prepared = new PreparedTakeover();
  if (values.replace) {
    const ready = await replacePrevious(daemon, log);
    if (ready === null) return EXIT_FAILED;
    prepared = ready;
  }
  // --replace: the devices' I/O waits for this hand-over, the API can wait for it.
  const handedOver = prepared.size > 0 ? await daemon.restore(prepared) : null;
  let serving: Serving;
  try {
    serving = serveHttp(daemon, driver, { maxConnections, reload: reloadConfig });
  } catch (error) {
    // The devices stay attached, with their I/O waiting, for the next daemon.
    if (handedOver) await daemon.shutdown("cannot listen", { keepDevices: true });
    else await prepared.abandonRest();
    const where = urlOf(config.http.listen);
    if (error instanceof Deno.errors.AddrInUse) {
      console.error(`ivbsnetd serve: cannot listen on ${where}: address in use`);
      return EXIT_FAILED;
    }
    if (
      error instanceof Deno.errors.AddrNotAvailable || error instanceof Deno.errors.PermissionDenied
    ) {
      console.error(`ivbsnetd serve: cannot listen on ${where}: ${(error as Error).message}`);
      return EXIT_FAILED;
    }
    throw error;
  }
  const { url } = serving;
  // Config problems are logged as events, so the status page and /api/events show them.
  for (const warning of warnings) daemon.configProblem(warning);
  const removeSignals = stopOnSignals(daemon, log);
  let fatal = false;
  const removeFatal = onUncaughtError((error, kind) => {
    log.error(`${kind}; stopping the daemon`, {
      error: errorMessage(error),
      stack: error instanceof Error ? error.stack?.split("\n").slice(1, 4).join(" | ") : undefined,
    });
    fatal = true;
    void daemon.shutdown(kind);
  });
  console.log(`ivbsnetd: listening on ${url}`);
  log.info("daemon started", {
    url,
    mounts: config.mounts.length,
    exports: config.exports.items.length,
    devices: config.nbd.devices,
    httpConnections: maxConnections,
  });
  logNbdHealth(await nbdHealthOf(driver), daemon.events.wrap(log, "daemon"));

  // A stop meanwhile (SIGTERM) ends the wait: what restore has not taken over stays for the next daemon.
  const restored = handedOver ??
    await Promise.race([daemon.restore(prepared), daemon.done.then(() => [])]);
  if (restored.length > 0) {
    const up = restored.filter((o) => o.mount).length;
    log.info("devices taken over", { devices: up, dropped: restored.length - up });
  }
  const removeReload = reloadOnSighup(daemon, reloadConfig, log);
  await daemon.reconcile();
  // Type=notify: units ordered after us (_netdev mounts) start once every
  // desired item was tried; STATUS= follows each change from then on.
  tellSystemd(`READY=1\nSTATUS=${daemon.reconciliation.statusLine()}`, log);
  daemon.reconciliation.onStatus((line) => tellSystemd(`STATUS=${line}`, log));
  daemon.onStop(() => Promise.resolve(tellSystemd("STOPPING=1", log)));
  await daemon.done;
  removeReload();
  removeSignals();
  removeFatal();
  return fatal ? EXIT_FAILED : EXIT_OK;
}

/**
 * The config file again, for a reload (SIGHUP, POST /api/reload), with the
 * same --listen override; a broken one throws its ConfigError.
 */
function configReloader(
  path: string | undefined,
  listen: ListenAddress | null,
  log: Logger,
): () => Promise<DaemonConfig> {
  return async () => {
    const { config, warnings } = await loadServeConfig(path);
    for (const warning of warnings) log.warn(warning);
    if (listen) config.http.listen = listen;
    return config;
  };
}

/** SIGHUP re-reads the config (a refusal is logged by the daemon); returns the unsubscriber. */
function reloadOnSighup(
  daemon: Daemon,
  load: () => Promise<DaemonConfig>,
  log: Logger,
): () => void {
  return onReloadSignal(() => {
    log.info("SIGHUP: reloading the config");
    daemon.reload(load).catch(() => {});
  });
}

/** sd_notify when systemd started us; a failure to tell it is logged, never fatal. */
function tellSystemd(state: string, log: Logger): void {
  try {
    notifySystemd(state);
  } catch (error) {
    log.warn("cannot notify systemd", { state: state.split("\n")[0], error });
  }
}

/** How long --replace waits for the previous daemon to leave its devices and exit. */
const REPLACE_WAIT_MS = 90_000;

/**
 * `serve --replace`: while the daemon that wrote the state file still serves,
 * makes ready everything slow (every device's IVBS session logged in, its
 * image attached and its size checked: `Daemon.prepareTakeover`), then asks
 * that daemon to leave its devices (SIGTERM) and waits for it to exit, so the
 * pause its devices see is the hand-over alone. The HTTP API and the export
 * socket are opened after it has gone: the old daemon holds them until it
 * exits, and it (today's daemon too) does not share its port. Resolves with
 * the prepared take-over, or null when the old daemon does not exit.
 */
async function replacePrevious(daemon: Daemon, log: Logger): Promise<PreparedTakeover | null> {
  const stateDir = daemon.config.stateDir;
  let state;
  try {
    state = await readState(stateDir);
  } catch (error) {
    log.warn("--replace: unreadable state file; nothing to replace", { error });
    return new PreparedTakeover();
  }
  const pid = state?.pid;
  if (pid === undefined || pid === Deno.pid || !await isDaemonProcess(pid)) {
    // A daemon the state file does not name would go on serving beside us.
    const socket = daemon.config.exports.socket;
    if (await socketAnswers(socket)) {
      log.error(
        "--replace: the state file names no running daemon, but another process serves the export socket; stop it and start again",
        { stateDir, statePid: pid, socket },
      );
      return null;
    }
    log.info("--replace: no running daemon in the state file", { stateDir, statePid: pid });
    return new PreparedTakeover();
  }
  const began = performance.now();
  const prepared = await daemon.prepareTakeover();
  log.info("--replace: ready; asking the running daemon to leave its devices", {
    pid,
    prepared: prepared.size,
    preparedMs: Math.round(performance.now() - began),
    exitWithinMs: REPLACE_WAIT_MS,
  });
  try {
    Deno.kill(pid, "SIGTERM");
  } catch (error) {
    log.warn("--replace: cannot signal the running daemon", { pid, error });
    return prepared;
  }
  const stopped = performance.now();
  if (!await daemonGone(pid, REPLACE_WAIT_MS, 20)) {
    log.error("--replace: the running daemon did not exit", { pid });
    await prepared.abandonRest();
    return null;
  }
  log.info("--replace: the running daemon has left; taking over", {
    pid,
    waitedMs: Math.round(performance.now() - stopped),
  });
  return prepared;
}
