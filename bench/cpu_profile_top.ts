/**
 * Top frames of a V8 `.cpuprofile` (from `deno run --cpu-prof`): self time per
 * function, and the share of idle, GC and "(program)" (native work outside JS:
 * the runtime's ops and syscalls). Used for bench/results/profile_qd1.md.
 *
 * usage: deno run -R bench/cpu_profile_top.ts FILE.cpuprofile [--top 25] [--per N]
 *   --per N: also print µs per request for N requests served during the profile.
 * @module
 */
import { parseArgs } from "node:util";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

/** Self time in µs per frame label, from the sample stream. */
export function selfTimes(profile: Profile): Map<string, number> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const totals = new Map<string, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    // A sample's time is the delta to the next one (V8 convention).
    const delta = profile.timeDeltas[i + 1] ?? 0;
    const node = byId.get(profile.samples[i])!;
    const { functionName, url, lineNumber } = node.callFrame;
    const file = url.replace(/^.*\/(src|bench|ext|node_modules)\//, "$1/");
    const label = url === ""
      ? functionName || "(anonymous)"
      : `${functionName || "(anonymous)"} ${file.length > 0 ? `${file}:${lineNumber + 1}` : ""}`;
    totals.set(label, (totals.get(label) ?? 0) + delta);
  }
  return totals;
}

function main() {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { top: { type: "string", default: "25" }, per: { type: "string" } },
  });
  const profile: Profile = JSON.parse(Deno.readTextFileSync(positionals[0]));
  const totals = selfTimes(profile);
  const wall = profile.endTime - profile.startTime;
  const idle = totals.get("(idle)") ?? 0;
  const busy = wall - idle;
  const per = values.per ? Number(values.per) : 0;
  const us = (v: number) => (per > 0 ? ` ${(v / per).toFixed(2)} µs/req` : "");
  console.log(
    `wall ${(wall / 1e6).toFixed(2)} s, busy ${(busy / 1e6).toFixed(2)} s${us(busy)}`,
  );
  const sorted = [...totals.entries()].filter(([k]) => k !== "(idle)").sort((a, b) => b[1] - a[1]);
  for (const [label, time] of sorted.slice(0, Number(values.top))) {
    console.log(
      `${(time / 1000).toFixed(1).padStart(9)} ms ${(100 * time / busy).toFixed(1).padStart(5)}%${
        us(time)
      }  ${label}`,
    );
  }
}

if (import.meta.main) main();
