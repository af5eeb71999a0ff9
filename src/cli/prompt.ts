/**
 * Line input for the clients. netdclient reads through node:readline
 * (ReadlineTerminal: line editing, history, Ctrl-C cancels the line); the
 * one-shot commands read a password byte by byte from a raw-mode terminal
 * (readRawSecret) or a line from piped stdin (ByteSource).
 * @module
 */
import { createInterface, type Interface } from "node:readline/promises";
import { Writable } from "node:stream";

/** What the interactive client talks to; tests pass a scripted one. */
export interface Terminal {
  write(text: string): void;
  /** The next line without its newline; null at end of input (or when the user exits). */
  readLine(prompt: string): Promise<string | null>;
  /** Like readLine but the typed characters are not shown; null when cancelled (Ctrl-C/D). */
  readSecret(prompt: string): Promise<string | null>;
  /** While a command runs, Ctrl-C calls `listener` (null: back to cancelling lines). */
  onInterrupt?(listener: (() => void) | null): void;
}

const CR = 0x0d;
const LF = 0x0a;
const CTRL_C = 0x03;
const CTRL_D = 0x04;
const BACKSPACE = 0x08;
const DELETE = 0x7f;
/** Longest line we keep; the rest of a longer line is dropped (bounded memory). */
const MAX_LINE_BYTES = 64 * 1024;

/** Buffered bytes from a stream, handed out one byte at a time. */
export class ByteSource {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  #chunk: Uint8Array = new Uint8Array(0);
  #at = 0;
  #ended = false;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }

  /** Next byte, or null at end of input. */
  async next(): Promise<number | null> {
    while (this.#at >= this.#chunk.length) {
      if (this.#ended) return null;
      const { value, done } = await this.#reader.read();
      if (done) {
        this.#ended = true;
        return null;
      }
      this.#chunk = value;
      this.#at = 0;
    }
    return this.#chunk[this.#at++];
  }

  /** Bytes up to the next LF (CR before it dropped); null at end of input with nothing read. */
  async line(): Promise<string | null> {
    const bytes: number[] = [];
    for (;;) {
      const byte = await this.next();
      if (byte === null) {
        return bytes.length === 0 ? null : decode(bytes);
      }
      if (byte === LF) return decode(bytes);
      if (bytes.length < MAX_LINE_BYTES) bytes.push(byte);
    }
  }

  release(): void {
    this.#reader.releaseLock();
  }
}

function decode(bytes: number[]): string {
  const text = new TextDecoder().decode(new Uint8Array(bytes));
  return text.endsWith("\r") ? text.slice(0, -1) : text;
}

/** Reads a secret byte by byte from a raw-mode terminal; null on Ctrl-C / Ctrl-D. */
export async function readRawSecret(source: ByteSource): Promise<string | null> {
  const bytes: number[] = [];
  for (;;) {
    const byte = await source.next();
    if (byte === null || byte === CTRL_C || (byte === CTRL_D && bytes.length === 0)) return null;
    if (byte === CR || byte === LF) return new TextDecoder().decode(new Uint8Array(bytes));
    if (byte === DELETE || byte === BACKSPACE) {
      // Drop a whole UTF-8 character: continuation bytes are 10xxxxxx.
      while (bytes.length > 0 && (bytes.pop()! & 0xc0) === 0x80) { /* keep popping */ }
      continue;
    }
    if (byte < 0x20) continue;
    if (bytes.length < MAX_LINE_BYTES) bytes.push(byte);
  }
}

/** Lines read ahead of the prompt before the input is paused. */
const MAX_QUEUED_LINES = 256;

/** Where the terminal's text goes: written at once, so nothing waits in a buffer at exit. */
export interface TextSink {
  write(text: string): void;
  /** The terminal's width, for readline's layout of long lines. */
  columns?: number;
}

/** Output that can be silenced while a password is typed (readline echoes through it). */
class MutableOutput extends Writable {
  muted = false;
  constructor(readonly sink: TextSink) {
    super({ decodeStrings: false });
  }
  get columns(): number | undefined {
    return this.sink.columns;
  }
  override _write(chunk: Uint8Array | string, _encoding: string, done: () => void): void {
    if (!this.muted) this.sink.write(typeof chunk === "string" ? chunk : decoder.decode(chunk));
    done();
  }
}

const decoder = new TextDecoder();

/** The process's stdout as a TextSink. */
export function stdoutSink(): TextSink {
  const encoder = new TextEncoder();
  return {
    write(text) {
      const bytes = encoder.encode(text);
      let done = 0;
      while (done < bytes.length) done += Deno.stdout.writeSync(bytes.subarray(done));
    },
    get columns() {
      return Deno.stdout.isTerminal() ? Deno.consoleSize().columns : undefined;
    },
  };
}

export interface ReadlineTerminalOptions {
  input: NodeJS.ReadableStream;
  output: TextSink;
  /** Line editing and history (a TTY); false for piped input. */
  terminal: boolean;
}

/**
 * netdclient's terminal on node:readline (promises API): line editing and an
 * in-memory history (up/down) when interactive. Ctrl-C cancels the line being
 * typed and prompts again; Ctrl-C on an empty line warns, a second one exits,
 * and so does Ctrl-D. While a command runs, Ctrl-C interrupts it instead.
 * Passwords are read with the echo muted and kept out of the history.
 */
export class ReadlineTerminal implements Terminal {
  readonly #rl: Interface;
  readonly #output: MutableOutput;
  /** Lines typed (or piped) before anyone asked; bounded by pausing the input. */
  readonly #lines: string[] = [];
  /** The open question's answer: a line, null at end of input, or "interrupted". */
  #waiter: ((answer: string | null | "interrupted") => void) | null = null;
  #closed = false;
  /** The last Ctrl-C came on an empty line: the next one exits. */
  #armed = false;
  #exitAsked = false;
  #interrupt: (() => void) | null = null;

  constructor(options: ReadlineTerminalOptions) {
    this.#output = new MutableOutput(options.output);
    this.#rl = createInterface({
      input: options.input,
      output: this.#output,
      terminal: options.terminal,
      historySize: 1000,
      removeHistoryDuplicates: true,
    });
    // Lines, not rl.question(): a piped script's lines arrive before they are asked for.
    this.#rl.on("line", (line: string) => {
      if (this.#answer(line)) return;
      this.#lines.push(line);
      if (this.#lines.length >= MAX_QUEUED_LINES) this.#rl.pause();
    });
    this.#rl.on("SIGINT", () => this.#onCtrlC());
    this.#rl.on("close", () => {
      this.#closed = true;
      this.#answer(null);
    });
  }

  #answer(answer: string | null | "interrupted"): boolean {
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.(answer);
    return waiter !== null;
  }

  #onCtrlC(): void {
    if (!this.#waiter) {
      this.#interrupt?.();
      return;
    }
    const empty = this.#rl.line === "";
    if (empty && this.#armed) this.#exitAsked = true;
    else if (empty) this.write("\n(To exit, press Ctrl-C again or Ctrl-D)\n");
    else this.write("^C\n");
    this.#armed = empty;
    // Drop what was typed, as node's own REPL does; the next prompt draws a fresh line.
    Object.assign(this.#rl, { line: "", cursor: 0 });
    this.#answer("interrupted");
  }

  write(text: string): void {
    this.#output.write(text);
  }

  onInterrupt(listener: (() => void) | null): void {
    this.#interrupt = listener;
  }

  /** One answer; null when input ended, "interrupted" on Ctrl-C. */
  #ask(prompt: string): Promise<string | null | "interrupted"> {
    const queued = this.#lines.shift();
    if (queued !== undefined || this.#closed) {
      this.#output.write(prompt);
      if (!this.#closed && this.#lines.length < MAX_QUEUED_LINES) this.#rl.resume();
      return Promise.resolve(queued ?? null);
    }
    // readline draws the prompt, and redraws it as the line is edited.
    this.#rl.setPrompt(prompt);
    this.#rl.prompt();
    return new Promise((resolve) => this.#waiter = resolve);
  }

  async readLine(prompt: string): Promise<string | null> {
    for (;;) {
      const answer = await this.#ask(prompt);
      if (answer === null) return null;
      if (answer !== "interrupted") {
        this.#armed = false;
        return answer;
      }
      if (this.#exitAsked) return null;
    }
  }

  async readSecret(prompt: string): Promise<string | null> {
    this.write(prompt);
    this.#output.muted = true;
    let answer;
    try {
      answer = await this.#ask("");
    } finally {
      this.#output.muted = false;
      this.write("\n");
    }
    if (answer === null || answer === "interrupted") return null;
    // readline remembers every line; a password must not come back with the up arrow.
    const history = (this.#rl as unknown as { history?: string[] }).history;
    if (history?.[0] === answer) history.shift();
    return answer;
  }

  close(): void {
    this.#rl.close();
  }
}
