/**
 * `ivbsnetd attach`: attaches one IVBS image (or a memory disk) to one kernel
 * NBD device in the foreground until SIGINT/SIGTERM, then detaches cleanly and
 * exits 0. For people and for the kernel tests. It wires the IVBS client to the
 * kernel attachment, so it is a command above both layers (like export.ts).
 * @module
 */
import { parseSize, parseWholeNumber, readPasswordFile, UsageError } from "../args.ts";
import type { CommandLine, FlagValuesOf } from "../command_line.ts";
import { errorCode } from "../error_info.ts";
import { type Logger, logger } from "../log.ts";
import { type Backend, MemoryBackend } from "../block/backend.ts";
import { IvbsSession } from "../ivbs/session.ts";
import { onStopSignal } from "./signals.ts";
import { type ATTACH, ivbsLogin } from "./definitions.ts";

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

/** The attachment the flags describe; a UsageError names the flag that is wrong. */
export function attachArgs(values: FlagValuesOf<typeof ATTACH.flags>): AttachArgs {
  if (!values.device) throw new UsageError("--device /dev/nbdN is required");
  if ((values.memory === undefined) === (values.image === undefined)) {
    throw new UsageError("give exactly one of --memory SIZE or --image IMG");
  }
  let source: AttachArgs["source"];
  if (values.memory !== undefined) {
    source = { kind: "memory", size: parseSize(values.memory) };
  } else {
    source = { kind: "ivbs", image: values.image!, ...ivbsLogin(values) };
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

export async function run({ values }: CommandLine<typeof ATTACH.flags>): Promise<number> {
  const log = logger("attach");
  const args = attachArgs(values);
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
