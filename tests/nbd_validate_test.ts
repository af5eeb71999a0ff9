/**
 * validateRequest, one row per odd request, and the same rows sent to
 * `nbdkit memory` and to our export: each server answers what validateRequest
 * predicts from the flags that server advertised (so ours refuses like
 * nbdkit). The process test skips when nbdkit is missing.
 */
import assert from "node:assert/strict";
import { MemoryBackend } from "../src/block/backend.ts";
import { shareBackend, startExportServer } from "../src/nbd/export_server.ts";
import { type AdvertisedExport, validateRequest } from "../src/nbd/validate.ts";
import {
  Command,
  CommandFlag,
  errorName,
  NbdError,
  type NbdRequest,
  TransmissionFlag as F,
} from "../src/nbd/wire.ts";
import type { Logger } from "../src/log.ts";
import { NbdTestClient } from "./support/nbd_test_client.ts";
import { hasTool } from "./support/tools.ts";

const MiB = 1024 * 1024;
const SIZE = 1 * MiB;
const { EINVAL, ENOSPC, EPERM, OK } = NbdError;

/** What our MemoryBackend advertises, and what a store with a write cache does. */
const MEMORY: AdvertisedExport = { size: SIZE, flags: F.HAS_FLAGS | F.SEND_WRITE_ZEROES };
const CACHED: AdvertisedExport = {
  size: SIZE,
  flags: F.HAS_FLAGS | F.SEND_FLUSH | F.SEND_FUA | F.SEND_TRIM | F.SEND_WRITE_ZEROES,
};
const READ_ONLY: AdvertisedExport = { size: SIZE, flags: F.HAS_FLAGS | F.READ_ONLY };

interface Case {
  name: string;
  type: number;
  offset: number;
  length: number;
  flags?: number;
}

const CASES: Case[] = [
  { name: "READ in range", type: Command.READ, offset: 0, length: 4096 },
  { name: "WRITE in range", type: Command.WRITE, offset: 4096, length: 4096 },
  { name: "READ of the last byte", type: Command.READ, offset: SIZE - 1, length: 1 },
  { name: "zero-length READ", type: Command.READ, offset: 0, length: 0 },
  { name: "zero-length WRITE", type: Command.WRITE, offset: 0, length: 0 },
  { name: "zero-length WRITE_ZEROES", type: Command.WRITE_ZEROES, offset: 0, length: 0 },
  { name: "zero-length TRIM", type: Command.TRIM, offset: 0, length: 0 },
  { name: "READ past the end", type: Command.READ, offset: SIZE - 512, length: 1024 },
  { name: "WRITE past the end", type: Command.WRITE, offset: SIZE, length: 512 },
  { name: "WRITE_ZEROES past the end", type: Command.WRITE_ZEROES, offset: SIZE, length: 512 },
  { name: "TRIM past the end", type: Command.TRIM, offset: SIZE, length: 512 },
  { name: "READ at an offset of 2^52", type: Command.READ, offset: 2 ** 52, length: 512 },
  {
    name: "NO_HOLE on READ",
    type: Command.READ,
    offset: 0,
    length: 512,
    flags: CommandFlag.NO_HOLE,
  },
  {
    name: "NO_HOLE on WRITE",
    type: Command.WRITE,
    offset: 0,
    length: 512,
    flags: CommandFlag.NO_HOLE,
  },
  {
    name: "FAST_ZERO on WRITE",
    type: Command.WRITE,
    offset: 0,
    length: 512,
    flags: CommandFlag.FAST_ZERO,
  },
  {
    name: "NO_HOLE on WRITE_ZEROES",
    type: Command.WRITE_ZEROES,
    offset: 0,
    length: 512,
    flags: CommandFlag.NO_HOLE,
  },
  { name: "DF on WRITE", type: Command.WRITE, offset: 0, length: 512, flags: CommandFlag.DF },
  { name: "DF on READ", type: Command.READ, offset: 0, length: 512, flags: CommandFlag.DF },
  {
    name: "REQ_ONE on READ",
    type: Command.READ,
    offset: 0,
    length: 512,
    flags: CommandFlag.REQ_ONE,
  },
  { name: "unknown flag on READ", type: Command.READ, offset: 0, length: 512, flags: 1 << 9 },
  { name: "FUA on WRITE", type: Command.WRITE, offset: 0, length: 512, flags: CommandFlag.FUA },
  { name: "FLUSH", type: Command.FLUSH, offset: 0, length: 0 },
  { name: "FLUSH with a count", type: Command.FLUSH, offset: 0, length: 512 },
  { name: "TRIM in range", type: Command.TRIM, offset: 0, length: 4096 },
  { name: "WRITE_ZEROES in range", type: Command.WRITE_ZEROES, offset: 0, length: 4096 },
  { name: "unknown command", type: 42, offset: 0, length: 0 },
];

/** Expected NBD error per case on MEMORY, CACHED and READ_ONLY exports. */
const EXPECTED: Record<string, [number, number, number]> = {
  "READ in range": [OK, OK, OK],
  "WRITE in range": [OK, OK, EPERM],
  "READ of the last byte": [OK, OK, OK],
  "zero-length READ": [EINVAL, EINVAL, EINVAL],
  "zero-length WRITE": [ENOSPC, ENOSPC, EPERM],
  "zero-length WRITE_ZEROES": [ENOSPC, ENOSPC, EPERM],
  "zero-length TRIM": [EINVAL, EINVAL, EPERM],
  "READ past the end": [EINVAL, EINVAL, EINVAL],
  "WRITE past the end": [ENOSPC, ENOSPC, EPERM],
  "WRITE_ZEROES past the end": [ENOSPC, ENOSPC, EPERM],
  "TRIM past the end": [EINVAL, EINVAL, EPERM],
  "READ at an offset of 2^52": [EINVAL, EINVAL, EINVAL],
  "NO_HOLE on READ": [EINVAL, EINVAL, EINVAL],
  "NO_HOLE on WRITE": [EINVAL, EINVAL, EPERM],
  "FAST_ZERO on WRITE": [EINVAL, EINVAL, EPERM],
  "NO_HOLE on WRITE_ZEROES": [OK, OK, EPERM],
  "DF on WRITE": [EINVAL, EINVAL, EPERM],
  "DF on READ": [EINVAL, EINVAL, EINVAL],
  "REQ_ONE on READ": [EINVAL, EINVAL, EINVAL],
  "unknown flag on READ": [EINVAL, EINVAL, EINVAL],
  "FUA on WRITE": [EINVAL, OK, EPERM],
  "FLUSH": [EINVAL, OK, EINVAL],
  "FLUSH with a count": [EINVAL, EINVAL, EINVAL],
  "TRIM in range": [EINVAL, OK, EPERM],
  "WRITE_ZEROES in range": [OK, OK, EPERM],
  "unknown command": [EINVAL, EINVAL, EINVAL],
};

function request(c: Case): NbdRequest {
  return { type: c.type, handle: 1n, offset: c.offset, length: c.length, flags: c.flags ?? 0 };
}

function errorOf(c: Case, advertised: AdvertisedExport): number {
  return validateRequest(request(c), advertised)?.error ?? OK;
}

for (const c of CASES) {
  Deno.test(`validateRequest: ${c.name}`, () => {
    const [memory, cached, readOnly] = EXPECTED[c.name];
    assert.equal(errorName(errorOf(c, MEMORY)), errorName(memory), "memory export");
    assert.equal(errorName(errorOf(c, CACHED)), errorName(cached), "export with a write cache");
    assert.equal(errorName(errorOf(c, READ_ONLY)), errorName(readOnly), "read-only export");
  });
}

Deno.test("validateRequest says why it refuses", () => {
  const refusal = validateRequest(
    request(CASES.find((c) => c.name === "NO_HOLE on WRITE")!),
    MEMORY,
  );
  assert.match(refusal!.reason, /NO_HOLE/);
  const zero = validateRequest(request(CASES.find((c) => c.name === "zero-length READ")!), MEMORY);
  assert.match(zero!.reason, /zero-length/);
});

/** Sends every case on one connection; a WRITE carries its payload even when refused. */
async function answers(client: NbdTestClient): Promise<Map<string, number>> {
  const got = new Map<string, number>();
  for (const c of CASES) {
    const data = c.type === Command.WRITE && c.length > 0 ? new Uint8Array(c.length) : undefined;
    const { error } = await client.request({ ...c, data });
    got.set(c.name, error);
    // The stream is still in sync: a plain READ right after is served.
    assert.equal((await client.request({ type: Command.READ, offset: 0, length: 512 })).error, OK);
  }
  return got;
}

function quiet(): Logger {
  const drop = () => {};
  return { debug: drop, info: drop, warn: drop, error: drop };
}

const NBDKIT = await hasTool("nbdkit");
if (!NBDKIT) console.warn("nbd_validate_test: nbdkit is not installed; the comparison is skipped");

Deno.test({
  name: "ours and nbdkit memory answer every odd request as validateRequest predicts",
  ignore: !NBDKIT,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "nbd_validate_test_" });
    const nbdkit = new Deno.Command("nbdkit", {
      args: ["--foreground", "--exit-with-parent", "-U", `${dir}/nbdkit.sock`, "memory", `${SIZE}`],
      stdout: "null",
      stderr: "null",
    }).spawn();
    const ours = await startExportServer({
      socketPath: `${dir}/ours.sock`,
      exports: [{ name: "mem", open: shareBackend(new MemoryBackend(SIZE)) }],
      log: quiet(),
    });
    try {
      const theirs = await connectWhenUp(`${dir}/nbdkit.sock`, "");
      const mine = await NbdTestClient.connect(`${dir}/ours.sock`, "mem");
      try {
        const fromNbdkit = await answers(theirs);
        const fromOurs = await answers(mine);
        const rows = CASES.map((c) => {
          const expectNbdkit = errorOf(c, { size: theirs.size, flags: theirs.flags });
          const expectOurs = errorOf(c, { size: mine.size, flags: mine.flags });
          return {
            case: c.name,
            nbdkit: errorName(fromNbdkit.get(c.name)!),
            predicted: errorName(expectNbdkit),
            ours: errorName(fromOurs.get(c.name)!),
            oursPredicted: errorName(expectOurs),
          };
        });
        for (const row of rows) {
          assert.equal(row.nbdkit, row.predicted, `nbdkit on "${row.case}"`);
          assert.equal(row.ours, row.oursPredicted, `ours on "${row.case}"`);
        }
        // Where both advertise the same for a case's command, the answers are equal.
        const same = rows.filter((row) => row.predicted === row.oursPredicted);
        assert.ok(same.every((row) => row.nbdkit === row.ours));
        assert.ok(same.length >= 20, `${same.length} cases comparable`);
      } finally {
        theirs.close();
        mine.close();
      }
    } finally {
      await ours.close();
      nbdkit.kill("SIGTERM");
      await nbdkit.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Connects once nbdkit has created its socket (it starts in the background). */
async function connectWhenUp(path: string, name: string): Promise<NbdTestClient> {
  for (let attempt = 0;; attempt++) {
    try {
      return await NbdTestClient.connect(path, name);
    } catch (error) {
      if (attempt >= 200) throw error;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}
