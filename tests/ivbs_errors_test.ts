import assert from "node:assert/strict";
import { statusAction, statusErrno } from "../src/ivbs/errors.ts";
import { Status } from "../src/ivbs/wire.ts";

Deno.test("statusAction: every IVBS status, and an unknown one, has the contract's action", () => {
  const cases: [number, string][] = [
    [Status.OK, "ok"],
    [Status.NOT_LOGGEDIN, "relogin"],
    [Status.NOT_READY, "retry"],
    [Status.TEMPORARY_ERROR, "retry"],
    [Status.USE_ANOTHER_PROXY, "failover"],
    [Status.EXPIRED, "failover"],
    [Status.NOT_FOUND, "fail"],
    [Status.ALREADY_EXISTS, "fail"],
    [Status.PERMISSION_DENIED, "fail"],
    [Status.READ_ONLY, "fail"],
    [Status.PERMANENT_ERROR, "fail"],
    [Status.INVALID_REQUEST, "fail"],
    [99, "fail"],
  ];
  for (const [status, action] of cases) {
    assert.equal(statusAction(status), action, `status ${status}`);
  }
});

Deno.test("statusErrno: READ_ONLY is EPERM, INVALID_REQUEST is EINVAL, any other is EIO", () => {
  assert.equal(statusErrno(Status.READ_ONLY), "EPERM");
  assert.equal(statusErrno(Status.INVALID_REQUEST), "EINVAL");
  for (const status of [Status.NOT_FOUND, Status.PERMANENT_ERROR, Status.OK, 99]) {
    assert.equal(statusErrno(status), "EIO", `status ${status}`);
  }
});
