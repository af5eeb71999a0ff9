/**
 * The import graph points only down the stack: commands → http / cli → daemon
 * → nbd / ivbs → block → io → ffi. Every import (static, dynamic, type-only,
 * re-export) of every module in src/, ffi/ and main.ts is checked against the
 * layer table below; the README's layer table names the same folders. Also:
 * no import circle at all (not even inside a layer), the HTTP layer reads no
 * wire codec, and the CLI sees the daemon only through the API's types.
 */
import assert from "node:assert/strict";
import { dirname, join, normalize, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** A layer: the folder (or file) it owns and the layers it may import. */
interface Layer {
  name: string;
  /** Repository-relative folder ending in "/", or a single file. */
  path: string;
  mayImport: readonly string[];
}

/**
 * The stack, top first. The shared helpers (src/*.ts: log, args, error_info…)
 * may be imported from every layer but ffi, and import only each other.
 */
const LAYERS: readonly Layer[] = [
  { name: "main", path: "main.ts", mayImport: ["commands"] },
  {
    name: "commands",
    path: "src/commands/",
    mayImport: ["csi", "http", "cli", "daemon", "ivbs-server", "nbd", "ivbs", "block", "io", "ffi"],
  },
  // The CSI plugin talks to the daemon only over the HTTP API: through cli's ApiClient.
  {
    name: "csi",
    path: "src/csi/",
    mayImport: ["cli"],
  },
  { name: "http", path: "src/http/", mayImport: ["daemon", "nbd", "ivbs", "block", "io", "ffi"] },
  { name: "cli", path: "src/cli/", mayImport: ["daemon", "nbd", "ivbs", "block", "io", "ffi"] },
  { name: "daemon", path: "src/daemon/", mayImport: ["nbd", "ivbs", "block", "io", "ffi"] },
  { name: "ivbs-server", path: "src/ivbs/server/", mayImport: ["ivbs", "block", "io", "ffi"] },
  { name: "nbd", path: "src/nbd/", mayImport: ["block", "io", "ffi"] },
  { name: "ivbs", path: "src/ivbs/", mayImport: ["block", "io", "ffi"] },
  { name: "block", path: "src/block/", mayImport: ["io", "ffi"] },
  { name: "io", path: "src/io/", mayImport: ["ffi"] },
  { name: "ffi", path: "ffi/", mayImport: [] },
];
const HELPERS = "helpers";

/** The layer a repository-relative path belongs to: the longest matching folder. */
export function layerOf(path: string): string | null {
  let best: Layer | null = null;
  for (const layer of LAYERS) {
    const owns = layer.path.endsWith("/") ? path.startsWith(layer.path) : path === layer.path;
    if (owns && (best === null || layer.path.length > best.path.length)) best = layer;
  }
  if (best) return best.name;
  // deno.json is data (src/version.ts reads its "version"), importable like a helper.
  if (/^src\/[^/]+\.ts$/.test(path) || path === "deno.json") return HELPERS;
  return null;
}

/** Whether a module of layer `from` may import one of layer `to`. */
export function mayImport(from: string, to: string): boolean {
  if (from === to) return true;
  if (from === HELPERS) return false;
  if (to === HELPERS) return from !== "ffi";
  return LAYERS.find((layer) => layer.name === from)?.mayImport.includes(to) ?? false;
}

/** The source with comments blanked out, so a JSDoc example's import does not count. */
function withoutComments(source: string): string {
  let out = "";
  let i = 0;
  while (i < source.length) {
    const c = source[i];
    const next = source[i + 1];
    if (c === "/" && next === "/") {
      while (i < source.length && source[i] !== "\n") i++;
    } else if (c === "/" && next === "*") {
      const end = source.indexOf("*/", i + 2);
      const stop = end < 0 ? source.length : end + 2;
      out += source.slice(i, stop).replace(/[^\n]/g, " ");
      i = stop;
    } else if (c === '"' || c === "'" || c === "`") {
      let j = i + 1;
      while (j < source.length && source[j] !== c) j += source[j] === "\\" ? 2 : 1;
      out += source.slice(i, j + 1);
      i = j + 1;
    } else {
      out += c;
      i++;
    }
  }
  return out;
}

const STATIC_IMPORT = /(?:^|[;}\s])(?:import|export)\s[^;"'`]*?\bfrom\s*["']([^"']+)["']/g;
const BARE_IMPORT = /(?:^|[;}\s])import\s*["']([^"']+)["']/g;
const DYNAMIC_IMPORT = /\bimport\(\s*["']([^"']+)["']\s*\)/g;

/** The relative specifiers a module imports (packages like "hono" are not layers). */
export function importsOf(source: string): string[] {
  const code = withoutComments(source);
  const found: string[] = [];
  for (const pattern of [STATIC_IMPORT, BARE_IMPORT, DYNAMIC_IMPORT]) {
    for (const match of code.matchAll(pattern)) found.push(match[1]);
  }
  return found.filter((specifier) => specifier.startsWith("."));
}

/** Each import of `files` (repository-relative path → source) that points up or sideways. */
export function layeringViolations(files: ReadonlyMap<string, string>): string[] {
  const problems: string[] = [];
  for (const [path, source] of files) {
    const from = layerOf(path);
    for (const specifier of importsOf(source)) {
      const target = normalize(join(dirname(path), specifier));
      const to = layerOf(target);
      if (from === null || to === null) {
        problems.push(`${path} imports ${target}, which is in no layer`);
      } else if (!mayImport(from, to)) {
        problems.push(`${path} (${from}) imports ${target} (${to})`);
      }
    }
  }
  return problems.sort();
}

/** Modules whose byte layouts only their own layer may read. */
const WIRE_MODULES = new Set(["src/nbd/wire.ts", "src/ivbs/wire.ts", "src/nbd/netlink_wire.ts"]);
/** The one module of the daemon the CLI may import: the API's view types and limits. */
const API_TYPES = "src/daemon/api_types.ts";

/** Each import that breaks a rule beyond the layer order (wire codecs, the CLI's contract). */
export function contractViolations(files: ReadonlyMap<string, string>): string[] {
  const problems: string[] = [];
  for (const [path, source] of files) {
    const from = layerOf(path);
    for (const specifier of importsOf(source)) {
      const target = normalize(join(dirname(path), specifier));
      const to = layerOf(target);
      if (from === "http" && WIRE_MODULES.has(target)) {
        problems.push(`${path} (http) imports the wire codec ${target}`);
      }
      if (from === "cli" && to !== "cli" && to !== HELPERS && target !== API_TYPES) {
        problems.push(`${path} (cli) imports ${target}; the CLI may use only ${API_TYPES}`);
      }
    }
  }
  return problems.sort();
}

/**
 * Every import circle among `files`: the modules of each strongly connected
 * component with more than one module (or a module importing itself), in
 * path order, joined by " <-> ".
 */
export function importCycles(files: ReadonlyMap<string, string>): string[] {
  const edges = new Map<string, string[]>();
  for (const [path, source] of files) {
    const targets = importsOf(source).map((s) => normalize(join(dirname(path), s)));
    edges.set(path, targets.filter((target) => files.has(target)));
  }
  // Tarjan's strongly connected components.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[] = [];
  let next = 0;
  const visit = (node: string) => {
    index.set(node, next);
    low.set(node, next++);
    stack.push(node);
    onStack.add(node);
    for (const target of edges.get(node) ?? []) {
      if (!index.has(target)) {
        visit(target);
        low.set(node, Math.min(low.get(node)!, low.get(target)!));
      } else if (onStack.has(target)) {
        low.set(node, Math.min(low.get(node)!, index.get(target)!));
      }
    }
    if (low.get(node) !== index.get(node)) return;
    const component: string[] = [];
    for (let member = stack.pop()!;; member = stack.pop()!) {
      onStack.delete(member);
      component.push(member);
      if (member === node) break;
    }
    if (component.length > 1 || edges.get(node)!.includes(node)) {
      cycles.push(component.sort().join(" <-> "));
    }
  };
  for (const node of [...files.keys()].sort()) if (!index.has(node)) visit(node);
  return cycles.sort();
}

function* typeScriptFiles(dir: string): Generator<string> {
  for (const entry of Deno.readDirSync(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) yield* typeScriptFiles(path);
    else if (entry.name.endsWith(".ts")) yield path;
  }
}

/** main.ts and every module under src/ and ffi/ of the checkout at `root`. */
export function productModules(root: string): Map<string, string> {
  const paths = [
    join(root, "main.ts"),
    ...typeScriptFiles(join(root, "src")),
    ...typeScriptFiles(join(root, "ffi")),
  ];
  return new Map(paths.map((path) => [relative(root, path), Deno.readTextFileSync(path)]));
}

Deno.test("every import in main.ts, src/ and ffi/ points down the layer stack", () => {
  assert.deepEqual(layeringViolations(productModules(ROOT)), []);
});

Deno.test("no module of main.ts, src/ and ffi/ is part of an import circle", () => {
  assert.deepEqual(importCycles(productModules(ROOT)), []);
});

Deno.test("the HTTP layer imports no wire codec and the CLI only the API's types", () => {
  assert.deepEqual(contractViolations(productModules(ROOT)), []);
});

Deno.test("a planted import circle is found, inside a layer and across files", () => {
  const files = new Map([
    ["src/commands/serve.ts", 'const k = await import("./kernel_driver.ts");'],
    ["src/commands/kernel_driver.ts", 'import type { ServeDependencies } from "./serve.ts";'],
    ["src/daemon/a.ts", 'import { b } from "./b.ts";'],
    ["src/daemon/b.ts", 'import { c } from "./c.ts";'],
    ["src/daemon/c.ts", 'export { a } from "./a.ts";'],
    ["src/daemon/d.ts", 'import { a } from "./a.ts";'],
    ["src/io/self.ts", 'import "./self.ts";'],
  ]);
  assert.deepEqual(importCycles(files), [
    "src/commands/kernel_driver.ts <-> src/commands/serve.ts",
    "src/daemon/a.ts <-> src/daemon/b.ts <-> src/daemon/c.ts",
    "src/io/self.ts",
  ]);
  // The real tree with the same circle planted fails the same check.
  const planted = productModules(ROOT);
  planted.set("src/daemon/config_types.ts", 'import { parseConfig } from "./config.ts";');
  assert.match(importCycles(planted).join("\n"), /src\/daemon\/config\.ts <-> .*config_types\.ts/);
});

Deno.test("an HTTP import of a wire codec and a CLI import of daemon internals are violations", () => {
  const files = new Map([
    ["src/http/app.ts", 'import { Op } from "../ivbs/wire.ts";'],
    ["src/http/page.ts", 'import type { NbdAttr } from "../nbd/netlink_wire.ts";'],
    ["src/cli/table.ts", 'import type { MountInfo } from "../daemon/mount_table.ts";'],
    ["src/cli/commands.ts", 'import type { MountInfo } from "../daemon/api_types.ts";'],
    ["src/cli/args.ts", 'import { parseFlags } from "../args.ts";'],
  ]);
  assert.deepEqual(contractViolations(files), [
    "src/cli/table.ts (cli) imports src/daemon/mount_table.ts; the CLI may use only src/daemon/api_types.ts",
    "src/http/app.ts (http) imports the wire codec src/ivbs/wire.ts",
    "src/http/page.ts (http) imports the wire codec src/nbd/netlink_wire.ts",
  ]);
});

Deno.test("every folder in src/ is a layer of the table", () => {
  const folders = [...Deno.readDirSync(join(ROOT, "src"))]
    .filter((entry) => entry.isDirectory)
    .map((entry) => `src/${entry.name}/`);
  assert.deepEqual(
    folders.filter((folder) => !LAYERS.some((layer) => layer.path === folder)),
    [],
  );
});

Deno.test("the README's layer table names exactly the layer folders", () => {
  const readme = Deno.readTextFileSync(join(ROOT, "README.md"));
  const section = readme.slice(readme.indexOf("| layer "));
  const rows = section.slice(0, section.search(/\n(?!\|)/)).split("\n").slice(2);
  // The second column names each layer's folder (or main.ts); the helpers' row is src/*.ts.
  const folders = rows.map((row) => row.split("|")[2].trim().replaceAll("`", ""));
  assert.deepEqual(
    folders.filter((folder) => folder !== "src/*.ts").sort(),
    LAYERS.map((layer) => layer.path).sort(),
  );
});

Deno.test("an import up the stack or across siblings is a violation", () => {
  const files = new Map([
    ["src/daemon/serve_command.ts", 'import { createApp } from "../http/app.ts";'],
    ["src/daemon/demo.ts", 'const m = await import("../ivbs/server/mod.ts");'],
    ["src/ivbs/errors.ts", 'import type { Errno } from "../nbd/backend.ts";'],
    ["src/nbd/serve.ts", 'export { IvbsSession } from "../ivbs/session.ts";'],
    ["src/io/stream.ts", 'import {\n  type Backend,\n} from "../block/backend.ts";'],
    ["src/log.ts", 'import { Daemon } from "./daemon/daemon.ts";'],
    ["ffi/libc.ts", 'import { logger } from "../src/log.ts";'],
    ["main.ts", 'import { Daemon } from "./src/daemon/daemon.ts";'],
  ]);
  assert.deepEqual(layeringViolations(files), [
    "ffi/libc.ts (ffi) imports src/log.ts (helpers)",
    "main.ts (main) imports src/daemon/daemon.ts (daemon)",
    "src/daemon/demo.ts (daemon) imports src/ivbs/server/mod.ts (ivbs-server)",
    "src/daemon/serve_command.ts (daemon) imports src/http/app.ts (http)",
    "src/io/stream.ts (io) imports src/block/backend.ts (block)",
    "src/ivbs/errors.ts (ivbs) imports src/nbd/backend.ts (nbd)",
    "src/log.ts (helpers) imports src/daemon/daemon.ts (daemon)",
    "src/nbd/serve.ts (nbd) imports src/ivbs/session.ts (ivbs)",
  ]);
});

Deno.test("imports down the stack, of shared helpers and inside a layer are allowed", () => {
  const files = new Map([
    ["main.ts", 'const c = await import("./src/commands/serve.ts");'],
    ["src/commands/serve.ts", 'import { createApp } from "../http/app.ts";'],
    ["src/daemon/config.ts", 'import type { ProxyAddress } from "../ivbs/wire.ts";'],
    ["src/ivbs/server/mod.ts", 'import { Op } from "../wire.ts";'],
    ["src/ivbs/session.ts", 'import { Backend } from "../block/backend.ts";\nimport "../log.ts";'],
    ["src/nbd/ioctl_attach.ts", 'import { ioctl } from "../../ffi/libc.ts";'],
    ["src/args.ts", 'import { errorMessage } from "./error_info.ts";\nimport { z } from "zod";'],
  ]);
  assert.deepEqual(layeringViolations(files), []);
});

Deno.test("an import in a comment or a JSDoc example is not a dependency", () => {
  const source = [
    "/**",
    " * ```ts",
    ' * import { startIvbsServer } from "./server/mod.ts";',
    " * ```",
    " */",
    '// import { Daemon } from "../daemon/daemon.ts";',
    'const url = "http://example"; import { a } from "./wire.ts";',
  ].join("\n");
  assert.deepEqual(importsOf(source), ["./wire.ts"]);
});
