/**
 * The block-backend contract: a block-addressed store that the NBD side serves
 * and the stores implement (the IVBS session is one backend; `MemoryBackend`
 * makes NBD tests independent of IVBS). It lives below both NBD and IVBS so
 * neither layer imports the other.
 * @module
 */

/** errno names the data path passes between layers; mapped to NBD codes on the wire. */
export type Errno =
  | "EIO"
  | "EPERM"
  | "EINVAL"
  | "ENOSPC"
  | "ENOMEM"
  | "EOVERFLOW"
  | "ENOTSUP"
  | "ESHUTDOWN";

/** A failed backend call, carrying the errno the client should see. */
export class BackendError extends Error {
  readonly code = "BACKEND";
  constructor(message: string, readonly errno: Errno) {
    super(message);
    this.name = "BackendError";
  }
}

export interface Backend {
  /** Size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Reads `length` bytes at `offset`; resolves with exactly `length` bytes. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Optional: reads `target.length` bytes at `offset` into `target`, so the
   * serve loop can reuse its buffers (a fresh 1 MiB buffer costs ~40x the copy
   * into it). Must not touch `target` once settled.
   */
  readInto?(offset: number, target: Uint8Array): Promise<void>;
  /**
   * Writes `data` at `offset`; resolves once durable (IVBS acknowledges only
   * stored data). The serve loop reuses `data` once this resolves: do not keep it.
   */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Optional: makes earlier writes durable. Absent when writes are durable on reply. */
  flush?(): Promise<void>;
  /** Optional: discards a range (advertised only when present). */
  trim?(offset: number, length: number): Promise<void>;
  /** Optional: writes zeroes without sending them (advertised only when present). */
  writeZeroes?(offset: number, length: number): Promise<void>;
  /** Releases connections; pending calls reject with ESHUTDOWN. */
  close(): Promise<void>;
}

/** A backend held in memory: for tests and the demo. */
export class MemoryBackend implements Backend {
  readonly #data: Uint8Array;
  readonly readOnly: boolean;

  constructor(size: number, options: { readOnly?: boolean } = {}) {
    this.#data = new Uint8Array(size);
    this.readOnly = options.readOnly ?? false;
  }

  get size(): number {
    return this.#data.length;
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    const error = this.#check(offset, length);
    if (error) return Promise.reject(error);
    return Promise.resolve(this.#data.slice(offset, offset + length));
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    const error = this.#check(offset, target.length);
    if (error) return Promise.reject(error);
    target.set(this.#data.subarray(offset, offset + target.length));
    return Promise.resolve();
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) return Promise.reject(new BackendError("backend is read-only", "EPERM"));
    const error = this.#check(offset, data.length);
    if (error) return Promise.reject(error);
    this.#data.set(data, offset);
    return Promise.resolve();
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    if (this.readOnly) return Promise.reject(new BackendError("backend is read-only", "EPERM"));
    const error = this.#check(offset, length);
    if (error) return Promise.reject(error);
    this.#data.fill(0, offset, offset + length);
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  #check(offset: number, length: number): BackendError | undefined {
    if (offset < 0 || length < 0 || offset + length > this.#data.length) {
      return new BackendError(
        `range ${offset}+${length} is outside the ${this.#data.length}-byte backend`,
        "EINVAL",
      );
    }
    return undefined;
  }
}

/**
 * A view of `backend` that forwards every call and optional capability but
 * closes with `close` instead: for wrappers that share a backend or watch its
 * close. Forwarding is written once here so a new capability (like readInto)
 * cannot be lost by one wrapper.
 */
export function backendWithClose(backend: Backend, close: () => Promise<void>): Backend {
  const view: Backend = {
    get size() {
      return backend.size;
    },
    get readOnly() {
      return backend.readOnly;
    },
    read: (offset, length) => backend.read(offset, length),
    write: (offset, data) => backend.write(offset, data),
    close,
  };
  if (backend.readInto) view.readInto = (offset, target) => backend.readInto!(offset, target);
  if (backend.flush) view.flush = () => backend.flush!();
  if (backend.trim) view.trim = (offset, length) => backend.trim!(offset, length);
  if (backend.writeZeroes) {
    view.writeZeroes = (offset, length) => backend.writeZeroes!(offset, length);
  }
  return view;
}
