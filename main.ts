/**
 * ivbsnetd: one program, many subcommands. This is the only module that wires
 * all layers together; each command lives in its layer and is loaded on demand
 * so `ivbsnetd client` does not pay for the daemon's FFI or HTTP stack.
 * @module
 */

export interface Command {
  summary: string;
  run(args: string[]): Promise<number>;
}

/** Subcommands by name; each module exports `run(args): Promise<exit code>`. */
const COMMANDS: Record<string, Command> = {
  "ivbs-server": {
    summary: "run the IVBS test server (several proxies over one image store)",
    run: async (args) => (await import("./src/ivbs/server/cli.ts")).run(args),
  },
  attach: {
    summary: "attach one image (or a memory disk) to /dev/nbdX in the foreground, for tests",
    run: async (args) => (await import("./src/attach_command.ts")).run(args),
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) =>
    `  ${name.padEnd(width)}  ${c.summary}`
  );
  return [
    "ivbsnetd: IVBS images as Linux block devices (/dev/nbdX) and NBD exports",
    "",
    "usage: ivbsnetd <command> [options]   (ivbsnetd <command> --help for its options)",
    "",
    "commands:",
    ...lines,
  ].join("\n");
}

export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    console.log(usage());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`ivbsnetd: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  return await command.run(rest);
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
