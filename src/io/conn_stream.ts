/**
 * The kernel attachment's end of the NBD socket as a ByteStream: a Deno.Conn
 * whose close() is final. Waiting happens in Deno's own reactor on the main
 * thread, so a request that arrives on an idle socket costs one thread wake.
 * @module
 */
import type { ByteStream } from "./stream.ts";

/** Thrown by read / write after close(). */
export class StreamClosedError extends Error {
  readonly code = "STREAM_CLOSED";
  constructor(stream: string) {
    super(`stream ${stream} is closed`);
    this.name = "StreamClosedError";
  }
}

/**
 * A Deno.Conn that, after close(), answers a read (pending or new) with the
 * end of the stream and a write with StreamClosedError.
 */
export class ConnStream implements ByteStream {
  readonly #conn: Deno.Conn;
  readonly #name: string;
  #closed = false;

  /** Takes ownership of `conn`: close() closes it. `name` is for error messages. */
  constructor(conn: Deno.Conn, name: string) {
    this.#conn = conn;
    this.#name = name;
  }

  get closed(): boolean {
    return this.#closed;
  }

  async read(target: Uint8Array): Promise<number | null> {
    if (this.#closed) return null;
    try {
      return await this.#conn.read(target);
    } catch (error) {
      // close() cancels a pending read: that is the end of the stream.
      if (this.#closed) return null;
      throw error;
    }
  }

  async write(data: Uint8Array): Promise<number> {
    if (this.#closed) throw new StreamClosedError(this.#name);
    try {
      return await this.#conn.write(data);
    } catch (error) {
      if (this.#closed) throw new StreamClosedError(this.#name);
      throw error;
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#conn.close();
  }
}
