/**
 * Admin HTTP API of the test server (JSON, bound to 127.0.0.1): lets a shell
 * script or a person flip the same fault switches tests use.
 *
 *   GET  /proxies                          every proxy's state
 *   POST /proxies/:index/{stop|start|stall|unstall|hold|release|drop}
 *   POST /inject {status, count, proxy?, ops?}   status and ops by name or code
 *   GET  /images, POST /images {name, size, readOnly?, users?}
 *   GET  /stats
 * @module
 */
import { Hono } from "hono";
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import { errorMessage } from "../../error_info.ts";
import type { Logger } from "../../log.ts";
import { Op, Status } from "../wire.ts";
import type { IvbsTestServer } from "./mod.ts";

/** A code given as a number or by its name in `table` ("TEMPORARY_ERROR", "read"). */
function codeOf(table: Record<string, number>, what: string) {
  return z.union([z.number().int().nonnegative(), z.string()]).transform((value, ctx) => {
    if (typeof value === "number") return value;
    const code = table[value.toUpperCase()];
    if (code === undefined) {
      ctx.addIssue({
        code: "custom",
        message: `unknown ${what} "${value}" (one of ${Object.keys(table).join(", ")})`,
      });
      return z.NEVER;
    }
    return code;
  });
}

const InjectBody = z.object({
  status: codeOf(Status, "status"),
  count: z.number().int().positive(),
  proxy: z.number().int().nonnegative().optional(),
  ops: z.array(codeOf(Op, "op")).optional(),
}).strict();

const ImageBody = z.object({
  name: z.string().min(1),
  size: z.number().int().nonnegative(),
  readOnly: z.boolean().optional(),
  users: z.array(z.string()).optional(),
}).strict();

const ACTIONS = ["stop", "start", "stall", "unstall", "hold", "release", "drop"] as const;
type Action = typeof ACTIONS[number];

async function jsonBody<T>(request: Request, schema: z.ZodType<T>): Promise<T> {
  let body: unknown;
  try {
    body = await request.json();
  } catch {
    throw new HTTPException(400, { message: "body must be JSON" });
  }
  const parsed = schema.safeParse(body);
  if (!parsed.success) {
    throw new HTTPException(400, {
      message: parsed.error.issues.map((i) => `${i.path.join(".") || "body"}: ${i.message}`)
        .join("; "),
    });
  }
  return parsed.data;
}

/** The admin routes over a running server (no socket: test with `app.request`). */
export function createAdminApp(server: IvbsTestServer, log?: Logger): Hono {
  const app = new Hono();

  const proxyState = (index: number) => ({ ...server.proxies[index] });
  const proxyIndex = (raw: string): number => {
    const index = Number(raw);
    if (!/^\d+$/.test(raw) || !server.proxies[index]) {
      throw new HTTPException(404, {
        message: `no proxy ${raw}: the server has ${server.proxies.length}`,
      });
    }
    return index;
  };

  app.get("/proxies", (c) => c.json(server.proxies.map((_, i) => proxyState(i))));

  app.post("/proxies/:index/:action", async (c) => {
    const index = proxyIndex(c.req.param("index"));
    const action = c.req.param("action") as Action;
    if (!ACTIONS.includes(action)) {
      throw new HTTPException(404, {
        message: `unknown action "${action}" (one of ${ACTIONS.join(", ")})`,
      });
    }
    switch (action) {
      case "stop":
        await server.stopProxy(index);
        break;
      case "start":
        try {
          await server.startProxy(index);
        } catch (error) {
          throw new HTTPException(409, { message: errorMessage(error) });
        }
        break;
      case "stall":
      case "unstall":
        server.stallProxy(index, action === "stall");
        break;
      case "hold":
      case "release":
        server.holdReplies(index, action === "hold");
        break;
      case "drop":
        server.dropConnections(index);
        break;
    }
    log?.info("admin action", { proxy: index, action });
    return c.json(proxyState(index));
  });

  app.post("/inject", async (c) => {
    const body = await jsonBody(c.req.raw, InjectBody);
    if (body.proxy !== undefined) proxyIndex(String(body.proxy));
    server.injectStatus(body.status, body.count, { proxy: body.proxy, ops: body.ops });
    return c.json({ injected: body });
  });

  app.get("/images", async (c) => c.json(await server.images()));

  app.post("/images", async (c) => {
    const body = await jsonBody(c.req.raw, ImageBody);
    try {
      await server.createImage(body);
    } catch (error) {
      throw new HTTPException(400, { message: errorMessage(error) });
    }
    return c.json(body, 201);
  });

  app.get("/stats", (c) => c.json(server.stats));

  app.notFound((c) => c.json({ error: `no route ${c.req.method} ${c.req.path}` }, 404));

  app.onError((error, c) => {
    if (error instanceof HTTPException) {
      return c.json({ error: error.message }, error.status);
    }
    log?.error("admin request failed", { path: c.req.path, reason: errorMessage(error) });
    return c.json({ error: "internal error" }, 500);
  });

  return app;
}

export interface AdminServer {
  readonly port: number;
  close(): Promise<void>;
}

/** Serves the admin API on 127.0.0.1:`port` (0 = ephemeral). */
export function serveAdmin(server: IvbsTestServer, port: number, log?: Logger): AdminServer {
  const app = createAdminApp(server, log);
  const http = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, app.fetch);
  return {
    port: http.addr.port,
    close: () => http.shutdown(),
  };
}
