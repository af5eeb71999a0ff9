/**
 * SIGINT and SIGTERM: how a person (Ctrl-C) or a service manager stops the
 * foreground commands (serve, demo, attach, export, ivbs-server); SIGHUP:
 * how it asks `serve` to reload its config.
 * @module
 */

const STOP_SIGNALS: readonly Deno.Signal[] = ["SIGINT", "SIGTERM"];

/** Calls `handler` on every SIGINT or SIGTERM until the returned function is called. */
export function onStopSignal(handler: (signal: Deno.Signal) => void): () => void {
  const listeners = STOP_SIGNALS.map((signal) => {
    const listener = () => handler(signal);
    Deno.addSignalListener(signal, listener);
    return [signal, listener] as const;
  });
  return () => {
    for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
  };
}

/** Resolves with the first SIGINT or SIGTERM, and stops listening then. */
export function untilStopSignal(): Promise<Deno.Signal> {
  return new Promise((resolve) => {
    const stopListening = onStopSignal((signal) => {
      stopListening();
      resolve(signal);
    });
  });
}

/** Calls `handler` on every SIGHUP (reload the config) until the returned function is called. */
export function onReloadSignal(handler: () => void): () => void {
  Deno.addSignalListener("SIGHUP", handler);
  return () => Deno.removeSignalListener("SIGHUP", handler);
}
