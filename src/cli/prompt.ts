/**
 * Line input for netdclient: prompts, lines, and passwords read without echo
 * (raw mode when stdin is a terminal; piped input is not echoed anyway).
 * @module
 */

/** What the interactive client talks to; tests pass a scripted one. */
export interface Terminal {
  write(text: string): void;
  /** The next line without its newline; null at end of input. */
  readLine(prompt: string): Promise<string | null>;
  /** Like readLine but the typed characters are not shown; null when cancelled (Ctrl-C/D). */
  readSecret(prompt: string): Promise<string | null>;
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

/** The process's own stdin/stdout. */
export class StdioTerminal implements Terminal {
  readonly #source = new ByteSource(Deno.stdin.readable);
  readonly #encoder = new TextEncoder();

  write(text: string): void {
    const bytes = this.#encoder.encode(text);
    let done = 0;
    while (done < bytes.length) done += Deno.stdout.writeSync(bytes.subarray(done));
  }

  async readLine(prompt: string): Promise<string | null> {
    this.write(prompt);
    return await this.#source.line();
  }

  async readSecret(prompt: string): Promise<string | null> {
    this.write(prompt);
    if (!Deno.stdin.isTerminal()) return await this.#source.line();
    Deno.stdin.setRaw(true);
    try {
      return await readRawSecret(this.#source);
    } finally {
      Deno.stdin.setRaw(false);
      this.write("\n");
    }
  }

  close(): void {
    this.#source.release();
  }
}
