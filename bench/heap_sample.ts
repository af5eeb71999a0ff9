/**
 * Bytes allocated per request, by call site: V8's sampling heap profiler over
 * the inspector protocol of a running process (started with
 * `deno run --inspect=127.0.0.1:PORT ...`), while fio runs N qd1 4k requests
 * against URI. Objects a minor GC already collected are counted too: this is
 * the allocation rate behind the scavenges, not what stays alive.
 * Used for bench/results/profile_qd1.md.
 *
 * usage: deno run -A bench/heap_sample.ts PORT URI [N=10000] [randread|randwrite]
 * @module
 */

interface SamplingNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: SamplingNode[];
}

async function inspector(port: string) {
  const targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
  const socket = new WebSocket(targets[0].webSocketDebuggerUrl);
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = reject;
  });
  let nextId = 0;
  const waiting = new Map<number, (result: unknown) => void>();
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    waiting.get(message.id)?.(message.result);
    waiting.delete(message.id);
  };
  return {
    call<T>(method: string, params: Record<string, unknown> = {}): Promise<T> {
      const id = ++nextId;
      socket.send(JSON.stringify({ id, method, params }));
      return new Promise((resolve) => waiting.set(id, resolve as (result: unknown) => void));
    },
    close: () => socket.close(),
  };
}

/** Self bytes per call site (the innermost three frames). */
function bySite(root: SamplingNode): Map<string, number> {
  const sites = new Map<string, number>();
  const walk = (node: SamplingNode, stack: string[]) => {
    const { functionName, url, lineNumber } = node.callFrame;
    const frame = `${functionName || "(anonymous)"} ${url.replace(/^.*\/(src|ext)\//, "$1/")}:${
      lineNumber + 1
    }`;
    const path = [...stack, frame];
    if (node.selfSize > 0) {
      const key = path.slice(-3).join(" < ");
      sites.set(key, (sites.get(key) ?? 0) + node.selfSize);
    }
    for (const child of node.children) walk(child, path);
  };
  walk(root, []);
  return sites;
}

async function main() {
  const [port, uri, count = "10000", rw = "randread"] = Deno.args;
  if (!port || !uri) {
    console.error("usage: heap_sample.ts PORT URI [N] [randread|randwrite]");
    Deno.exit(2);
  }
  const requests = Number(count);
  const session = await inspector(port);
  await session.call("HeapProfiler.enable");
  await session.call("HeapProfiler.startSampling", {
    samplingInterval: 256,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  });
  await new Deno.Command("fio", {
    args: [
      "--name=heap",
      `--rw=${rw}`,
      "--bs=4k",
      "--iodepth=1",
      "--size=1G",
      `--number_ios=${requests}`,
      "--ioengine=nbd",
      `--uri=${uri}`,
    ],
    stdout: "null",
    stderr: "null",
  }).output();
  const { profile } = await session.call<{ profile: { head: SamplingNode } }>(
    "HeapProfiler.stopSampling",
  );
  session.close();
  const sites = bySite(profile.head);
  const total = [...sites.values()].reduce((sum, bytes) => sum + bytes, 0);
  console.log(`${(total / requests).toFixed(0)} bytes sampled per request`);
  for (const [site, bytes] of [...sites].sort((a, b) => b[1] - a[1]).slice(0, 25)) {
    console.log(`${(bytes / requests).toFixed(0).padStart(6)} B/req  ${site}`);
  }
}

if (import.meta.main) await main();
