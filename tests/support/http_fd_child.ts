/**
 * A child process for tests/http_fd_recovery_test.ts: the HTTP server with a
 * small cap, and two routes that take the process's free descriptors away
 * (`/hog`, until EMFILE) and give them back (`/release`). Prints its port.
 */
import { startHttpServer } from "../../src/http/server.ts";

const held: Deno.FsFile[] = [];
const server = startHttpServer({
  hostname: "127.0.0.1",
  port: 0,
  maxConnections: Number(Deno.args[0] ?? 8),
  minIdleMs: 3_600_000, // a slot is never taken from an idle client here
  idleTimeoutMs: 3_600_000,
  handler: (request) => {
    const path = new URL(request.url).pathname;
    if (path === "/hog") {
      for (;;) {
        try {
          held.push(Deno.openSync("/dev/null"));
        } catch {
          break;
        }
      }
      return new Response(`held ${held.length}`);
    }
    if (path === "/release") {
      for (const file of held.splice(0)) file.close();
      return new Response("released");
    }
    return new Response(`ok ${path}`);
  },
});
console.log(`port ${server.addr.port}`);
