/**
 * The program's version, from deno.json's "version": imported as JSON, so
 * `deno run main.ts`, `deno compile` and the `deno task bundle` output all
 * carry it without a second copy to keep in step. Every user (`--version`,
 * `/api/health`, the status page, `ivbsnetd_build_info`) imports it from here.
 * @module
 */
import denoJson from "../deno.json" with { type: "json" };

export const VERSION: string = denoJson.version;

/** What `ivbsnetd --version` prints and `ivbsnetd_build_info` labels. */
export interface BuildInfo {
  version: string;
  deno: string;
  v8: string;
  typescript: string;
}

export function buildInfo(): BuildInfo {
  return {
    version: VERSION,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    typescript: Deno.version.typescript,
  };
}
