/**
 * The TCP connect under an IVBS connection: bounded by a deadline on the
 * caller's clock and abandoned when the caller's signal aborts, with noDelay
 * set (requests are pipelined; replies must not wait for Nagle).
 * @module
 */
import type { Clock } from "../clock.ts";
import { ConnectionLostError } from "./errors.ts";
import { reasonFor } from "./connection_types.ts";
import { proxyLabel } from "./proxy_list.ts";
import type { ProxyAddress } from "./wire.ts";

/** Connects to `address` within `timeoutMs`; throws ConnectionLostError naming the proxy. */
export async function connectTcp(
  address: ProxyAddress,
  timeoutMs: number,
  clock: Clock,
  signal?: AbortSignal,
): Promise<Deno.TcpConn> {
  const controller = new AbortController();
  const abort = () => controller.abort();
  signal?.addEventListener("abort", abort);
  const timer = clock.setTimeout(abort, timeoutMs);
  try {
    if (signal?.aborted) throw new Error("aborted");
    const tcp = await Deno.connect({
      hostname: address.host,
      port: address.port,
      signal: controller.signal,
    });
    tcp.setNoDelay(true);
    return tcp;
  } catch (error) {
    const why = controller.signal.aborted && !signal?.aborted
      ? `no TCP connection within ${timeoutMs} ms`
      : reasonFor(error);
    throw new ConnectionLostError(proxyLabel(address), `connect failed: ${why}`);
  } finally {
    clock.clearTimeout(timer);
    signal?.removeEventListener("abort", abort);
  }
}
