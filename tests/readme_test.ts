/**
 * The README says what the program does: its HTTP API table names every route
 * the app serves, its list of netdclient commands is netdclient's own, and the
 * example config logs in with the user and image the README's test-server
 * command creates.
 */
import assert from "node:assert/strict";
import { fakeApp } from "./support/fake_app.ts";
import { FakeMountDriver } from "../src/daemon/fake_driver.ts";
import { HELP } from "../src/cli/netdclient.ts";
import { parseConfig } from "../src/daemon/config.ts";

const README = await Deno.readTextFile(new URL("../README.md", import.meta.url));

/** The text of the README section that starts with `heading`, up to the next heading. */
function section(heading: string): string {
  const start = README.indexOf(`\n${heading}\n`);
  assert.ok(start >= 0, `README has no "${heading}"`);
  const next = README.slice(start + heading.length + 2).search(/\n#{1,3} /);
  return next < 0 ? README.slice(start) : README.slice(start, start + heading.length + 2 + next);
}

Deno.test("the README's API table names every route the app serves", () => {
  const { app } = fakeApp(new FakeMountDriver({ devices: 0, images: {}, users: {} }));
  const table = section("### 4. HTTP API");
  const routes = app.routes
    .filter((r) => r.method !== "ALL" && !r.path.includes("*"))
    // ":device{.+}" and ":name" are written {device} and {name} in the README.
    .map((r) => ({ method: r.method, path: r.path.replace(/:(\w+)(\{[^}]*\})?/g, "{$1}") }));
  assert.ok(routes.length > 10, "the app's routes were listed");
  for (const { method, path } of routes) {
    assert.ok(table.includes(`${path}`), `README's API table lacks ${method} ${path}`);
  }
});

Deno.test("the README names every netdclient command", () => {
  // Each command is a line of `help`: two spaces, its name, then what it does.
  const commands = HELP.split("\n").map((line) => /^ {2}([a-z][a-z-]*)\s/.exec(line)?.[1])
    .filter((name): name is string => name !== undefined);
  assert.ok(commands.length > 5, HELP);
  const text = section("### 3. netdclient and one-shot commands");
  for (const name of commands) {
    assert.ok(
      new RegExp(`\`${name}[\` ]`).test(text),
      `README's netdclient section lacks \`${name}\``,
    );
  }
});

Deno.test("config.example.json logs in as the user and mounts an image of the README's test server", async () => {
  const example = parseConfig(
    await Deno.readTextFile(new URL("../config.example.json", import.meta.url)),
    "config.example.json",
  ).config;
  const server = /main\.ts ivbs-server ([^\n]*\\\n[^\n]*)/.exec(README)?.[1] ?? "";
  const users = [...server.matchAll(/--user (\w+):(\S+)/g)].map((m) => [m[1], m[2]]);
  const images = [...server.matchAll(/--create (\w+):/g)].map((m) => m[1]);
  assert.ok(users.length > 0 && images.length > 0, server);
  for (const user of example.users) {
    assert.ok(
      users.some(([name, password]) => name === user.username && password === user.password),
      `user ${user.username} of config.example.json is not created by the README's test server`,
    );
  }
  for (const mount of example.mounts) {
    assert.ok(images.includes(mount.image), `image ${mount.image} is not on the test server`);
  }
});
