/**
 * Per-proxy series for /metrics, appended after the mount and export families:
 * which proxies are known and in which state, sessions on each, failures and
 * failovers away from and to each. Labelled by `proxy` ("host:port").
 * @module
 */
import { escapeLabel } from "./metrics.ts";
import { PROXY_STATES, type ProxyInfo } from "./proxy_registry.ts";

export function renderProxyMetrics(proxies: readonly ProxyInfo[]): string {
  const lines: string[] = [];
  const family = (name: string, type: "gauge" | "counter", help: string) =>
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  const sample = (name: string, labels: Record<string, string>, value: number) => {
    const text = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",");
    lines.push(`${name}{${text}} ${value}`);
  };

  family("ivbsnetd_proxy_info", "gauge", "IVBS proxies known: name from GREETING, origin.");
  for (const p of proxies) {
    sample("ivbsnetd_proxy_info", {
      proxy: p.address,
      name: p.name ?? "",
      origin: p.origins.join(","),
    }, 1);
  }
  family("ivbsnetd_proxy_state", "gauge", "1 for the proxy's current state, 0 for the others.");
  for (const p of proxies) {
    for (const state of PROXY_STATES) {
      sample("ivbsnetd_proxy_state", { proxy: p.address, state }, p.state === state ? 1 : 0);
    }
  }
  family("ivbsnetd_proxy_sessions", "gauge", "Mounts and export clients connected to the proxy.");
  for (const p of proxies) sample("ivbsnetd_proxy_sessions", { proxy: p.address }, p.usedBy.length);
  family("ivbsnetd_proxy_failures_total", "counter", "Connections lost and connects failed.");
  for (const p of proxies) {
    sample("ivbsnetd_proxy_failures_total", { proxy: p.address }, p.failures);
  }
  family("ivbsnetd_proxy_failovers_total", "counter", "Sessions failing over from or to it.");
  for (const p of proxies) {
    sample(
      "ivbsnetd_proxy_failovers_total",
      { proxy: p.address, direction: "from" },
      p.failoversFrom,
    );
    sample("ivbsnetd_proxy_failovers_total", { proxy: p.address, direction: "to" }, p.failoversTo);
  }
  return lines.join("\n") + "\n";
}
