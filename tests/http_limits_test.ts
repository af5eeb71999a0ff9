/**
 * Limits that are bytes on the wire are checked as bytes: an image name of 200
 * "é" is 200 characters but 400 bytes, so it is a 400 naming the limit, not a
 * "not found" from the proxy. And /api/health counts the devices that exist.
 */
import assert from "node:assert/strict";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { ConfigError, parseConfig } from "../src/daemon/config.ts";
import { fakeApp } from "./support/fake_app.ts";

const LONG_IMAGE = "é".repeat(200); // 200 UTF-16 units, 400 bytes of UTF-8

function setup(devices: number) {
  const { app } = fakeApp(new FakeMountDriver({ devices, images: {}, users: { alice: "pw" } }));
  const post = async (path: string, body: unknown) => {
    const response = await app.request(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: response.status, text: await response.text() };
  };
  return { app, post };
}

Deno.test("image names over 255 UTF-8 bytes are a 400 on every route that takes one", async () => {
  const { post } = setup(4);
  const answers = [
    await post("/api/mounts", { image: LONG_IMAGE, username: "alice", password: "pw" }),
    await post("/api/exports", { name: "x", image: LONG_IMAGE, username: "alice", password: "pw" }),
    await post("/", { Command: "mount", Image: LONG_IMAGE, User: "alice", Pass: "pw" }),
  ];
  for (const { status, text } of answers) {
    assert.equal(status, 400, text);
    assert.match(text, /at most 255 bytes \(UTF-8\)/);
  }
  const fits = await post("/api/mounts", {
    image: "é".repeat(127),
    username: "alice",
    password: "pw",
  });
  assert.equal(fits.status, 404, "254 bytes pass validation and reach the driver");
});

Deno.test("usernames are limited to 32 UTF-8 bytes", async () => {
  const { post } = setup(4);
  const { status, text } = await post("/api/mounts", {
    image: "disk",
    username: "ü".repeat(17),
    password: "pw",
  });
  assert.equal(status, 400, text);
  assert.match(text, /username must be at most 32 bytes/);
});

Deno.test("config image names are limited in bytes too", () => {
  assert.throws(
    () =>
      parseConfig(
        JSON.stringify({
          users: [{ username: "alice", password: "pw" }],
          mounts: [{ image: LONG_IMAGE, user: "alice" }],
        }),
        "c.json",
      ),
    (error) =>
      error instanceof ConfigError &&
      /mounts\[0\]\.image: image must be at most 255/.test(error.message),
  );
});

Deno.test("/api/health reports no devices on a machine without the nbd module", async () => {
  const none = await (await setup(0).app.request("/api/health")).json();
  assert.equal(none.devices, 0);
  const four = await (await setup(4).app.request("/api/health")).json();
  assert.equal(four.devices, 4);
});
