import assert from "node:assert/strict";
import { statusAction, statusErrno } from "../src/ivbs/errors.ts";
import { Status } from "../src/ivbs/wire.ts";

Deno.test("statusAction: what the session does with each IVBS status, and with an unknown one", () => {
  const statusesByAction = {
    ok: [Status.OK],
    relogin: [Status.NOT_LOGGEDIN],
    retry: [Status.NOT_READY, Status.TEMPORARY_ERROR],
    failover: [Status.USE_ANOTHER_PROXY, Status.EXPIRED],
    fail: [
      Status.NOT_FOUND,
      Status.ALREADY_EXISTS,
      Status.PERMISSION_DENIED,
      Status.READ_ONLY,
      Status.PERMANENT_ERROR,
      Status.INVALID_REQUEST,
      99,
    ],
  };
  for (const [action, statuses] of Object.entries(statusesByAction)) {
    for (const status of statuses) assert.equal(statusAction(status), action, `status ${status}`);
  }
});

Deno.test("statusErrno: READ_ONLY is EPERM, INVALID_REQUEST is EINVAL, any other is EIO", () => {
  assert.equal(statusErrno(Status.READ_ONLY), "EPERM");
  assert.equal(statusErrno(Status.INVALID_REQUEST), "EINVAL");
  for (const status of [Status.NOT_FOUND, Status.PERMANENT_ERROR, Status.OK, 99]) {
    assert.equal(statusErrno(status), "EIO", `status ${status}`);
  }
});
