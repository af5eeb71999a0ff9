/**
 * The 2013 client's protocol, kept working: `POST /` with
 * `{"Command": "mount"|"unmount"|"lista"|"listm"|"check"|"disc", "Device", "Image", "User", "Pass"}`
 * and `GET /status/json` → `{"Type":"Mounted","Devices":[{"NbdDevice","ImageName"}]}`.
 * Replies keep the 2013 PascalCase keys; errors are `{"error": "…"}` as elsewhere.
 * @module
 */
import type { Context, Hono } from "hono";
import { z } from "zod";
import type { MountTable } from "../daemon/mount_table.ts";
import { MAX_IMAGE_NAME_BYTES, MAX_USERNAME_BYTES, withinBytes } from "../daemon/config.ts";
import { DeviceNameSchema, DeviceOrAutoSchema, readJson, validate } from "./validation.ts";

export interface LegacyOptions {
  table: MountTable;
  /** The API's token check (throws its 401); the 2013 mount, unmount and disc need it. */
  requireToken(c: Context): Promise<void>;
  requestShutdown(reason: string): void;
}

const Field = (name: string) =>
  z.string({ error: `${name} must be a string` }).min(1, `${name} must not be empty`);

/** Commands are matched case-insensitively ("ListM" works too). */
const CommandSchema = z.string({ error: "Command must be a string" })
  .transform((s) => s.toLowerCase())
  .pipe(z.enum(["mount", "unmount", "lista", "listm", "check", "disc"], {
    error: "Command must be one of mount, unmount, lista, listm, check, disc",
  }));

const LegacyBodySchema = z.looseObject({
  Command: CommandSchema,
  Device: z.string().max(64).optional(),
  Image: z.string().refine(...withinBytes(MAX_IMAGE_NAME_BYTES, "Image")).optional(),
  User: z.string().refine(...withinBytes(MAX_USERNAME_BYTES, "User")).optional(),
  Pass: z.string().max(1024).optional(),
});

const MountFields = z.object({
  Device: DeviceOrAutoSchema.optional(),
  Image: Field("Image").refine(...withinBytes(MAX_IMAGE_NAME_BYTES, "Image")),
  User: Field("User").refine(...withinBytes(MAX_USERNAME_BYTES, "User")),
  Pass: z.string({ error: "Pass is required for mount" }).max(1024),
});

const UnmountFields = z.object({
  Device: z.string({ error: "Device is required for unmount" }).pipe(DeviceNameSchema),
});

/** The 2013 `listm` / status shape. */
export function mountedDevices(table: MountTable) {
  return {
    Type: "Mounted",
    Devices: table.list().map((m) => ({ NbdDevice: m.device, ImageName: m.image })),
  };
}

export function registerLegacyRoutes(app: Hono, options: LegacyOptions): void {
  const { table, requireToken } = options;

  app.get("/status/json", (c) => c.json(mountedDevices(table)));

  app.post("/", async (c: Context) => {
    const body = await readJson(c, LegacyBodySchema);
    switch (body.Command) {
      case "check":
        return c.json({ Type: "Check", Status: table.closing ? "Stopping" : "OK" });
      case "listm":
        return c.json(mountedDevices(table));
      case "lista": {
        const devices = await table.devices();
        return c.json({
          Type: "All",
          Devices: devices.map((d) => ({
            NbdDevice: d.device,
            InUse: d.inUse,
            ImageName: d.image ?? "",
          })),
        });
      }
      case "mount": {
        await requireToken(c);
        const f = validate(MountFields, body);
        const mount = await table.mount({
          device: f.Device,
          image: f.Image,
          username: f.User,
          password: f.Pass,
        });
        return c.json({
          Type: "Mount",
          Status: "OK",
          NbdDevice: mount.device,
          ImageName: mount.image,
        });
      }
      case "unmount": {
        await requireToken(c);
        const f = validate(UnmountFields, body);
        await table.unmount(f.Device);
        return c.json({ Type: "Unmount", Status: "OK", NbdDevice: f.Device });
      }
      case "disc":
        await requireToken(c);
        options.requestShutdown("2013 disc command");
        return c.json({ Type: "Disc", Status: "OK" }, 202);
    }
  });
}
