/**
 * Server side of the NBD fixed newstyle handshake (the NBD project's
 * `doc/proto.md`, "Fixed newstyle negotiation" and "Option types"): greets the
 * client, haggles options, and ends with the chosen export's backend and the
 * FrameReader to hand to the transmission phase (it may already hold the first
 * request bytes).
 *
 * Supported: NBD_OPT_GO / NBD_OPT_INFO (NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE,
 * NBD_INFO_NAME, NBD_INFO_DESCRIPTION), NBD_OPT_LIST, NBD_OPT_ABORT and
 * NBD_OPT_EXPORT_NAME with NBD_FLAG_NO_ZEROES. Everything else (STARTTLS,
 * STRUCTURED_REPLY, metadata contexts, …) is answered NBD_REP_ERR_UNSUP: the
 * serve loop speaks simple replies only and there is no TLS (NOTLS mode).
 *
 * Limits, so a hostile client cannot make us allocate or wait without bound:
 * option data is read into one small per-connection buffer (MAX_OPTION_DATA);
 * longer options are skipped without allocating up to MAX_SKIPPED_OPTION, and
 * beyond that the connection is closed; a bound on options per connection; a
 * deadline for the whole handshake.
 * @module
 */
import { FrameReader } from "../io/frame_reader.ts";
import { type ByteStream, writeAll } from "../io/stream.ts";
import type { Logger } from "../log.ts";
import { type Clock, SYSTEM_CLOCK } from "../clock.ts";
import type { Backend } from "../block/backend.ts";
import { transmissionFlags } from "./flags.ts";
import {
  ClientFlag,
  decodeInfoRequest,
  decodeString,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  EXPORT_NAME_REPLY_SIZE,
  EXPORT_NAME_ZEROES,
  GREETING_SIZE,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  KNOWN_CLIENT_FLAGS,
  MAX_OPTION_DATA,
  MAX_SKIPPED_OPTION,
  NBD_MAGIC,
  Opt,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  optionName,
  Rep,
  REPLY_HEADER_SIZE,
} from "./handshake_wire.ts";

export {
  BLOCK_SIZE,
  ClientFlag,
  decodeInfoRequest,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  MAX_OPTION_DATA,
  MAX_SKIPPED_OPTION,
  MAX_STRING,
  NBD_MAGIC,
  Opt,
  OPTION_REPLY_MAGIC,
  optionName,
  Rep,
} from "./handshake_wire.ts";

/** One export as the handshake sees it. */
export interface ExportEntry {
  readonly name: string;
  /** Shown by NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  readonly description?: string;
  /** Opens a backend for one client; each client gets its own. */
  open(): Promise<Backend>;
}

export interface HandshakeOptions {
  /** Whole handshake deadline; on expiry the stream is closed. Default 10 000 ms. */
  timeoutMs?: number;
  /** Times the deadline (tests pass a manual clock). Default the system clock. */
  clock?: Clock;
  /** Options accepted per connection before we hang up. Default 256. */
  maxOptions?: number;
  log?: Logger;
}

/** A successful handshake: transmission starts with `reader` over the same stream. */
export interface NegotiatedExport {
  /** Canonical export name (the default export's real name when the client sent ""). */
  readonly name: string;
  readonly backend: Backend;
  /** Transmission flags sent to the client. */
  readonly flags: number;
  /** Holds bytes the client may already have sent past the handshake. */
  readonly reader: FrameReader;
}

export type HandshakeErrorCode = "PROTOCOL" | "LIMIT" | "TIMEOUT" | "UNKNOWN_EXPORT";

/** The handshake ended with a hard disconnect; the caller closes the stream. */
export class HandshakeError extends Error {
  constructor(readonly code: HandshakeErrorCode, message: string) {
    super(message);
    this.name = "HandshakeError";
  }
}

/**
 * The exports a client may choose from, by name. Read live, so exports added or
 * removed later apply to the next option.
 */
export type ExportsByName = ReadonlyMap<string, ExportEntry>;

/**
 * The export a client means by `name`: an exact match, or for the empty
 * ("default") name the only export when exactly one exists.
 */
export function findExport(exports: ExportsByName, name: string): ExportEntry | undefined {
  const exact = exports.get(name);
  if (exact || name !== "" || exports.size !== 1) return exact;
  return exports.values().next().value;
}

/**
 * Runs the fixed newstyle handshake on `stream`. Resolves with the chosen
 * export, or null when the client aborted (NBD_OPT_ABORT) or closed between
 * options. Rejects with HandshakeError (or a stream error) when the connection
 * must be dropped; any backend opened on the way is closed then.
 */
export async function negotiate(
  stream: ByteStream,
  exports: ExportsByName,
  options: HandshakeOptions = {},
): Promise<NegotiatedExport | null> {
  const session = new HandshakeSession(stream, exports, options);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const clock = options.clock ?? SYSTEM_CLOCK;
  const timer = clock.setTimeout(() => session.expire(), timeoutMs);
  try {
    const result = await session.run();
    if (session.expired && result) {
      await result.backend.close().catch(() => {});
      throw new HandshakeError("TIMEOUT", `NBD handshake not finished within ${timeoutMs} ms`);
    }
    return result;
  } catch (error) {
    if (session.expired) {
      throw new HandshakeError("TIMEOUT", `NBD handshake not finished within ${timeoutMs} ms`);
    }
    throw error;
  } finally {
    clock.clearTimeout(timer);
    await session.releasePending();
  }
}

/** Per-connection handshake state; only `negotiate` drives it. */
class HandshakeSession {
  readonly #stream: ByteStream;
  readonly #exports: ExportsByName;
  readonly #maxOptions: number;
  readonly #log?: Logger;
  readonly reader: FrameReader;
  readonly #header = new Uint8Array(OPTION_HEADER_SIZE);
  readonly #data = new Uint8Array(MAX_OPTION_DATA);
  #noZeroes = false;
  /** Intermediate replies waiting for the option's final reply. */
  #queued: Uint8Array[] = [];
  #expired = false;
  /** A backend opened for NBD_OPT_INFO, kept for a following GO on the same export. */
  #pending: { entry: ExportEntry; backend: Backend } | null = null;

  constructor(stream: ByteStream, exports: ExportsByName, options: HandshakeOptions) {
    this.#stream = stream;
    this.#exports = exports;
    this.#maxOptions = options.maxOptions ?? 256;
    this.#log = options.log;
    this.reader = new FrameReader(stream);
  }

  get expired(): boolean {
    return this.#expired;
  }

  expire(): void {
    this.#expired = true;
    try {
      this.#stream.close(); // wakes the pending read
    } catch {
      // Already closed.
    }
  }

  async run(): Promise<NegotiatedExport | null> {
    const greeting = new Uint8Array(GREETING_SIZE);
    const view = new DataView(greeting.buffer);
    view.setBigUint64(0, NBD_MAGIC);
    view.setBigUint64(8, IHAVEOPT);
    view.setUint16(16, HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES);
    await writeAll(this.#stream, greeting);

    const clientFlags = new Uint8Array(4);
    if (!await this.reader.readFull(clientFlags, "NBD client flags", true)) return null;
    const flags = new DataView(clientFlags.buffer).getUint32(0);
    if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) {
      throw new HandshakeError("PROTOCOL", `unknown NBD client flags 0x${hex(flags)}`);
    }
    this.#noZeroes = (flags & ClientFlag.NO_ZEROES) !== 0;

    for (let count = 1;; count++) {
      if (!await this.reader.readFull(this.#header, "NBD option header", true)) return null;
      const header = new DataView(this.#header.buffer);
      const magic = header.getBigUint64(0);
      if (magic !== IHAVEOPT) {
        throw new HandshakeError("PROTOCOL", `bad NBD option magic 0x${magic.toString(16)}`);
      }
      const option = header.getUint32(8);
      const length = header.getUint32(12);
      if (count > this.#maxOptions) {
        throw new HandshakeError("LIMIT", `more than ${this.#maxOptions} NBD options`);
      }
      this.#log?.debug("NBD option", { option: optionName(option), length });
      const done = await this.#handle(option, length);
      if (done !== undefined) return done;
    }
  }

  /** Handles one option; returns the result when the handshake ends, else undefined. */
  async #handle(option: number, length: number): Promise<NegotiatedExport | null | undefined> {
    if (length > MAX_OPTION_DATA) {
      // EXPORT_NAME cannot be answered with an error, so it is a hard disconnect too.
      const limit = option === Opt.EXPORT_NAME ? MAX_OPTION_DATA : MAX_SKIPPED_OPTION;
      if (length > limit) {
        throw new HandshakeError(
          "LIMIT",
          `NBD option ${optionName(option)} carries ${length} bytes (limit ${limit})`,
        );
      }
      await this.reader.skip(length, `NBD option ${optionName(option)}`);
      if (option === Opt.ABORT) return await this.#abort(); // its data is to be ignored
      const known = option === Opt.GO || option === Opt.INFO || option === Opt.LIST;
      await this.#reply(option, known ? Rep.ERR_TOO_BIG : Rep.ERR_UNSUP, `option too long`);
      return undefined;
    }
    const data = this.#data.subarray(0, length);
    await this.reader.readFull(data, `NBD option ${optionName(option)}`);
    switch (option) {
      case Opt.EXPORT_NAME:
        return await this.#exportName(data);
      case Opt.ABORT:
        return await this.#abort();
      case Opt.LIST:
        await this.#list(data);
        return undefined;
      case Opt.INFO:
      case Opt.GO:
        return await this.#infoOrGo(option, data);
      default:
        await this.#reply(option, Rep.ERR_UNSUP, `${optionName(option)} is not supported`);
        return undefined;
    }
  }

  async #abort(): Promise<null> {
    try {
      await this.#reply(Opt.ABORT, Rep.ACK);
    } catch {
      // The client may hang up without waiting for the ACK (allowed by the spec).
    }
    return null;
  }

  async #list(data: Uint8Array): Promise<void> {
    if (data.length !== 0) {
      await this.#reply(Opt.LIST, Rep.ERR_INVALID, "NBD_OPT_LIST takes no data");
      return;
    }
    for (const entry of this.#exports.values()) {
      const name = encoder.encode(entry.name);
      const description = encoder.encode(entry.description ?? "");
      const payload = new Uint8Array(4 + name.length + description.length);
      new DataView(payload.buffer).setUint32(0, name.length);
      payload.set(name, 4);
      payload.set(description, 4 + name.length);
      this.#queue(Opt.LIST, Rep.SERVER, payload);
    }
    await this.#reply(Opt.LIST, Rep.ACK);
  }

  /** Old clients: no error path, so an unknown or unavailable export is a hard disconnect. */
  async #exportName(data: Uint8Array): Promise<NegotiatedExport> {
    const name = decodeString(data);
    if (name === null) throw new HandshakeError("PROTOCOL", "export name is not valid UTF-8");
    const entry = findExport(this.#exports, name);
    if (!entry) {
      throw new HandshakeError("UNKNOWN_EXPORT", `unknown export ${quote(name)}`);
    }
    const backend = await this.#open(entry);
    if (!backend) {
      throw new HandshakeError("UNKNOWN_EXPORT", `export ${quote(entry.name)} is not available`);
    }
    const flags = transmissionFlags(backend);
    const reply = new Uint8Array(
      EXPORT_NAME_REPLY_SIZE + (this.#noZeroes ? 0 : EXPORT_NAME_ZEROES),
    );
    const view = new DataView(reply.buffer);
    view.setBigUint64(0, BigInt(backend.size));
    view.setUint16(8, flags);
    await writeAll(this.#stream, reply);
    this.#pending = null;
    return { name: entry.name, backend, flags, reader: this.reader };
  }

  async #infoOrGo(option: number, data: Uint8Array): Promise<NegotiatedExport | undefined> {
    const request = decodeInfoRequest(data);
    if (typeof request === "string") {
      await this.#reply(option, Rep.ERR_INVALID, request);
      return undefined;
    }
    const entry = findExport(this.#exports, request.name);
    if (!entry) {
      await this.#reply(option, Rep.ERR_UNKNOWN, `unknown export ${quote(request.name)}`);
      return undefined;
    }
    const backend = await this.#open(entry);
    if (!backend) {
      await this.#reply(option, Rep.ERR_UNKNOWN, `export ${quote(entry.name)} is not available`);
      return undefined;
    }
    const flags = transmissionFlags(backend);
    this.#queue(option, Rep.INFO, encodeInfoExport(backend.size, flags));
    // Sent even unrequested (allowed): our constraints are the defaults, so this only informs.
    this.#queue(option, Rep.INFO, encodeInfoBlockSize());
    if (request.infos.has(Info.NAME) || entry.name !== request.name) {
      this.#queue(option, Rep.INFO, encodeInfoString(Info.NAME, entry.name));
    }
    if (request.infos.has(Info.DESCRIPTION) && entry.description) {
      this.#queue(option, Rep.INFO, encodeInfoString(Info.DESCRIPTION, entry.description));
    }
    await this.#reply(option, Rep.ACK);
    if (option === Opt.INFO) return undefined;
    this.#pending = null; // ownership passes to the caller
    return { name: entry.name, backend, flags, reader: this.reader };
  }

  /** A backend for `entry`, reusing one opened by an earlier INFO; null when opening failed. */
  async #open(entry: ExportEntry): Promise<Backend | null> {
    if (this.#pending?.entry === entry) return this.#pending.backend;
    await this.releasePending();
    let backend: Backend;
    try {
      backend = await entry.open();
    } catch (error) {
      // The client learns only that the export is unavailable; the cause stays in our log.
      this.#log?.warn("cannot open export backend", { export: entry.name, error });
      return null;
    }
    this.#pending = { entry, backend };
    if (this.#expired) throw new HandshakeError("TIMEOUT", "handshake expired");
    return backend;
  }

  async releasePending(): Promise<void> {
    const pending = this.#pending;
    this.#pending = null;
    if (!pending) return;
    try {
      await pending.backend.close();
    } catch (error) {
      this.#log?.warn("closing export backend failed", { export: pending.entry.name, error });
    }
  }

  /** Queues an intermediate reply (INFO, SERVER); the final reply sends it along. */
  #queue(option: number, type: number, payload: Uint8Array | string = EMPTY): void {
    const data = typeof payload === "string" ? encoder.encode(payload.slice(0, 1024)) : payload;
    const packet = new Uint8Array(REPLY_HEADER_SIZE + data.length);
    const view = new DataView(packet.buffer);
    view.setBigUint64(0, OPTION_REPLY_MAGIC);
    view.setUint32(8, option);
    view.setUint32(12, type);
    view.setUint32(16, data.length);
    packet.set(data, REPLY_HEADER_SIZE);
    this.#queued.push(packet);
  }

  /**
   * Sends the final reply to an option (ACK or an error) with everything
   * queued before it in one write: small separate writes would meet Nagle and
   * delayed ACKs on TCP and cost ~40 ms per option.
   */
  async #reply(option: number, type: number, payload: Uint8Array | string = EMPTY): Promise<void> {
    this.#queue(option, type, payload);
    const parts = this.#queued;
    this.#queued = [];
    const packet = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
    let at = 0;
    for (const part of parts) {
      packet.set(part, at);
      at += part.length;
    }
    await writeAll(this.#stream, packet);
  }
}

const EMPTY = new Uint8Array(0);
const encoder = new TextEncoder();

function quote(name: string): string {
  return JSON.stringify(name.length > 256 ? `${name.slice(0, 256)}…` : name);
}

function hex(value: number): string {
  return value.toString(16).padStart(8, "0");
}
