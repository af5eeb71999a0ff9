/**
 * One readable line out of a zod error, naming each field by its path
 * ("mounts[0].user: …"), for config files and HTTP bodies alike.
 * @module
 */
import type { z } from "zod";

/** "mounts[0].image" from ["mounts", 0, "image"]. */
export function fieldPath(path: readonly PropertyKey[]): string {
  let text = "";
  for (const part of path) {
    if (typeof part === "number") text += `[${part}]`;
    else text += text === "" ? String(part) : `.${String(part)}`;
  }
  return text;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const where = fieldPath(issue.path);
  if (issue.code === "unrecognized_keys") {
    const keys = issue.keys.map((key) => JSON.stringify(key)).join(", ");
    return `${where === "" ? "" : `${where}: `}unknown field${
      issue.keys.length > 1 ? "s" : ""
    } ${keys}`;
  }
  return where === "" ? issue.message : `${where}: ${issue.message}`;
}

/** All issues on one line, separated by "; ". */
export function describeZodError(error: z.ZodError): string {
  return error.issues.map(describeIssue).join("; ");
}
