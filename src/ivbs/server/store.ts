/**
 * Image stores of the IVBS test server: one store is shared by every proxy of a
 * server. `MemoryStore` is sparse (chunks allocated on first write, unwritten
 * ranges read as zeroes); `FileStore` keeps `NAME.img` files in a directory and
 * uses positional I/O, so concurrent requests never race on a file offset.
 * @module
 */
import { type FileHandle, mkdir, open, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { IMAGE_NAME_SIZE } from "../wire.ts";

/** One image as configured: name, size and who may use it. */
export interface ServerImage {
  name: string;
  size: number;
  readOnly?: boolean;
  /** Allowed usernames; absent = all users. */
  users?: string[];
}

/** An open image: byte-addressed, ranges already checked by the caller. */
export interface StoredImage {
  readonly name: string;
  readonly size: number;
  readonly readOnly: boolean;
  /** Allowed usernames; undefined = all users. */
  readonly users: ReadonlySet<string> | undefined;
  /** Fills `target` with the bytes at `offset` (zeroes where never written). */
  readInto(offset: number, target: Uint8Array): Promise<void>;
  /**
   * Optional, for stores held in memory: the bytes at `offset`, in order, as views
   * of the stored data (no copy). Callers only read them, and only until their
   * reply is written: a later write to the range changes what they show.
   */
  views?(offset: number, length: number): Uint8Array[];
  /** Stores `data` at `offset`; resolves once stored. */
  write(offset: number, data: Uint8Array): Promise<void>;
}

/** What a listing shows of an image. */
export interface ImageInfo {
  name: string;
  size: number;
  readOnly: boolean;
  /** Allowed usernames; absent = all users. */
  users?: string[];
}

export interface ImageStore {
  /** Every image the store can serve, sorted by name. */
  list(): Promise<ImageInfo[]>;
  /** The image named `name`, or undefined when it does not exist. */
  get(name: string): Promise<StoredImage | undefined>;
  /** Creates the image if missing; an existing one keeps its data and takes the new access settings. */
  create(image: ServerImage): Promise<StoredImage>;
  close(): Promise<void>;
}

/** Thrown for an image definition the server cannot serve. */
export class ImageConfigError extends Error {
  readonly code = "IMAGE_CONFIG";
  constructor(message: string) {
    super(message);
    this.name = "ImageConfigError";
  }
}

// Names double as file names, so keep them to a portable, path-free set.
const IMAGE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

/** Checks a name and size; throws ImageConfigError naming the bad value. */
export function validateImage(image: ServerImage): void {
  if (typeof image.name !== "string" || !IMAGE_NAME.test(image.name)) {
    throw new ImageConfigError(
      `image name ${JSON.stringify(image.name)} must match ${IMAGE_NAME.source}`,
    );
  }
  if (new TextEncoder().encode(image.name).length > IMAGE_NAME_SIZE) {
    throw new ImageConfigError(`image name "${image.name}" is longer than ${IMAGE_NAME_SIZE}`);
  }
  if (!Number.isSafeInteger(image.size) || image.size < 0) {
    throw new ImageConfigError(
      `image "${image.name}" size ${image.size} is not a non-negative integer`,
    );
  }
}

function userSet(users: string[] | undefined): ReadonlySet<string> | undefined {
  return users === undefined ? undefined : new Set(users);
}

function info(image: StoredImage): ImageInfo {
  const listed: ImageInfo = { name: image.name, size: image.size, readOnly: image.readOnly };
  if (image.users) listed.users = [...image.users];
  return listed;
}

function byName(a: ImageInfo, b: ImageInfo): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

// ---- memory ----

/** Allocation unit of the sparse memory store. */
export const MEMORY_CHUNK_SIZE = 1024 * 1024;

let sharedZeroes: Uint8Array | null = null;

/** One chunk of zeroes shared by every unwritten range; only ever read. */
function zeroes(): Uint8Array {
  return sharedZeroes ??= new Uint8Array(MEMORY_CHUNK_SIZE);
}

class MemoryImage implements StoredImage {
  readonly #chunks = new Map<number, Uint8Array>();
  readOnly: boolean;
  users: ReadonlySet<string> | undefined;

  constructor(readonly name: string, readonly size: number, image: ServerImage) {
    this.readOnly = image.readOnly ?? false;
    this.users = userSet(image.users);
  }

  /** A copy of what views() shows (READ replies use the views themselves). */
  readInto(offset: number, target: Uint8Array): Promise<void> {
    let done = 0;
    for (const part of this.views(offset, target.length)) {
      target.set(part, done);
      done += part.length;
    }
    return Promise.resolve();
  }

  views(offset: number, length: number): Uint8Array[] {
    const parts: Uint8Array[] = [];
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const index = Math.floor(at / MEMORY_CHUNK_SIZE);
      const within = at - index * MEMORY_CHUNK_SIZE;
      const take = Math.min(MEMORY_CHUNK_SIZE - within, length - done);
      const chunk = this.#chunks.get(index);
      parts.push(chunk ? chunk.subarray(within, within + take) : zeroes().subarray(0, take));
      done += take;
    }
    return parts;
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const at = offset + done;
      const index = Math.floor(at / MEMORY_CHUNK_SIZE);
      const within = at - index * MEMORY_CHUNK_SIZE;
      const take = Math.min(MEMORY_CHUNK_SIZE - within, data.length - done);
      let chunk = this.#chunks.get(index);
      if (!chunk) {
        // The last chunk is cut at the image end, so a tiny image costs only its size.
        chunk = new Uint8Array(Math.min(MEMORY_CHUNK_SIZE, this.size - index * MEMORY_CHUNK_SIZE));
        this.#chunks.set(index, chunk);
      }
      chunk.set(data.subarray(done, done + take), within);
      done += take;
    }
    return Promise.resolve();
  }
}

/** Images held in memory, sparse: a 10 GiB image costs nothing until written. */
export class MemoryStore implements ImageStore {
  readonly #images = new Map<string, MemoryImage>();

  list(): Promise<ImageInfo[]> {
    return Promise.resolve([...this.#images.values()].map(info).sort(byName));
  }

  get(name: string): Promise<StoredImage | undefined> {
    return Promise.resolve(this.#images.get(name));
  }

  create(image: ServerImage): Promise<StoredImage> {
    validateImage(image);
    const existing = this.#images.get(image.name);
    if (existing) {
      existing.readOnly = image.readOnly ?? false;
      existing.users = userSet(image.users);
      return Promise.resolve(existing);
    }
    const created = new MemoryImage(image.name, image.size, image);
    this.#images.set(image.name, created);
    return Promise.resolve(created);
  }

  close(): Promise<void> {
    this.#images.clear();
    return Promise.resolve();
  }
}

// ---- files ----

class FileImage implements StoredImage {
  constructor(
    readonly name: string,
    readonly size: number,
    readonly handle: FileHandle,
    public readOnly: boolean,
    public users: ReadonlySet<string> | undefined,
  ) {}

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    let done = 0;
    while (done < target.length) {
      const { bytesRead } = await this.handle.read(
        target,
        done,
        target.length - done,
        offset + done,
      );
      if (bytesRead === 0) {
        // The file is shorter than the image (truncated behind our back): zeroes, like a hole.
        target.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(
        data,
        done,
        data.length - done,
        offset + done,
      );
      done += bytesWritten;
    }
  }
}

/**
 * Images as `NAME.img` files in one directory. Files that already exist are
 * served as they are (read-write, all users) unless configured otherwise.
 * Writes reach the page cache before the reply (they survive a server crash,
 * not a power cut); `close` syncs every file.
 */
export class FileStore implements ImageStore {
  readonly #dir: string;
  // Promises, so concurrent attaches of one image open its file once.
  readonly #images = new Map<string, Promise<FileImage | undefined>>();
  #closed = false;

  constructor(dir: string) {
    this.#dir = dir;
  }

  /** Path of an image's file. */
  pathOf(name: string): string {
    return join(this.#dir, `${name}.img`);
  }

  /** Opens every `NAME.img` in the directory (a missing directory holds no images). */
  async list(): Promise<ImageInfo[]> {
    let entries: string[];
    try {
      entries = await readdir(this.#dir);
    } catch {
      return [];
    }
    const names = entries.filter((file) => file.endsWith(".img")).map((file) => file.slice(0, -4));
    const images = await Promise.all(names.map((name) => this.get(name)));
    return images.filter((image) => image !== undefined).map(info).sort(byName);
  }

  get(name: string): Promise<StoredImage | undefined> {
    if (this.#closed || !IMAGE_NAME.test(name)) return Promise.resolve(undefined);
    let image = this.#images.get(name);
    if (!image) {
      image = this.#openExisting(name);
      this.#images.set(name, image);
      // A missing file may be created later: do not cache the miss.
      image.then((found) => {
        if (!found && this.#images.get(name) === image) this.#images.delete(name);
      });
    }
    return image;
  }

  async create(image: ServerImage): Promise<StoredImage> {
    validateImage(image);
    await mkdir(this.#dir, { recursive: true });
    const existing = await this.get(image.name) as FileImage | undefined;
    if (existing) {
      existing.readOnly = image.readOnly ?? false;
      existing.users = userSet(image.users);
      return existing;
    }
    // "wx": fail rather than clobber a file another process created meanwhile.
    const handle = await open(this.pathOf(image.name), "wx+");
    await handle.truncate(image.size); // sparse: no blocks until written
    const created = new FileImage(
      image.name,
      image.size,
      handle,
      image.readOnly ?? false,
      userSet(image.users),
    );
    this.#images.set(image.name, Promise.resolve(created));
    return created;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const images = await Promise.all(this.#images.values());
    this.#images.clear();
    for (const image of images) {
      if (!image) continue;
      await image.handle.datasync().catch(() => {});
      await image.handle.close();
    }
  }

  async #openExisting(name: string): Promise<FileImage | undefined> {
    const path = this.pathOf(name);
    let size: number;
    try {
      const info = await stat(path);
      if (!info.isFile()) return undefined;
      size = info.size;
    } catch {
      return undefined;
    }
    const handle = await open(path, "r+");
    return new FileImage(name, size, handle, false, undefined);
  }
}
