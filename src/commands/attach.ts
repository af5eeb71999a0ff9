/**
 * `ivbsnetd attach`: attaches one IVBS image (or a memory disk) to one kernel
 * NBD device in the foreground until SIGINT/SIGTERM, then detaches cleanly and
 * exits 0. For people and for the kernel tests. It wires the IVBS client to the
 * kernel attachment, so it is a command above both layers (like export.ts).
 * @module
 */
import {
  parseFlags,
  parseHostPort,
  parseSize,
  parseWholeNumber,
  readPasswordFile,
  UsageError,
} from "../args.ts";
import { errorCode } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import { type Backend, MemoryBackend } from "../block/backend.ts";
import { IvbsSession } from "../ivbs/session.ts";
import { onStopSignal } from "./signals.ts";

export const HELP = `usage: ivbsnetd attach --device /dev/nbdN SOURCE [options]

Attaches SOURCE to the kernel NBD device and serves it until SIGINT or
SIGTERM, then detaches (NBD_DISCONNECT, answer what is in flight, close) and
exits 0. Needs root and the nbd module (modprobe nbd).

SOURCE, one of:
  --memory SIZE          a memory disk of SIZE bytes (K/M/G/T suffix), lost at exit
  --image IMG            an IVBS image
    --user U             IVBS username
    --password-file F    file holding the password (trailing newline ignored)
    --proxy HOST:PORT    an IVBS proxy; repeat for the fallback list

options:
  --read-only            attach read-only
  --block-size N         logical block size, 512..4096 (default 4096)
  --timeout S            kernel request timeout in seconds (default 0 = none;
                         the IVBS layer has its own I/O timeout)
  --max-in-flight N      requests in flight to the backend (default 128)
  --max-request-kb N     largest request the kernel sends, KiB (default 1024)
  -h, --help             show this help

Prints "attached DEVICE SIZE" on stdout once the device is live.
`;

export interface AttachArgs {
  device: string;
  source:
    | { kind: "memory"; size: number }
    | {
      kind: "ivbs";
      image: string;
      username: string;
      passwordFile: string;
      proxies: { host: string; port: number }[];
    };
  readOnly: boolean;
  blockSize: number;
  timeoutS: number;
  maxInFlight: number;
  maxRequestKb: number;
}

function parseWhole(text: string | undefined, name: string, fallback: number, min: number) {
  return text === undefined ? fallback : parseWholeNumber(text, `--${name}`, min);
}

/** Parses the command line; returns null for --help. */
export function parseAttachArgs(args: string[]): AttachArgs | null {
  const { values } = parseFlags(args, {
    device: { type: "string" },
    memory: { type: "string" },
    image: { type: "string" },
    user: { type: "string" },
    "password-file": { type: "string" },
    proxy: { type: "string", multiple: true },
    "read-only": { type: "boolean" },
    "block-size": { type: "string" },
    timeout: { type: "string" },
    "max-in-flight": { type: "string" },
    "max-request-kb": { type: "string" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) return null;
  if (!values.device) throw new UsageError("--device /dev/nbdN is required");
  if ((values.memory === undefined) === (values.image === undefined)) {
    throw new UsageError("give exactly one of --memory SIZE or --image IMG");
  }
  let source: AttachArgs["source"];
  if (values.memory !== undefined) {
    source = { kind: "memory", size: parseSize(values.memory) };
  } else {
    if (!values.user) throw new UsageError("--image needs --user");
    if (!values["password-file"]) throw new UsageError("--image needs --password-file");
    if (!values.proxy?.length) throw new UsageError("--image needs at least one --proxy");
    source = {
      kind: "ivbs",
      image: values.image!,
      username: values.user,
      passwordFile: values["password-file"],
      proxies: values.proxy.map((text) => parseHostPort(text, "--proxy")),
    };
  }
  return {
    device: values.device,
    source,
    readOnly: values["read-only"] ?? false,
    blockSize: parseWhole(values["block-size"], "block-size", 4096, 512),
    timeoutS: parseWhole(values.timeout, "timeout", 0, 0),
    maxInFlight: parseWhole(values["max-in-flight"], "max-in-flight", 128, 1),
    maxRequestKb: parseWhole(values["max-request-kb"], "max-request-kb", 1024, 4),
  };
}

async function openBackend(args: AttachArgs, log: Logger): Promise<Backend> {
  const source = args.source;
  if (source.kind === "memory") return new MemoryBackend(source.size, { readOnly: args.readOnly });
  const password = await readPasswordFile(source.passwordFile, log);
  return await IvbsSession.open({
    proxies: source.proxies,
    image: source.image,
    username: source.username,
    password,
    readOnly: args.readOnly,
  });
}

export async function run(argv: string[]): Promise<number> {
  const log = logger("attach");
  let args: AttachArgs | null;
  try {
    args = parseAttachArgs(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`ivbsnetd attach: ${error.message} (see --help)`);
    return 2;
  }
  if (args === null) {
    console.log(HELP);
    return 0;
  }
  // Loaded here so `attach --help` and usage errors need no FFI permission.
  const { attachDevice } = await import("../nbd/ioctl_attach.ts");
  let backend: Backend;
  try {
    backend = await openBackend(args, log);
  } catch (error) {
    log.error("cannot open the backend", { error, code: errorCode(error) });
    return 1;
  }
  let signalled = false;
  let device;
  try {
    device = await attachDevice(args.device, backend, {
      blockSize: args.blockSize,
      timeoutS: args.timeoutS,
      maxInFlight: args.maxInFlight,
      maxRequestKb: args.maxRequestKb,
    });
  } catch (error) {
    log.error("cannot attach", { error, code: errorCode(error) });
    await backend.close();
    return 1;
  }
  const stopListening = onStopSignal((signal) => {
    if (signalled) return;
    signalled = true;
    log.info("signal received; detaching", { signal, device: args.device });
    device.detach();
  });
  console.log(`attached ${args.device} ${backend.size}`);
  try {
    await device.done;
  } finally {
    stopListening();
    await backend.close();
  }
  if (!signalled) {
    log.error("the device was disconnected from outside", { device: args.device });
    return 1;
  }
  return 0;
}
