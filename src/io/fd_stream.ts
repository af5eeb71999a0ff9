/**
 * A ByteStream over a raw socket fd (our end of the kernel's socketpair).
 * Data moves with synchronous non-blocking recv / send on the main thread; only
 * when the socket is not ready does a call wait, in poll(2) on a Deno FFI
 * worker thread. Under load most calls never leave the main thread, which
 * matters under emulation where each worker hop costs over a millisecond.
 *
 * close() first shuts the socket down, which ends a pending poll, and closes
 * the fd only once no poll uses it, so a recycled fd number is never polled.
 * @module
 */
import {
  close,
  POLLIN,
  pollOnWorker,
  POLLOUT,
  recvNow,
  sendNow,
  SHUT_RDWR,
  shutdown,
} from "../../ffi/libc.ts";
import type { ByteStream } from "./stream.ts";

/** Thrown by read / write after close(). */
export class StreamClosedError extends Error {
  readonly code = "STREAM_CLOSED";
  constructor(stream: number | string) {
    super(`stream ${typeof stream === "number" ? `on fd ${stream}` : stream} is closed`);
    this.name = "StreamClosedError";
  }
}

export class FdStream implements ByteStream {
  readonly fd: number;
  #closed = false;
  #fdClosed = false;
  /** polls currently waiting on worker threads with this fd. */
  #busy = 0;
  /** Times a read / write had to wait in poll (a worker-thread hop each). */
  readonly waits = { read: 0, write: 0 };

  /** Takes ownership of `fd`: close() closes it. */
  constructor(fd: number) {
    this.fd = fd;
  }

  get closed(): boolean {
    return this.#closed;
  }

  async read(target: Uint8Array): Promise<number | null> {
    if (target.length === 0) return 0;
    for (;;) {
      // After close() whatever is left is just the end of the stream.
      if (this.#closed) return null;
      const n = recvNow(this.fd, target);
      if (n !== null) return n === 0 ? null : n;
      this.waits.read++;
      await this.#wait(POLLIN);
    }
  }

  async write(data: Uint8Array): Promise<number> {
    if (data.length === 0) return 0;
    for (;;) {
      if (this.#closed) throw new StreamClosedError(this.fd);
      const n = sendNow(this.fd, data);
      if (n !== null) return n;
      this.waits.write++;
      await this.#wait(POLLOUT);
    }
  }

  async #wait(events: number): Promise<void> {
    this.#busy++;
    try {
      await pollOnWorker(this.fd, events);
    } finally {
      this.#idle();
    }
  }

  /** Shuts the socket down now (ending pending polls) and closes the fd once they return. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      shutdown(this.fd, SHUT_RDWR);
    } catch {
      // Already shut down by the peer (ENOTCONN): closing is all that is left.
    }
    if (this.#busy === 0) this.#closeFd();
  }

  #idle(): void {
    this.#busy--;
    if (this.#closed && this.#busy === 0) this.#closeFd();
  }

  #closeFd(): void {
    if (this.#fdClosed) return;
    this.#fdClosed = true;
    close(this.fd);
  }
}

/**
 * A Deno.Conn with the same close semantics as FdStream: after close() a read
 * (pending or new) is the end of the stream, a write throws
 * StreamClosedError. Waiting happens in Deno's own reactor on the main thread,
 * so a request that arrives on an idle socket costs one thread wake, not the
 * two of a worker-thread poll.
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
