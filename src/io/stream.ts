/**
 * The byte stream every reader loop and writer works over. `Deno.Conn` fits it
 * as it is; the kernel socket is wrapped by `src/io/conn_stream.ts`.
 * @module
 */

/** A duplex byte stream: `read` resolves null at EOF. */
export interface ByteStream {
  read(target: Uint8Array): Promise<number | null>;
  write(data: Uint8Array): Promise<number>;
  close(): void;
}

/** Writes all of `data`, looping over short writes. */
export async function writeAll(stream: Pick<ByteStream, "write">, data: Uint8Array): Promise<void> {
  let done = 0;
  while (done < data.length) {
    done += await stream.write(done === 0 ? data : data.subarray(done));
  }
}

/** Thrown when a stream ends inside a frame (as opposed to between frames). */
export class UnexpectedEofError extends Error {
  readonly code = "UNEXPECTED_EOF";
  constructor(what: string, got: number, wanted: number) {
    super(`connection closed inside ${what}: got ${got} of ${wanted} bytes`);
    this.name = "UnexpectedEofError";
  }
}
