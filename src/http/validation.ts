/**
 * Request validation shared by the API and the 2013 routes: JSON bodies through
 * zod and device names from URLs and bodies. Problems become
 * HTTPException(400); messages never echo a password.
 * @module
 */
import type { Context } from "hono";
import { HTTPException } from "hono/http-exception";
import { z } from "zod";
import { parseDeviceName } from "../daemon/device_name.ts";
import { describeZodError } from "../daemon/zod_issues.ts";

function toDevice(text: string, ctx: z.RefinementCtx<string>, allowAuto: boolean): string {
  if (allowAuto && text === "auto") return text;
  const name = parseDeviceName(text.replace(/^\/*(?:dev\/)?/, "/dev/"));
  if (!name) {
    const expected = allowAuto ? "nbdN, /dev/nbdN or auto" : "nbdN or /dev/nbdN";
    ctx.addIssue({
      code: "custom",
      message: `${JSON.stringify(text.slice(0, 64))} is not an NBD device (${expected})`,
    });
    return z.NEVER;
  }
  return name.device;
}

/** Device names as a URL or body carries them: nbd0, /dev/nbd0, dev/nbd0. */
export const DeviceNameSchema = z.string({ error: "device must be a string" })
  .transform((text, ctx) => toDevice(text, ctx, false));

/** A device name or "auto" (first free device). */
export const DeviceOrAutoSchema = z.string({ error: "device must be a string" })
  .transform((text, ctx) => toDevice(text, ctx, true));

/** Validates `value` with `schema`; HTTPException(400) naming the fields otherwise. */
export function validate<T extends z.ZodType>(
  schema: T,
  value: unknown,
  what = "body",
): z.output<T> {
  const result = schema.safeParse(value);
  if (!result.success) {
    throw new HTTPException(400, { message: `invalid ${what}: ${describeZodError(result.error)}` });
  }
  return result.data;
}

/** Parses the JSON body; `undefined` when it is empty (callers decide if that is allowed). */
export async function readJsonValue(c: Context): Promise<unknown> {
  const text = await c.req.text();
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new HTTPException(400, { message: "request body is not valid JSON" });
  }
}

/** Reads a JSON body that must be present and valid. */
export async function readJson<T extends z.ZodType>(c: Context, schema: T): Promise<z.output<T>> {
  const value = await readJsonValue(c);
  if (value === undefined) throw new HTTPException(400, { message: "request body is empty" });
  return validate(schema, value);
}
