/**
 * Upgrading from the daemon operators run today (main at 6320cf8, checked out
 * with `git worktree add` from this repository's history; see
 * tests/support/old_checkout.ts) to this one, in the NBD VM, under load:
 * ext4 on a netlink device under a fio write+verify job (crc32c), and an NBD
 * export under a second fio job through qemu-nbd (a client that reconnects,
 * as QEMU guests do). The old daemon is replaced by `serve --replace`, and
 * separately by SIGTERM then start. Every run: fio reports 0 errors and its
 * verification passes, the kernel logs no error line, the device is taken
 * over (same device, same backend id) and the export is served again.
 *
 * FIO_MB (default 128) sets the device's fio size; the export's is half.
 */
import assert from "node:assert/strict";
import { attachedNbdDevices, kernelSkipReason } from "../../bench/rigs/daemon_harness.ts";
import { lifecycle, type RestartKind, restartUnderFio } from "../../bench/rigs/restart_rig.ts";
import { oldCheckout, TODAYS_MAIN } from "../support/old_checkout.ts";
import { record } from "./helpers.ts";

const MIB = 1024 * 1024;
const skip = kernelSkipReason();
if (skip) console.warn(`upgrade_test: skipped: ${skip}`);
const FIO_MB = Number(Deno.env.get("FIO_MB") ?? "128");
const EXPORT_FIO_MB = Math.max(16, Math.floor(FIO_MB / 2));

async function upgradePasses(kind: RestartKind): Promise<void> {
  const old = await oldCheckout();
  try {
    const outcome = await restartUnderFio(kind, {
      fioMb: FIO_MB,
      requeueAfterS: 2,
      deadConnTimeoutS: 120,
      oldMain: old.main,
      exportUnderFio: { fioMb: EXPORT_FIO_MB },
    });
    console.log([...lifecycle(outcome.oldLog), "--", ...lifecycle(outcome.newLog)].join("\n"));
    assert.equal(outcome.fioCode, 0, `fio on the device failed: ${outcome.fioStderr}`);
    assert.equal(outcome.fioError, 0, "fio on the device saw no I/O error");
    assert.ok(outcome.verifiedBytes >= FIO_MB * MIB, "the device's verify phase read it all");
    assert.ok(outcome.sameDevice, "the new daemon serves the same device, same backend id");
    assert.deepEqual(outcome.kernelErrors, [], "no nbd or I/O error in the kernel log");
    assert.equal(outcome.ioErrorLines, 0);
    assert.match(outcome.newLog, /taken over device=\/dev\/nbd\d+ image=disk/);
    assert.match(outcome.oldLog, /left attached for the next daemon device=\/dev\/nbd\d+/);
    if (kind === "serve --replace") {
      assert.match(
        outcome.newLog,
        /--replace: ready; asking the running daemon to leave its devices .*prepared=1/,
        "the device's session was ready before the old daemon was asked to stop",
      );
    }
    const exported = outcome.export;
    assert.ok(exported, "the export ran");
    assert.equal(exported.fioCode, 0, `fio on the export failed: ${exported.fioStderr}`);
    assert.equal(exported.fioError, 0, "fio on the export saw no I/O error");
    assert.ok(exported.verifiedBytes >= EXPORT_FIO_MB * MIB, "the export's verify read it all");
    assert.ok(exported.servedAgain, "the new daemon serves the export");
    if (exported.runningAtRestart) {
      assert.ok(exported.writtenAfter > 0, "fio went on writing through the new daemon");
    } else {
      console.warn("the export's fio ended before the old daemon was gone: it did not cross it");
    }
    assert.deepEqual(await attachedNbdDevices(), [], "SIGINT detached the device");
    await record(
      `upgrade from ${TODAYS_MAIN} (${kind}) under fio ${FIO_MB} MiB on ext4 + ${EXPORT_FIO_MB} MiB ` +
        `on an export, crc32c verify: 0 errors, longest device I/O stall ` +
        `${outcome.stallMs.toFixed(0)} ms; device back ${outcome.backMs.toFixed(0)} ms after ` +
        `the restart began (old daemon gone at ${outcome.oldGoneMs.toFixed(0)} ms)`,
    );
  } finally {
    await old.remove();
  }
}

Deno.test({
  name:
    `upgrade from today's main (${TODAYS_MAIN}) by serve --replace under fio: device and export taken over, 0 errors`,
  ignore: skip !== null,
  fn: () => upgradePasses("serve --replace"),
});

Deno.test({
  name:
    `upgrade from today's main (${TODAYS_MAIN}) by SIGTERM then start under fio: device and export taken over, 0 errors`,
  ignore: skip !== null,
  fn: () => upgradePasses("SIGTERM"),
});
