/**
 * The V8 flags of src/runtime_flags.ts: every place that launches ivbsnetd
 * passes them, and V8 takes them (an unknown flag makes deno exit; a known one
 * must change what it claims to change: the young generation's size).
 */
import assert from "node:assert/strict";
import { V8_FLAGS, V8_FLAGS_ARG } from "../src/runtime_flags.ts";

const ROOT = new URL("..", import.meta.url);
const MIB = 1024 * 1024;

/** Young-generation bytes of a fresh deno after some short-lived garbage, under `flags`. */
async function youngGeneration(flags: string[]): Promise<number> {
  const script = `import v8 from "node:v8";
    let garbage = [];
    for (let i = 0; i < 2e6; i++) { garbage.push({ i }); if (garbage.length > 100) garbage = []; }
    const space = v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space");
    console.log(space.space_size);`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", ...flags, script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return Number(new TextDecoder().decode(out.stdout).trim());
}

Deno.test("the compile and demo tasks, the installed launcher and the image pass the V8 flags", async () => {
  const tasks = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT))).tasks;
  assert.match(tasks.compile, /^deno compile /);
  assert.ok(tasks.compile.includes(` ${V8_FLAGS_ARG} `), tasks.compile);
  assert.ok(tasks.demo.includes(` ${V8_FLAGS_ARG} `), tasks.demo);
  const install = await Deno.readTextFile(new URL("tools/install.sh", ROOT));
  assert.match(install, new RegExp(`^exec "\\$DENO" run .*${V8_FLAGS_ARG} "\\$lib/`, "m"));
  // The image builds with the compile task, so it carries the same flags.
  const image = await Deno.readTextFile(new URL("deploy/kubernetes/Containerfile", ROOT));
  assert.match(image, /^RUN deno task compile\b/m);
});

Deno.test("V8 takes the flags: the young generation starts at the size they ask for", async () => {
  const semiSpace = V8_FLAGS.find((flag) => flag.startsWith("--min-semi-space-size="));
  assert.ok(semiSpace, "the flags set the semi-space size");
  const askedMiB = Number(semiSpace.split("=")[1]);
  const withFlags = await youngGeneration([V8_FLAGS_ARG]);
  const withoutFlags = await youngGeneration([]);
  // Two semi-spaces (from and to) of the size asked for.
  assert.ok(withFlags >= 2 * askedMiB * MIB, `young generation ${withFlags} B with the flags`);
  assert.ok(withoutFlags < withFlags, `default ${withoutFlags} B is not smaller`);
});

Deno.test("the flags keep the heap through idle periods: V8's memory reducer is off", () => {
  // The reducer's shrinking GCs after ~30 s idle make the next burst's p99 3-4x higher
  // (bench/results.md, "Issue 19: the qd1 tail after idle"); V8 taking the flag is
  // proven by the young-generation test above, which starts deno with all of them.
  assert.ok(V8_FLAGS.includes("--no-memory-reducer"), V8_FLAGS.join(" "));
});
