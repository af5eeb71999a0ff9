/**
 * The last line of defence: an exception or rejection nobody caught. Front-ends
 * catch their own failures, so one reaching here is a bug of unknown reach; the
 * handler gets it instead of Deno printing a stack and exiting on the spot, so
 * the daemon can take its documented shutdown path (stop front-ends, then the
 * devices) rather than vanish with them attached and unserved.
 * @module
 */

/** Routes uncaught errors and unhandled rejections to `handler`; returns a function undoing it. */
export function onUncaughtError(handler: (error: unknown, kind: string) => void): () => void {
  const onError = (event: ErrorEvent) => {
    event.preventDefault();
    handler(event.error, "uncaught exception");
  };
  const onRejection = (event: PromiseRejectionEvent) => {
    event.preventDefault();
    handler(event.reason, "unhandled rejection");
  };
  globalThis.addEventListener("error", onError);
  globalThis.addEventListener("unhandledrejection", onRejection);
  return () => {
    globalThis.removeEventListener("error", onError);
    globalThis.removeEventListener("unhandledrejection", onRejection);
  };
}
