/**
 * A pipelined random read/write workload over a Backend, checked against a
 * model. Requests in flight never overlap (the order of overlapping requests
 * is undefined for a block device), so every read has one right answer.
 *
 * Two checks: "bytes" keeps a full copy of the image and compares byte for
 * byte; "checksums" writes self-describing blocks (block index, version,
 * random fill, FNV-1a checksum) and keeps only each block's version.
 * @module
 */
import type { Backend } from "../../src/block/backend.ts";

export interface WorkloadOptions {
  blockSize: number;
  blocks: number;
  /** Requests to issue at least. */
  ops: number;
  /** Requests in flight at once. */
  depth: number;
  maxBlocksPerOp: number;
  seed: number;
  mode: "bytes" | "checksums";
  /** Keep issuing past `ops` while this returns true (e.g. while faults are injected). */
  keepGoing?: () => boolean;
}

export interface WorkloadResult {
  reads: number;
  writes: number;
  /** Requests the backend failed (message each). */
  errors: string[];
  /** Reads whose data did not match the model. */
  mismatches: string[];
  /** Longest single request, ms (for logs, not asserts). */
  maxLatencyMs: number;
}

/** Small deterministic PRNG (mulberry32) so a failing seed can be replayed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function fnv1a(bytes: Uint8Array): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) {
    hash ^= bytes[i];
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

const BLOCK_HEADER = 8; // index u32 + version u32
const BLOCK_TRAILER = 4; // FNV-1a of everything before it

/** The expected image content, kept as bytes or as per-block versions. */
export class BlockModel {
  readonly bytes: Uint8Array | null;
  readonly versions: Uint32Array;

  constructor(
    readonly blockSize: number,
    readonly blocks: number,
    readonly mode: "bytes" | "checksums",
  ) {
    if (mode === "checksums" && blockSize < BLOCK_HEADER + BLOCK_TRAILER + 1) {
      throw new RangeError(`block size ${blockSize} is too small for checksummed blocks`);
    }
    this.bytes = mode === "bytes" ? new Uint8Array(blockSize * blocks) : null;
    this.versions = new Uint32Array(blocks);
  }

  /** Content for writing blocks [first, first+count) as their next version. */
  makeWrite(first: number, count: number, random: () => number): Uint8Array {
    const data = new Uint8Array(count * this.blockSize);
    // Random fill, 4 bytes at a time.
    const words = new Uint32Array(data.buffer, 0, data.length >> 2);
    for (let i = 0; i < words.length; i++) words[i] = (random() * 4294967296) >>> 0;
    if (this.mode === "checksums") {
      for (let b = 0; b < count; b++) {
        const block = data.subarray(b * this.blockSize, (b + 1) * this.blockSize);
        const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
        view.setUint32(0, first + b);
        view.setUint32(4, this.versions[first + b] + 1);
        view.setUint32(
          block.length - BLOCK_TRAILER,
          fnv1a(block.subarray(0, block.length - BLOCK_TRAILER)),
        );
      }
    }
    return data;
  }

  /** Records a completed write. */
  applyWrite(first: number, data: Uint8Array): void {
    const count = data.length / this.blockSize;
    for (let b = 0; b < count; b++) this.versions[first + b]++;
    this.bytes?.set(data, first * this.blockSize);
  }

  /** Describes what is wrong with `data` read from blocks [first, ...), or null when right. */
  check(first: number, data: Uint8Array): string | null {
    if (this.bytes) {
      const expected = this.bytes.subarray(
        first * this.blockSize,
        first * this.blockSize + data.length,
      );
      for (let i = 0; i < data.length; i++) {
        if (data[i] !== expected[i]) {
          return `byte ${first * this.blockSize + i}: got ${data[i]}, expected ${expected[i]}`;
        }
      }
      return null;
    }
    const count = data.length / this.blockSize;
    for (let b = 0; b < count; b++) {
      const index = first + b;
      const block = data.subarray(b * this.blockSize, (b + 1) * this.blockSize);
      const version = this.versions[index];
      if (version === 0) {
        if (block.some((byte) => byte !== 0)) return `block ${index}: never written but not zero`;
        continue;
      }
      const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
      const sum = fnv1a(block.subarray(0, block.length - BLOCK_TRAILER));
      if (view.getUint32(block.length - BLOCK_TRAILER) !== sum) {
        return `block ${index}: bad checksum`;
      }
      if (view.getUint32(0) !== index) return `block ${index}: holds block ${view.getUint32(0)}`;
      if (view.getUint32(4) !== version) {
        return `block ${index}: version ${view.getUint32(4)}, expected ${version}`;
      }
    }
    return null;
  }
}

/** Runs the workload; never throws for backend errors (they are counted and returned). */
export async function runWorkload(
  backend: Backend,
  model: BlockModel,
  options: WorkloadOptions,
): Promise<WorkloadResult> {
  const random = prng(options.seed);
  const busy = new Uint8Array(options.blocks);
  const result: WorkloadResult = {
    reads: 0,
    writes: 0,
    errors: [],
    mismatches: [],
    maxLatencyMs: 0,
  };
  const inFlight = new Set<Promise<void>>();
  let issued = 0;
  const more = () => issued < options.ops || (options.keepGoing?.() ?? false);

  const runOne = async (first: number, count: number, write: boolean) => {
    const offset = first * options.blockSize;
    const started = performance.now();
    try {
      if (write) {
        const data = model.makeWrite(first, count, random);
        await backend.write(offset, data);
        model.applyWrite(first, data);
        result.writes++;
      } else {
        const data = await backend.read(offset, count * options.blockSize);
        const wrong = model.check(first, data);
        if (wrong) result.mismatches.push(wrong);
        result.reads++;
      }
    } catch (error) {
      result.errors.push(
        `${write ? "write" : "read"} ${offset}+${count * options.blockSize}: ${error}`,
      );
    } finally {
      result.maxLatencyMs = Math.max(result.maxLatencyMs, performance.now() - started);
      busy.fill(0, first, first + count);
    }
  };

  while (more()) {
    if (inFlight.size >= options.depth) {
      await Promise.race(inFlight);
      continue;
    }
    const count = 1 + Math.floor(random() * options.maxBlocksPerOp);
    const first = Math.floor(random() * (options.blocks - count + 1));
    if (busy.subarray(first, first + count).some((b) => b !== 0)) {
      if (inFlight.size > 0) await Promise.race(inFlight);
      continue;
    }
    busy.fill(1, first, first + count);
    const task: Promise<void> = runOne(first, count, random() < 0.5).finally(() =>
      inFlight.delete(task)
    );
    inFlight.add(task);
    issued++;
  }
  await Promise.all(inFlight);
  return result;
}

/** Reads the whole image in `chunkBlocks` pieces and returns every mismatch. */
export async function verifyAll(
  backend: Backend,
  model: BlockModel,
  chunkBlocks = 256,
): Promise<string[]> {
  const problems: string[] = [];
  for (let first = 0; first < model.blocks; first += chunkBlocks) {
    const count = Math.min(chunkBlocks, model.blocks - first);
    const data = await backend.read(first * model.blockSize, count * model.blockSize);
    const wrong = model.check(first, data);
    if (wrong) problems.push(wrong);
  }
  return problems;
}
