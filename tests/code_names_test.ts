import assert from "node:assert/strict";
import { codeNames } from "../src/code_names.ts";
import { isKnownOp, Op, opName, Status, statusName } from "../src/ivbs/wire.ts";
import { commandName, errnoFor, errorName, NbdError } from "../src/nbd/wire.ts";
import { optionName } from "../src/nbd/handshake_wire.ts";

Deno.test("codeNames names a table's codes and says what an unknown code is", () => {
  const name = codeNames({ READ: 0, WRITE: 1 }, (code) => `op ${code}`);
  assert.equal(name(0), "READ");
  assert.equal(name(1), "WRITE");
  assert.equal(name(7), "op 7");
});

Deno.test("the wire codecs name their codes for logs, unknown ones included", () => {
  assert.equal(opName(Op.ATTACH_TO_IMAGE), "ATTACH_TO_IMAGE");
  assert.equal(opName(999), "op 999");
  assert.equal(statusName(Status.EXPIRED), "EXPIRED");
  assert.equal(statusName(99), "status 99");
  assert.equal(commandName(0), "READ");
  assert.equal(commandName(99), "command 99");
  assert.equal(errorName(NbdError.ENOSPC), "ENOSPC");
  assert.equal(errorName(99), "error 99");
  assert.equal(optionName(7), "GO");
  assert.equal(optionName(42), "OPT_42");
});

Deno.test("isKnownOp and errnoFor read the same tables", () => {
  assert.ok(isKnownOp(Op.WRITE));
  assert.ok(!isKnownOp(999));
  assert.equal(errnoFor(NbdError.OK), null);
  assert.equal(errnoFor(NbdError.EPERM), "EPERM");
  assert.equal(errnoFor(99), "EINVAL", "unknown codes read as EINVAL");
});
