/**
 * netdclient: the 2013 interactive client's prompt loop (`ivbsnetd client`, see
 * src/commands/client.ts).
 * Commands: check, disc, exit, help, lista, listm, mount <device> <image> <user> <pass>
 * (asks for what is missing, the password without echo), unmount <device>; and
 * for NBD exports, mirroring mount/unmount/listm: export <name> <image> <user> <pass>,
 * unexport <name>, liste; and for the operator, proxies and events (the newest ones).
 * The server is checked before each command, so a dead
 * daemon is reported at once.
 * @module
 */
import { type ApiClient, ApiError, ServerUnreachableError } from "./api_client.ts";
import {
  addExportCommand,
  checkCommand,
  eventsCommand,
  listAllCommand,
  listExportsCommand,
  listMountedCommand,
  mountCommand,
  type Output,
  proxiesCommand,
  removeExportCommand,
  shutdownCommand,
  unmountCommand,
} from "./commands.ts";
import type { Terminal } from "./prompt.ts";

export const PROMPT = "netdclient> ";

export const HELP = [
  "commands:",
  "  check                                 is the daemon up?",
  "  lista                                 every NBD device, free or used",
  "  listm                                 mounted images",
  "  mount <device> <image> <user> <pass>  mount an image (device: nbdN, /dev/nbdN or auto);",
  "                                        missing arguments are asked for, the password",
  "                                        without echo",
  "  unmount <device>                      detach a device",
  "  liste                                 NBD exports, with their nbd+unix:// URIs",
  "  export <name> <image> <user> <pass>   serve an image as NBD export <name> (for qemu,",
  "                                        nbdinfo, fio); asks for what is missing like mount",
  "  unexport <name>                       stop an export (its clients are disconnected)",
  "  proxies                               IVBS proxies known, their state and failures",
  "  events                                the last 30 events (failovers, mounts, errors…)",
  "  disc                                  shut the daemon down (detaches every device)",
  "  help                                  this list",
  "  exit                                  leave netdclient (also quit, Ctrl-D)",
].join("\n");

const SERVER_COMMANDS = new Set([
  "check",
  "disc",
  "lista",
  "listm",
  "mount",
  "unmount",
  "liste",
  "export",
  "unexport",
  "proxies",
  "events",
]);

/** Runs the prompt loop until exit or end of input. */
export async function runInteractive(client: ApiClient, terminal: Terminal): Promise<void> {
  const out: Output = { print: (text) => terminal.write(text + "\n") };
  out.print(`netdclient for ivbsnetd at ${client.server}; type help for commands`);
  for (;;) {
    const line = await terminal.readLine(PROMPT);
    if (line === null) {
      terminal.write("\n");
      return;
    }
    const [command, ...args] = line.trim().split(/\s+/).filter((word) => word !== "");
    if (command === undefined) continue;
    const name = command.toLowerCase();
    if (name === "exit" || name === "quit") return;
    if (name === "help" || name === "?") {
      out.print(HELP);
      continue;
    }
    if (!SERVER_COMMANDS.has(name)) {
      out.print(`unknown command "${command}"; type help for the list`);
      continue;
    }
    try {
      // The 2013 client checked the server before every command; so do we.
      if (name !== "check") await client.health();
      const done = await runCommand(client, terminal, out, name, args);
      if (!done) return;
    } catch (error) {
      if (error instanceof ServerUnreachableError) out.print(error.message);
      else if (error instanceof ApiError) out.print(`error: ${error.message}`);
      else throw error;
    }
  }
}

/** The commands that take arguments, as `help` shows them; more arguments print this. */
const USAGE: Record<string, string> = {
  unmount: "unmount <device>",
  mount: "mount <device> <image> <user> <pass>",
  unexport: "unexport <name>",
  export: "export <name> <image> <user> <pass>",
};

/** One server command; false when input ended while asking for arguments. */
async function runCommand(
  client: ApiClient,
  terminal: Terminal,
  out: Output,
  name: string,
  args: string[],
): Promise<boolean> {
  const usage = USAGE[name];
  if (usage !== undefined && args.length > usage.split(" ").length - 1) {
    out.print(`usage: ${usage}`);
    return true;
  }
  switch (name) {
    case "check":
      await checkCommand(client, out);
      return true;
    case "lista":
      await listAllCommand(client, out);
      return true;
    case "listm":
      await listMountedCommand(client, out);
      return true;
    case "disc":
      await shutdownCommand(client, out);
      return true;
    case "unmount": {
      const device = args[0] ?? await ask(terminal, "Device: ");
      if (device === null) return false;
      await unmountCommand(client, out, device);
      return true;
    }
    case "mount": {
      const device = args[0] ?? await ask(terminal, "Device [auto]: ", "auto");
      if (device === null) return false;
      const request = await askImageRequest(terminal, args);
      if (request === null) return false;
      if (request.password === null) out.print("mount cancelled");
      else await mountCommand(client, out, { device, ...request, password: request.password });
      return true;
    }
    case "liste":
      await listExportsCommand(client, out);
      return true;
    case "proxies":
      await proxiesCommand(client, out);
      return true;
    case "events":
      await eventsCommand(client, out, { last: 30 });
      return true;
    case "unexport": {
      const name = args[0] ?? await ask(terminal, "Export name: ");
      if (name === null) return false;
      await removeExportCommand(client, out, name);
      return true;
    }
    case "export": {
      const name = args[0] ?? await ask(terminal, "Export name: ");
      if (name === null) return false;
      const request = await askImageRequest(terminal, args);
      if (request === null) return false;
      if (request.password === null) out.print("export cancelled");
      else await addExportCommand(client, out, { name, ...request, password: request.password });
      return true;
    }
  }
  return true;
}

/**
 * `<image> <user> <pass>` after the target of mount and export, asking for
 * what is missing (the password without echo). Null when input ended; a null
 * password when the password prompt was cancelled.
 */
async function askImageRequest(
  terminal: Terminal,
  args: string[],
): Promise<{ image: string; username: string; password: string | null } | null> {
  const image = args[1] ?? await ask(terminal, "Image: ");
  if (image === null) return null;
  const username = args[2] ?? await ask(terminal, "User: ");
  if (username === null) return null;
  return { image, username, password: args[3] ?? await terminal.readSecret("Password: ") };
}

/** Asks until the answer is not empty (or `fallback` is given); null at end of input. */
async function ask(terminal: Terminal, prompt: string, fallback?: string): Promise<string | null> {
  for (;;) {
    const answer = await terminal.readLine(prompt);
    if (answer === null) return null;
    const trimmed = answer.trim();
    if (trimmed !== "") return trimmed;
    if (fallback !== undefined) return fallback;
  }
}
