/**
 * Every subcommand of ivbsnetd has one definition (src/command_line.ts) and
 * one table (src/commands/registry.ts): `--help` comes from it with exit 0; an
 * unknown flag, a flag without its value or a wrong number of arguments is a
 * usage error with exit 2 in one form (`ivbsnetd NAME: MESSAGE` and the usage
 * lines on stderr, or JSON on stdout with --json); flags several commands take
 * are declared once; and every command line the repository ships (systemd
 * unit, Kubernetes manifests, README) parses against the definitions.
 */
import assert from "node:assert/strict";
import { parseAllDocuments } from "yaml";
import { UsageError } from "../src/args.ts";
import {
  type CommandSpec,
  defineCommand,
  helpText,
  parseCommandLine,
} from "../src/command_line.ts";
import { findCommand } from "../src/cli/command_table.ts";
import { ATTACH, CLIENT, CSI, DEMO, EXPORT, SERVE } from "../src/commands/definitions.ts";
import { oneShotSpec } from "../src/commands/one_shot.ts";
import { SUBCOMMANDS } from "../src/commands/registry.ts";
import { main } from "../main.ts";
import { captureConsole } from "./support/console_capture.ts";

const SPECS = SUBCOMMANDS.map((c) => c.spec);

const SAMPLE = defineCommand({
  name: "sample",
  summary: "a command for the parser's own tests",
  usage: "NAME [MORE]",
  description: "Takes one or two names.",
  flags: {
    level: { type: "string", short: "l", value: "N", help: "a level" },
    peer: { type: "string", value: "HOST:PORT", multiple: true, help: "a peer; repeatable" },
    "a-rather-long-flag-name": {
      type: "string",
      value: "VALUE",
      help: "its help on the next line\nand a second line",
      group: "rare",
    },
    quiet: { type: "boolean", help: "say less" },
  },
  args: [1, 2],
});

function usageError(body: () => unknown): string {
  try {
    body();
  } catch (error) {
    assert.ok(error instanceof UsageError, String(error));
    assert.ok(!error.message.includes("\n"), `one line: ${error.message}`);
    return error.message;
  }
  assert.fail("no UsageError");
}

Deno.test("parseCommandLine reads long, short, --flag=value and repeated flags, typed", () => {
  const line = parseCommandLine(SAMPLE, [
    "first",
    "-l",
    "3",
    "--peer=a:1",
    "--peer",
    "b:2",
    "--quiet",
    "second",
  ]);
  const level: string | undefined = line.values.level;
  const peers: string[] | undefined = line.values.peer;
  const quiet: boolean | undefined = line.values.quiet;
  assert.deepEqual([level, peers, quiet], ["3", ["a:1", "b:2"], true]);
  assert.deepEqual(line.positionals, ["first", "second"]);
});

Deno.test("parseCommandLine answers --help before it counts the arguments", () => {
  assert.equal(parseCommandLine(SAMPLE, ["--help"]).values.help, true);
  assert.equal(parseCommandLine(SAMPLE, ["-h", "a", "b", "c"]).values.help, true);
});

Deno.test("an unknown flag, a missing value and a wrong argument count are one-line UsageErrors", () => {
  assert.equal(
    usageError(() => parseCommandLine(SAMPLE, ["x", "--bogus"])),
    "Unknown option '--bogus'",
  );
  assert.match(
    usageError(() => parseCommandLine(SAMPLE, ["x", "--level"])),
    /'-l, --level <value>' argument missing/,
  );
  assert.match(usageError(() => parseCommandLine(SAMPLE, ["x", "--level", "--quiet"])), /--level/);
  assert.match(usageError(() => parseCommandLine(SAMPLE, ["x", "--quiet=yes"])), /--quiet/);
  assert.equal(usageError(() => parseCommandLine(SAMPLE, [])), "expected NAME [MORE]");
  assert.equal(usageError(() => parseCommandLine(SAMPLE, ["a", "b", "c"])), "expected NAME [MORE]");
  assert.equal(
    usageError(() => parseCommandLine(SERVE, ["extra"])),
    'unexpected argument "extra": it takes none',
  );
});

Deno.test("helpText: usage, description, flags by section with aligned help, notes", () => {
  assert.equal(
    helpText({ ...SAMPLE, notes: "exit codes: none to speak of" }),
    [
      "usage: ivbsnetd sample [options] NAME [MORE]",
      "",
      "Takes one or two names.",
      "",
      "options:",
      "  -l, --level N          a level",
      "  --peer HOST:PORT       a peer; repeatable",
      "  --quiet                say less",
      "  -h, --help             this help",
      "",
      "rare:",
      "  --a-rather-long-flag-name VALUE",
      "                         its help on the next line",
      "                         and a second line",
      "",
      "exit codes: none to speak of",
    ].join("\n"),
  );
  assert.match(
    helpText(CSI),
    /^usage: ivbsnetd csi --endpoint .* --node-id NAME \[options\]\n {7}ivbsnetd csi --endpoint .* --controller/,
  );
});

Deno.test("ivbsnetd --help lists every subcommand of the one table with its summary", async () => {
  const help = await captureConsole(() => main(["--help"]));
  assert.equal(help.result, 0);
  const text = help.stdout.join("\n");
  for (const spec of SPECS) {
    assert.match(text, new RegExp(`^ {2}${spec.name} +${RegExp.escape(spec.summary)}$`, "m"));
  }
  for (
    const name of ["serve", "demo", "client", "csi", "ivbs-server", "attach", "export", "mount"]
  ) {
    assert.ok(SPECS.some((spec) => spec.name === name), name);
  }
  const bare = await captureConsole(() => main([]));
  assert.deepEqual([bare.result, bare.stdout.join("\n")], [2, text]);
  const unknown = await captureConsole(() => main(["frobnicate"]));
  assert.equal(unknown.result, 2);
  assert.match(unknown.stderr[0], /^ivbsnetd: unknown command "frobnicate"/);
});

Deno.test("every subcommand answers --help, -h and `help NAME` with exit 0 and its usage", async () => {
  for (const spec of SPECS) {
    const help = await captureConsole(() => main([spec.name, "--help"]));
    assert.equal(help.result, 0, spec.name);
    assert.deepEqual(help.stderr, [], spec.name);
    const [text] = help.stdout;
    assert.ok(text.startsWith(`usage: ivbsnetd ${spec.name} `), text);
    assert.ok(text.includes(spec.description), spec.name);
    for (const [flag, flagSpec] of Object.entries(spec.flags)) {
      const shown = `--${flag}${flagSpec.type === "string" ? ` ${flagSpec.value}` : ""}`;
      assert.ok(text.includes(shown), `${spec.name} --help shows ${shown}`);
    }
    assert.match(text, /^ {2}-h, --help +this help$/m, spec.name);
    assert.deepEqual((await captureConsole(() => main([spec.name, "-h"]))).stdout, [text]);
    assert.deepEqual((await captureConsole(() => main(["help", spec.name]))).stdout, [text]);
  }
});

Deno.test("every subcommand refuses an unknown flag with exit 2, its name and its usage", async () => {
  for (const spec of SPECS) {
    const run = await captureConsole(() => main([spec.name, "--bogus"]));
    assert.equal(run.result, 2, spec.name);
    assert.deepEqual(run.stdout, [], spec.name);
    assert.equal(run.stderr.length, 1, spec.name);
    assert.match(run.stderr[0], new RegExp(`^ivbsnetd ${spec.name}: Unknown option '--bogus'`));
    assert.match(run.stderr[0], new RegExp(`\nusage: ivbsnetd ${spec.name} `));
  }
});

Deno.test("every flag that takes a value is a usage error without one", async () => {
  for (const spec of SPECS) {
    for (const [flag, flagSpec] of Object.entries(spec.flags)) {
      if (flagSpec.type !== "string") continue;
      const run = await captureConsole(() => main([spec.name, `--${flag}`]));
      assert.equal(run.result, 2, `${spec.name} --${flag}`);
      assert.match(run.stderr[0], new RegExp(`^ivbsnetd ${spec.name}: .*--${flag} <value>'`));
    }
  }
});

Deno.test("a wrong number of arguments is a usage error", async () => {
  for (const spec of SPECS) {
    const [min, max] = spec.args;
    const tooMany = Array.from({ length: max + 1 }, (_, i) => `arg${i}`);
    const cases = min > 0 ? [tooMany, tooMany.slice(0, min - 1)] : [tooMany];
    for (const args of cases) {
      const run = await captureConsole(() => main([spec.name, ...args]));
      assert.equal(run.result, 2, `${spec.name} ${args.join(" ")}`);
      assert.match(run.stderr[0], new RegExp(`^ivbsnetd ${spec.name}: (expected|unexpected)`));
    }
  }
});

Deno.test("with --json, usage errors are JSON on stdout and nothing is on stderr", async () => {
  const withJson = SPECS.filter((spec) => "json" in spec.flags);
  assert.ok(withJson.length >= 10, "the client commands take --json");
  for (const spec of withJson) {
    const run = await captureConsole(() => main([spec.name, "--json", "--bogus"]));
    assert.equal(run.result, 2, spec.name);
    assert.deepEqual(run.stderr, [], spec.name);
    const error = JSON.parse(run.stdout[0]);
    assert.equal(error.code, "USAGE");
    assert.match(error.error, /Unknown option '--bogus'/);
    assert.ok(error.usage.startsWith(`usage: ivbsnetd ${spec.name} `), error.usage);
  }
});

Deno.test("the 2013 words answer --help and usage errors under their own name", async () => {
  const help = await captureConsole(() => main(["listm", "--help"]));
  assert.equal(help.result, 0);
  assert.match(help.stdout[0], /^usage: ivbsnetd listm \[options\]/);
  const bad = await captureConsole(() => main(["disc", "extra"]));
  assert.equal(bad.result, 2);
  assert.match(bad.stderr[0], /^ivbsnetd disc: unexpected argument "extra"/);
});

Deno.test("flags several commands take are declared once", () => {
  const list = oneShotSpec(findCommand("list")!.command);
  const mount = oneShotSpec(findCommand("mount")!.command);
  assert.equal(CLIENT.flags.server, list.flags.server);
  assert.equal(CSI.flags.server, list.flags.server);
  assert.equal(CLIENT.flags.token, list.flags.token);
  assert.equal(SERVE.flags.listen, DEMO.flags.listen);
  for (const flag of ["user", "password-file", "proxy"] as const) {
    assert.equal(ATTACH.flags[flag], EXPORT.flags[flag], flag);
  }
  assert.equal(ATTACH.flags["read-only"], mount.flags["read-only"]);
  assert.equal(EXPORT.flags["read-only"], mount.flags["read-only"]);
  assert.equal(list.flags.json, mount.flags.json);
});

/** The spec a word of the command line names, as main.ts finds it. */
function specOf(word: string): CommandSpec {
  const spec = SPECS.find((s) => s.name === word) ??
    (findCommand(word) && oneShotSpec(findCommand(word)!.command));
  assert.ok(spec, `no command "${word}"`);
  return spec;
}

/** `ivbsnetd …` and `deno run -A main.ts …` lines of the README's shell blocks, as words. */
function readmeCommandLines(readme: string): string[][] {
  const blocks = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]);
  const lines = blocks.flatMap((block) => block.replaceAll("\\\n", " ").split("\n"));
  return lines
    .map((line) => line.replace(/#.*$/, "").replace(/<<<.*$/, "").trim())
    .map((line) => /^(?:sudo )?(?:deno run -A main\.ts|ivbsnetd) (.*)$/.exec(line)?.[1])
    .filter((rest): rest is string => rest !== undefined && !rest.includes("["))
    .map((rest) => rest.split(/\s+/));
}

Deno.test("the command lines the systemd unit, the manifests and the README use still parse", async () => {
  const root = new URL("../", import.meta.url);
  const read = (path: string) => Deno.readTextFile(new URL(path, root));
  const shipped: string[][] = [];
  const unit = await read("systemd/ivbsnetd.service");
  shipped.push(/^ExecStart=\S+\/ivbsnetd (.*)$/m.exec(unit)![1].split(" "));
  for (const file of ["node.yaml", "controller.yaml"]) {
    for (const doc of parseAllDocuments(await read(`deploy/kubernetes/${file}`))) {
      const pod = doc.toJS()?.spec?.template?.spec;
      for (const container of pod?.containers ?? []) {
        if (String(container.image).includes("/ivbsnetd:")) shipped.push(container.args);
      }
    }
  }
  const readme = readmeCommandLines(await read("README.md"));
  assert.ok(readme.length >= 5, `README command lines: ${readme.length}`);
  shipped.push(...readme);
  const words = new Set(shipped.map(([word]) => word));
  for (const word of ["serve", "csi", "ivbs-server", "export", "client", "mount"]) {
    assert.ok(words.has(word), `no shipped ${word} line`);
  }
  for (const [word, ...args] of shipped) {
    const line = parseCommandLine(specOf(word), args);
    assert.equal(line.values.help, undefined, `${word} ${args.join(" ")}`);
  }
});
