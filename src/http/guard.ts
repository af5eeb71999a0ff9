/**
 * The first middleware of the control API: what a web page in the operator's
 * browser could send is refused before any route runs, token or not.
 *
 * - `Host` must name this daemon: a loopback name or address, or the listen
 *   address (any IP literal and the machine's name when listening on all
 *   interfaces). A hostile DNS name that resolves to 127.0.0.1 (DNS rebinding)
 *   gets 421, so a page cannot read the API through its own origin.
 * - A request with a foreign `Origin` (or `Sec-Fetch-Site: cross-site`/`same-site`)
 *   gets 403 on every method: no page but the daemon's own may call it.
 * - Mutating methods take only `application/json` bodies (415 otherwise):
 *   browsers send `text/plain`, form and multipart bodies cross-origin without
 *   a preflight, never JSON.
 * - No CORS headers are ever set, so a preflight (`OPTIONS`) grants nothing.
 * @module
 */
import type { Context, MiddlewareHandler } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { ListenAddress } from "../daemon/config.ts";
import { isLoopbackHost } from "../loopback.ts";

export interface GuardOptions {
  /** The address the API listens on; absent in tests (loopback names only). */
  listen?: ListenAddress;
  /** This machine's name, accepted as Host when listening on all interfaces. */
  hostname?: string;
  /** Told of every refusal (route, status, reason) to log and record it. */
  onRefused?: (c: Context, status: number, reason: string) => void;
}

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
const WILDCARD_HOSTS = new Set(["0.0.0.0", "::", ""]);

/** "host" from "host:port", "[v6]:port", "host" (lower case, brackets dropped). */
export function hostOf(authority: string): string | null {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s/@]+))(?::\d{1,5})?$/.exec(authority.trim());
  if (!match) return null;
  return (match[1] ?? match[2]).toLowerCase().replace(/\.$/, "");
}

function isIpLiteral(host: string): boolean {
  return /^\d{1,3}(?:\.\d{1,3}){3}$/.test(host) || host.includes(":");
}

/** True when a request's Host header names this daemon (see the module doc). */
export function hostAllowed(authority: string, options: GuardOptions = {}): boolean {
  const host = hostOf(authority);
  if (host === null) return false;
  if (isLoopbackHost(host)) return true;
  const listen = options.listen?.host.toLowerCase();
  if (listen === undefined) return false;
  if (host === listen) return true;
  if (!WILDCARD_HOSTS.has(listen)) return false;
  return isIpLiteral(host) || host === options.hostname?.toLowerCase();
}

/** True when `origin` is the page this daemon serves itself (scheme http, same authority). */
export function sameOrigin(origin: string, host: string | undefined): boolean {
  if (host === undefined) return false;
  return origin.toLowerCase() === `http://${host.toLowerCase()}`;
}

function isJson(contentType: string | undefined): boolean {
  const type = contentType?.split(";")[0].trim().toLowerCase();
  return type === "application/json";
}

function hasBody(headers: Headers): boolean {
  const length = headers.get("content-length");
  if (length !== null) return length.trim() !== "0";
  return headers.has("transfer-encoding");
}

/** The guard middleware; answers `{"error": …}` itself when it refuses. */
export function requestGuard(options: GuardOptions = {}): MiddlewareHandler {
  return async (c, next) => {
    const refuse = (status: ContentfulStatusCode, error: string, reason = error) => {
      options.onRefused?.(c, status, reason);
      return c.json({ error }, status);
    };
    const headers = c.req.raw.headers;
    const host = headers.get("host") ?? undefined;
    if (host !== undefined && !hostAllowed(host, options)) {
      const shown = JSON.stringify(host.slice(0, 80));
      return refuse(
        421,
        `Host ${shown} is not this daemon (DNS rebinding?)`,
        `foreign Host ${shown}`,
      );
    }
    const origin = headers.get("origin");
    if (origin !== null && !sameOrigin(origin, host)) {
      return refuse(403, "cross-origin requests are refused");
    }
    const site = headers.get("sec-fetch-site");
    if (site === "cross-site" || site === "same-site") {
      return refuse(403, "cross-site requests are refused");
    }
    if (!SAFE_METHODS.has(c.req.method)) {
      const type = headers.get("content-type") ?? undefined;
      if ((type !== undefined || hasBody(headers)) && !isJson(type)) {
        return refuse(415, "request body must be application/json");
      }
    }
    await next();
    return undefined;
  };
}
