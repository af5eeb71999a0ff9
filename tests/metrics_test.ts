/**
 * /metrics through its one writer: every family declared once with HELP and
 * TYPE before its samples, label values escaped, build info and process
 * metrics, each mount's and export's reconcile state, and the nbd module's
 * health.
 */
import assert from "node:assert/strict";
import { Exposition } from "../src/daemon/exposition.ts";
import { type MetricsInput, renderMetrics } from "../src/daemon/metrics.ts";
import type { MountSnapshot } from "../src/daemon/mount_table.ts";
import type { ExportSnapshot } from "../src/daemon/export_table.ts";
import { VERSION } from "../src/version.ts";
import { fakePageData } from "../bench/rigs/status_page_data.ts";

const PROCESS = { startTimeSeconds: 1_767_268_800.25, openFds: 17, residentBytes: 52_428_800 };

function input(overrides: Partial<MetricsInput> = {}): MetricsInput {
  const page = fakePageData(2, 0);
  const mounts: MountSnapshot[] = page.mounts.map((info) =>
    ({ info, backend: null, attachment: null }) as unknown as MountSnapshot
  );
  return {
    mounts,
    proxies: page.proxies,
    gauges: { uptimeSeconds: 12.4, managedDevices: 16 },
    process: PROCESS,
    ...overrides,
  };
}

/** Every sample's family is declared (HELP then TYPE) before it, and only once. */
function assertWellFormed(text: string): void {
  const declared = new Set<string>();
  const lines = text.trimEnd().split("\n");
  for (const [i, line] of lines.entries()) {
    const help = /^# HELP (\S+) /.exec(line);
    if (help) {
      assert.ok(!declared.has(help[1]), `${help[1]} declared twice`);
      assert.match(lines[i + 1], new RegExp(`^# TYPE ${help[1]} (counter|gauge|histogram)$`));
      declared.add(help[1]);
      continue;
    }
    if (line.startsWith("# TYPE")) continue;
    const name = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line)?.[1];
    assert.ok(name, `a sample line: ${line}`);
    const family = name.replace(/_(bucket|sum|count)$/, "");
    assert.ok(declared.has(name) || declared.has(family), `${name} has no HELP/TYPE before it`);
  }
}

Deno.test("the exposition writer escapes label values and HELP text, and refuses a family twice", () => {
  const out = new Exposition();
  out.family("x_total", "counter", "Back\\slash and\nnewline.");
  out.sample("x_total", { image: 'a"b\\c\nd' }, 3);
  out.sample("x_total", {}, NaN);
  assert.equal(
    out.text(),
    '# HELP x_total Back\\\\slash and\\nnewline.\n# TYPE x_total counter\nx_total{image="a\\"b\\\\c\\nd"} 3\nx_total NaN\n',
  );
  assert.throws(() => out.family("x_total", "counter", "again"), /written twice/);
});

Deno.test("/metrics carries build info and the process families", () => {
  const text = renderMetrics(input());
  assertWellFormed(text);
  const build = new RegExp(
    `^ivbsnetd_build_info\\{version="${
      VERSION.replaceAll(".", "\\.")
    }",deno="${Deno.version.deno}",v8="[^"]+",typescript="[^"]+"\\} 1$`,
    "m",
  );
  assert.match(text, build);
  assert.match(text, /^process_start_time_seconds 1767268800$/m);
  assert.match(text, /^process_open_fds 17$/m);
  assert.match(text, /^process_resident_memory_bytes 52428800$/m);
});

Deno.test("/metrics of this process reads its real descriptors and memory", () => {
  const text = renderMetrics({ ...input(), process: undefined });
  const fds = Number(/^process_open_fds (\d+)$/m.exec(text)?.[1]);
  const rss = Number(/^process_resident_memory_bytes (\d+)$/m.exec(text)?.[1]);
  const start = Number(/^process_start_time_seconds (\d+)$/m.exec(text)?.[1]);
  assert.ok(fds >= 3, `stdin, stdout, stderr at least: ${fds}`);
  assert.ok(rss > 1_000_000, `${rss} bytes resident`);
  assert.ok(start <= Date.now() / 1000 && start > Date.now() / 1000 - 86_400 * 365, `${start}`);
});

Deno.test("each mount's and export's state, and a failing one's reason and next retry", () => {
  const base = input();
  const failing = {
    ...base.mounts[1].info,
    state: "failing",
    reason: 'IVBS unreachable: "all proxies down"',
    nextRetryAt: "2026-01-01T12:00:30.000Z",
    attempts: 4,
  };
  const mounts = [base.mounts[0], { ...base.mounts[1], info: failing }] as MountSnapshot[];
  const exportInfo = { name: "vm1", image: "disk", state: "pending", clients: 0 };
  const exports = [{ info: exportInfo, stats: null }] as unknown as ExportSnapshot[];
  const text = renderMetrics({ ...base, mounts, exports });
  assertWellFormed(text);
  assert.match(
    text,
    /^ivbsnetd_mount_state\{device="\/dev\/nbd0",image="vm-0",state="mounted"\} 1$/m,
  );
  assert.match(
    text,
    /^ivbsnetd_mount_state\{device="\/dev\/nbd1",image="vm-1",state="failing"\} 1$/m,
  );
  assert.match(
    text,
    /^ivbsnetd_mount_failing_info\{device="\/dev\/nbd1",image="vm-1",reason="IVBS unreachable: \\"all proxies down\\""\} 1$/m,
  );
  assert.match(
    text,
    /^ivbsnetd_mount_next_retry_timestamp_seconds\{device="\/dev\/nbd1",image="vm-1"\} 1767268830$/m,
  );
  assert.match(text, /^ivbsnetd_mount_attempts\{device="\/dev\/nbd1",image="vm-1"\} 4$/m);
  assert.doesNotMatch(
    text,
    /^ivbsnetd_mount_failing_info\{device="\/dev\/nbd0"/m,
    "a ready mount has no reason",
  );
  assert.match(text, /^ivbsnetd_export_state\{export="vm1",image="disk",state="pending"\} 1$/m);
});

Deno.test("the nbd module's health: loaded with free devices, or missing", () => {
  const loaded = renderMetrics(input({ nbd: { module: true, freeDevices: 14 } }));
  assert.match(loaded, /^ivbsnetd_nbd_module_loaded 1$/m);
  assert.match(loaded, /^ivbsnetd_nbd_free_devices 14$/m);
  const missing = renderMetrics(input({ nbd: { module: false, freeDevices: null, reason: "x" } }));
  assert.match(missing, /^ivbsnetd_nbd_module_loaded 0$/m);
  assert.doesNotMatch(missing, /^ivbsnetd_nbd_free_devices \d/m, "unknown is no sample, not 0");
  assert.doesNotMatch(renderMetrics(input()), /ivbsnetd_nbd_module_loaded/);
});

Deno.test("proxies are rendered through the same writer, every state from the start", () => {
  const text = renderMetrics(input());
  assertWellFormed(text);
  assert.match(text, /^ivbsnetd_proxy_state\{proxy="127\.0\.0\.1:11418",state="backoff"\} 1$/m);
  assert.match(text, /^ivbsnetd_proxy_state\{proxy="127\.0\.0\.1:11418",state="unreachable"\} 0$/m);
  assert.equal(text.match(/^# TYPE ivbsnetd_proxy_state gauge$/gm)?.length, 1);
});
