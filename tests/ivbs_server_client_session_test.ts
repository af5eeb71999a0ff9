import assert from "node:assert/strict";
import { ClientSession } from "../src/ivbs/server/client_session.ts";
import { MemoryStore } from "../src/ivbs/server/store.ts";
import { UserTable } from "../src/ivbs/server/users.ts";
import {
  decodeAttachReply,
  decodeHeader,
  encodeAttachRequest,
  encodeLogin,
  hashPassword,
  HEADER_SIZE,
  SESSION_ID_SIZE,
  Status,
  statusName,
} from "../src/ivbs/wire.ts";
import { captureLog } from "./support/ivbs_fake_proxy.ts";

const SID = new Uint8Array(SESSION_ID_SIZE).fill(1);

/** A client session of a server with users alice and bob, a shared image and one only bob may use. */
async function session() {
  const store = new MemoryStore();
  await store.create({ name: "shared", size: 1 << 20 });
  await store.create({ name: "bobs", size: 4096, readOnly: true, users: ["bob"] });
  const users = new UserTable([
    { username: "alice", password: "a-secret" },
    { username: "bob", password: "b-secret" },
  ]);
  return new ClientSession(SID, "127.0.0.1:1", { users, store, log: captureLog() });
}

const payload = (packet: Uint8Array) => packet.subarray(HEADER_SIZE);
const status = (packet: Uint8Array) => statusName(decodeHeader(packet).status);
const login = (client: ClientSession, username: string, password: string) =>
  status(
    client.login(
      1,
      payload(encodeLogin(SID, 1, { username, passwordHash: hashPassword(password) })),
    ),
  );
const attach = async (client: ClientSession, image: string) =>
  await client.attach(2, payload(encodeAttachRequest(SID, 2, image)));

Deno.test("ClientSession refuses ATTACH before LOGIN with NOT_LOGGEDIN", async () => {
  const client = await session();
  assert.equal(status(await attach(client, "shared")), statusName(Status.NOT_LOGGEDIN));
  assert.equal(client.image, null);
});

Deno.test("ClientSession attaches after LOGIN and answers the image's size and mode", async () => {
  const client = await session();
  assert.equal(login(client, "bob", "b-secret"), statusName(Status.OK));
  const reply = await attach(client, "bobs");
  assert.equal(status(reply), statusName(Status.OK));
  assert.deepEqual(decodeAttachReply(payload(reply)), {
    imageName: "bobs",
    size: 4096,
    readOnly: true,
  });
  assert.equal(client.image?.name, "bobs");
});

Deno.test("ClientSession answers PERMISSION_DENIED to a wrong password and forgets the image attached", async () => {
  const client = await session();
  login(client, "alice", "a-secret");
  await attach(client, "shared");
  assert.equal(login(client, "alice", "wrong"), statusName(Status.PERMISSION_DENIED));
  assert.equal(client.image, null);
  assert.equal(status(await attach(client, "shared")), statusName(Status.NOT_LOGGEDIN));
});

Deno.test("ClientSession refuses an image the user may not use, and an unknown one", async () => {
  const client = await session();
  login(client, "alice", "a-secret");
  assert.equal(status(await attach(client, "bobs")), statusName(Status.PERMISSION_DENIED));
  assert.equal(status(await attach(client, "nope")), statusName(Status.NOT_FOUND));
  assert.equal(client.image, null);
});

Deno.test("ClientSession attaches one image per connection: a second one is INVALID_REQUEST", async () => {
  const client = await session();
  login(client, "bob", "b-secret");
  await attach(client, "shared");
  assert.equal(status(await attach(client, "bobs")), statusName(Status.INVALID_REQUEST));
  assert.equal(
    status(await attach(client, "shared")),
    statusName(Status.OK),
    "the same one again is fine",
  );
  assert.equal(client.image?.name, "shared");
});

Deno.test("ClientSession forgets the image when another user logs in on the connection", async () => {
  const client = await session();
  login(client, "bob", "b-secret");
  await attach(client, "bobs");
  assert.equal(login(client, "alice", "a-secret"), statusName(Status.OK));
  assert.equal(client.image, null);
});

Deno.test("ClientSession answers a malformed LOGIN with INVALID_REQUEST", async () => {
  const client = await session();
  assert.equal(status(client.login(1, new Uint8Array(3))), statusName(Status.INVALID_REQUEST));
});
