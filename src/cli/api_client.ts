/**
 * A small client for the daemon's HTTP API, used by netdclient and the one-shot
 * commands. Tells "the server answered no" (ApiError, with the HTTP status and
 * the server's message) apart from "no server there" (ServerUnreachableError).
 * @module
 */
import type { DeviceInfo, MountInfo } from "../daemon/mount_table.ts";
import { errorMessage } from "../error_info.ts";
import type { ExportInfo } from "../daemon/export_table.ts";
import type { DaemonEvent, EventPage } from "../daemon/events.ts";
import type { ProxyInfo } from "../daemon/proxy_registry.ts";
import type { ImageCheckRequest, ImageInfo } from "../daemon/image_check.ts";

export type { DaemonEvent, DeviceInfo, EventPage, ExportInfo, ImageInfo, MountInfo, ProxyInfo };

export const DEFAULT_SERVER = "http://127.0.0.1:8080";

export interface Health {
  status: string;
  version: string;
  uptimeSeconds: number;
  mounts: number;
  /** Absent from daemons older than NBD exports. */
  exports?: number;
  devices: number;
  tokenRequired: boolean;
}

export interface MountRequestBody {
  device?: string;
  image: string;
  username: string;
  password: string;
  readOnly?: boolean;
}

/** `POST /api/images/check`: logs in once (read-only) and closes again; nothing is attached. */
export type ImageCheckBody = ImageCheckRequest;

export interface ExportRequestBody {
  name: string;
  image: string;
  username: string;
  password: string;
  readOnly?: boolean;
}

/** The server refused or failed the request; `message` is the server's `error`. */
export class ApiError extends Error {
  readonly code = "API";
  /** `reason` is the daemon's stable code when it gave one (e.g. "NO_MODULE"). */
  constructor(readonly status: number, message: string, readonly reason?: string) {
    super(message);
    this.name = "ApiError";
  }
}

/** Nothing answered at the server's address (refused, timed out, bad host). */
export class ServerUnreachableError extends Error {
  readonly code = "UNREACHABLE";
  constructor(readonly server: string, reason: string) {
    super(`server ${server} is not reachable: ${reason}`);
    this.name = "ServerUnreachableError";
  }
}

export interface ApiClientOptions {
  server?: string;
  token?: string;
  /** Per request; mounts get `mountTimeoutMs` (IVBS login can take a while). */
  timeoutMs?: number;
  mountTimeoutMs?: number;
}

/** "127.0.0.1:8080" → "http://127.0.0.1:8080"; no trailing slash. */
export function normalizeServer(server: string): string {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(server) ? server : `http://${server}`;
  const url = new URL(withScheme);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`server must be an http:// or https:// URL, not ${server}`);
  }
  return url.href.replace(/\/+$/, "");
}

function reasonOf(error: unknown): string {
  if (error instanceof DOMException && error.name === "AbortError") return "timed out";
  const message = errorMessage(error);
  // fetch says "fetch failed"; the socket-level reason is in `cause`.
  const cause = error instanceof Error && error.cause instanceof Error ? error.cause.message : "";
  const detail = `${message} ${cause}`;
  if (/refused/i.test(detail)) return "connection refused";
  if (/dns error|lookup address/i.test(detail)) return "unknown host";
  if (/timed out/i.test(detail)) return "timed out";
  const last = (cause || message).split("\n")[0].split(": ").at(-1);
  return last || message;
}

export class ApiClient {
  readonly server: string;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  readonly #mountTimeoutMs: number;

  constructor(options: ApiClientOptions = {}) {
    this.server = normalizeServer(options.server ?? DEFAULT_SERVER);
    this.#token = options.token;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#mountTimeoutMs = options.mountTimeoutMs ?? 300_000;
  }

  async #call<T>(method: string, path: string, body?: unknown, timeoutMs = this.#timeoutMs) {
    const headers: Record<string, string> = { accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    let response: Response;
    let text: string;
    try {
      response = await fetch(this.server + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: abort.signal,
      });
      text = await response.text();
    } catch (error) {
      throw new ServerUnreachableError(this.server, reasonOf(error));
    } finally {
      clearTimeout(timer);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (!response.ok) {
      const body = typeof json === "object" && json !== null
        ? json as { error?: unknown; code?: unknown }
        : {};
      const message = body.error !== undefined
        ? String(body.error)
        : `HTTP ${response.status} ${response.statusText}`;
      throw new ApiError(
        response.status,
        message,
        typeof body.code === "string" ? body.code : undefined,
      );
    }
    if (json === undefined) {
      throw new ApiError(response.status, `${method} ${path}: the answer is not JSON`);
    }
    return json as T;
  }

  health(): Promise<Health> {
    return this.#call<Health>("GET", "/api/health");
  }

  async devices(): Promise<DeviceInfo[]> {
    return (await this.#call<{ devices: DeviceInfo[] }>("GET", "/api/devices")).devices;
  }

  async mounts(): Promise<MountInfo[]> {
    return (await this.#call<{ mounts: MountInfo[] }>("GET", "/api/mounts")).mounts;
  }

  mount(request: MountRequestBody): Promise<MountInfo> {
    return this.#call<MountInfo>("POST", "/api/mounts", request, this.#mountTimeoutMs);
  }

  /** Resolves with the device's canonical name ("/dev/nbdN"). */
  async unmount(device: string): Promise<string> {
    const reply = await this.#call<{ device: string }>(
      "DELETE",
      `/api/mounts/${encodeURIComponent(device)}`,
      undefined,
      this.#mountTimeoutMs,
    );
    return reply.device;
  }

  /** Whether the image exists and the credentials open it (IVBS login can take a while). */
  checkImage(request: ImageCheckBody): Promise<ImageInfo> {
    return this.#call<ImageInfo>("POST", "/api/images/check", request, this.#mountTimeoutMs);
  }

  async exports(): Promise<ExportInfo[]> {
    return (await this.#call<{ exports: ExportInfo[] }>("GET", "/api/exports")).exports;
  }

  /** Adding logs in to IVBS once to check the image, so it gets the mount timeout. */
  addExport(request: ExportRequestBody): Promise<ExportInfo> {
    return this.#call<ExportInfo>("POST", "/api/exports", request, this.#mountTimeoutMs);
  }

  /** Resolves with the removed export's name. */
  async removeExport(name: string): Promise<string> {
    const reply = await this.#call<{ name: string }>(
      "DELETE",
      `/api/exports/${encodeURIComponent(name)}`,
      undefined,
      this.#mountTimeoutMs,
    );
    return reply.name;
  }

  async proxies(): Promise<ProxyInfo[]> {
    return (await this.#call<{ proxies: ProxyInfo[] }>("GET", "/api/proxies")).proxies;
  }

  /** Events after `since` (a previous page's `next`), oldest first. */
  events(since = 0): Promise<EventPage> {
    return this.#call<EventPage>("GET", `/api/events?since=${since}`);
  }

  async shutdown(options: { keepDevices?: boolean } = {}): Promise<void> {
    await this.#call(
      "POST",
      "/api/shutdown",
      options.keepDevices ? { keepDevices: true } : undefined,
    );
  }
}
