/**
 * Loopback host names: where an unauthenticated listener (the HTTP API without
 * a token, an NBD export on TCP) may listen, and which Host headers name this
 * machine from itself. One definition for the config, the HTTP guard and the
 * export server.
 * @module
 */

/** True for 127.0.0.0/8, ::1 and localhost. */
export function isLoopbackHost(host: string): boolean {
  return host === "::1" || host === "localhost" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
