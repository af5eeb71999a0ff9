/**
 * Per-proxy families for /metrics: which proxies are known and in which
 * state, sessions on each, failures and failovers away from and to each.
 * Labelled by `proxy` ("host:port").
 * @module
 */
import type { Exposition } from "./exposition.ts";
import { PROXY_STATES, type ProxyInfo } from "./proxy_registry.ts";

/** Every state gets a series from the start (idle proxies are probed: reachable or not). */
const STATES: readonly string[] = PROXY_STATES;

export function renderProxyMetrics(out: Exposition, proxies: readonly ProxyInfo[]): void {
  out.family("ivbsnetd_proxy_info", "gauge", "IVBS proxies known: name from GREETING, origin.");
  for (const p of proxies) {
    out.sample("ivbsnetd_proxy_info", {
      proxy: p.address,
      name: p.name ?? "",
      origin: p.origins.join(","),
    }, 1);
  }
  out.family("ivbsnetd_proxy_state", "gauge", "1 for the proxy's current state, 0 for the others.");
  for (const p of proxies) {
    const states = STATES.includes(p.state) ? STATES : [...STATES, p.state];
    for (const state of states) {
      out.sample("ivbsnetd_proxy_state", { proxy: p.address, state }, p.state === state ? 1 : 0);
    }
  }
  out.family(
    "ivbsnetd_proxy_sessions",
    "gauge",
    "Mounts and export clients connected to the proxy.",
  );
  for (const p of proxies) {
    out.sample("ivbsnetd_proxy_sessions", { proxy: p.address }, p.usedBy.length);
  }
  out.family("ivbsnetd_proxy_failures_total", "counter", "Connections lost and connects failed.");
  for (const p of proxies) {
    out.sample("ivbsnetd_proxy_failures_total", { proxy: p.address }, p.failures);
  }
  out.family("ivbsnetd_proxy_failovers_total", "counter", "Sessions failing over from or to it.");
  for (const p of proxies) {
    const from = { proxy: p.address, direction: "from" };
    out.sample("ivbsnetd_proxy_failovers_total", from, p.failoversFrom);
    out.sample(
      "ivbsnetd_proxy_failovers_total",
      { proxy: p.address, direction: "to" },
      p.failoversTo,
    );
  }
}
