/**
 * A small client for the daemon's HTTP API, used by netdclient and the one-shot
 * commands. Tells "the server answered no" (ApiError, with the HTTP status and
 * the server's message) apart from "no server there" (ServerUnreachableError).
 * @module
 */
import type {
  DaemonEvent,
  DeviceInfo,
  EventPage,
  ExportInfo,
  ImageCheckRequest,
  ImageInfo,
  MountInfo,
  ProxyInfo,
} from "../daemon/api_types.ts";
import { errorMessage } from "../error_info.ts";

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

/** `POST /api/reload`: what the config reload did, by item label. */
export type { ReloadResult } from "../daemon/api_types.ts";
import type { ReloadResult } from "../daemon/api_types.ts";

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

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** The server's refusal as an ApiError, with its `error` message and `code` when it gave them. */
function apiError(response: Response, json: unknown): ApiError {
  const body = typeof json === "object" && json !== null
    ? json as { error?: unknown; code?: unknown }
    : {};
  const message = body.error !== undefined
    ? String(body.error)
    : `HTTP ${response.status} ${response.statusText}`;
  return new ApiError(
    response.status,
    message,
    typeof body.code === "string" ? body.code : undefined,
  );
}

/** One message of the event stream: a daemon event, or how many the daemon's ring dropped. */
export type FollowedEvent = { event: DaemonEvent } | { missed: number };

/** Splits Server-Sent Events text into messages: field name → value (the last of each). */
async function* sseMessages(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<Record<string, string>> {
  let text = "";
  for await (const chunk of body.pipeThrough(new TextDecoderStream())) {
    text += chunk.replace(/\r\n?/g, "\n");
    for (let end = text.indexOf("\n\n"); end >= 0; end = text.indexOf("\n\n")) {
      const message: Record<string, string> = {};
      for (const line of text.slice(0, end).split("\n")) {
        const colon = line.indexOf(":");
        if (colon <= 0) continue; // a comment (heartbeat) or a bare field name
        message[line.slice(0, colon)] = line.slice(colon + 1).replace(/^ /, "");
      }
      text = text.slice(end + 2);
      if (Object.keys(message).length > 0) yield message;
    }
  }
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
    const json = parseJson(text);
    if (!response.ok) throw apiError(response, json);
    if (json === undefined) {
      throw new ApiError(response.status, `${method} ${path}: the answer is not JSON`);
    }
    return json as T;
  }

  /** A list the daemon answers at /api/KEY under KEY (`{"mounts": […]}`). */
  async #list<T>(key: "devices" | "mounts" | "exports" | "proxies"): Promise<T[]> {
    return (await this.#call<Record<string, T[]>>("GET", `/api/${key}`))[key];
  }

  /** A POST that may log in to IVBS or bring items up, so it gets the mount timeout. */
  #slowPost<T>(path: string, body?: unknown): Promise<T> {
    return this.#call<T>("POST", path, body, this.#mountTimeoutMs);
  }

  /** Deletes a mount or export (detaching can take a while); resolves with the name the answer gives. */
  async #remove(kind: "mounts" | "exports", name: string, key: "device" | "name") {
    const path = `/api/${kind}/${encodeURIComponent(name)}`;
    const reply = await this.#call<Record<string, string>>(
      "DELETE",
      path,
      undefined,
      this.#mountTimeoutMs,
    );
    return reply[key];
  }

  health(): Promise<Health> {
    return this.#call<Health>("GET", "/api/health");
  }

  devices(): Promise<DeviceInfo[]> {
    return this.#list("devices");
  }

  mounts(): Promise<MountInfo[]> {
    return this.#list("mounts");
  }

  mount(request: MountRequestBody): Promise<MountInfo> {
    return this.#slowPost("/api/mounts", request);
  }

  /** Resolves with the device's canonical name ("/dev/nbdN"). */
  unmount(device: string): Promise<string> {
    return this.#remove("mounts", device, "device");
  }

  /** Whether the image exists and the credentials open it (IVBS login can take a while). */
  checkImage(request: ImageCheckBody): Promise<ImageInfo> {
    return this.#slowPost("/api/images/check", request);
  }

  exports(): Promise<ExportInfo[]> {
    return this.#list("exports");
  }

  /** Adding logs in to IVBS once to check the image. */
  addExport(request: ExportRequestBody): Promise<ExportInfo> {
    return this.#slowPost("/api/exports", request);
  }

  /** Resolves with the removed export's name. */
  removeExport(name: string): Promise<string> {
    return this.#remove("exports", name, "name");
  }

  proxies(): Promise<ProxyInfo[]> {
    return this.#list("proxies");
  }

  /** Events after `since` (a previous page's `next`), oldest first. */
  events(since = 0): Promise<EventPage> {
    return this.#call<EventPage>("GET", `/api/events?since=${since}`);
  }

  /** Re-reads the daemon's config (bringing items up may take a while). */
  reload(): Promise<ReloadResult> {
    return this.#slowPost("/api/reload");
  }

  /**
   * Events after `since`, then each new one as the daemon records it, over
   * the Server-Sent Events stream of /api/events; ends when `signal` aborts.
   * The daemon closing the stream is a ServerUnreachableError.
   */
  async *followEvents(since: number, signal?: AbortSignal): AsyncGenerator<FollowedEvent> {
    const headers: Record<string, string> = { accept: "text/event-stream" };
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    const abort = new AbortController();
    const stop = () => abort.abort();
    signal?.addEventListener("abort", stop, { once: true });
    // The timeout covers the answer's head; the stream itself may be quiet for long.
    const timer = setTimeout(stop, this.#timeoutMs);
    try {
      let response: Response;
      try {
        response = await fetch(`${this.server}/api/events?since=${since}`, {
          headers,
          signal: abort.signal,
        });
      } catch (error) {
        if (signal?.aborted) return;
        throw new ServerUnreachableError(this.server, reasonOf(error));
      } finally {
        clearTimeout(timer);
      }
      if (!response.ok) throw apiError(response, parseJson(await response.text()));
      if (!/^text\/event-stream/.test(response.headers.get("content-type") ?? "")) {
        await response.body?.cancel();
        throw new ApiError(response.status, "the daemon does not stream events (too old?)");
      }
      try {
        for await (const message of sseMessages(response.body!)) {
          if (message.event === "missed") {
            yield { missed: Number(JSON.parse(message.data ?? "{}").missed ?? 0) };
          } else if (message.data !== undefined) {
            yield { event: JSON.parse(message.data) as DaemonEvent };
          }
        }
      } catch (error) {
        if (signal?.aborted) return;
        throw new ServerUnreachableError(this.server, reasonOf(error));
      }
      if (!signal?.aborted) {
        throw new ServerUnreachableError(this.server, "the daemon closed the event stream");
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", stop);
    }
  }

  async shutdown(options: { keepDevices?: boolean } = {}): Promise<void> {
    await this.#call(
      "POST",
      "/api/shutdown",
      options.keepDevices ? { keepDevices: true } : undefined,
    );
  }
}
