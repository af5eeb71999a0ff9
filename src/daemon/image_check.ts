/**
 * "Does this image exist, and do these credentials open it?" without mounting
 * anything: one IVBS session, read-only, closed again. The CSI controller asks
 * it before it records a volume as published on a node (IVBS has no lookup
 * operation without a login).
 * @module
 */
import { errorCode, errorMessage } from "../error_info.ts";
import type { MountDriver } from "./driver.ts";
import { MountError, type MountErrorCode } from "./mount_table.ts";

export interface ImageCheckRequest {
  image: string;
  username: string;
  password: string;
}

export interface ImageInfo {
  image: string;
  sizeBytes: number;
}

/** The session's refusals a caller can act on; anything else is MOUNT_FAILED. */
const PASSTHROUGH = new Set<string>([
  "LOGIN_DENIED",
  "IMAGE_NOT_FOUND",
  "ACCESS_DENIED",
  "NO_PROXY",
  "PROTOCOL",
]);

export async function checkImage(
  driver: MountDriver,
  request: ImageCheckRequest,
): Promise<ImageInfo> {
  let backend;
  try {
    // Read-only: a check must not count as a writer anywhere.
    backend = await driver.openBackend({ ...request, readOnly: true });
  } catch (error) {
    const code = errorCode(error);
    throw new MountError(
      `Cannot open IVBS image ${request.image}: ${errorMessage(error)}`,
      (code !== undefined && PASSTHROUGH.has(code) ? code : "MOUNT_FAILED") as MountErrorCode,
    );
  }
  const info = { image: request.image, sizeBytes: backend.size };
  await backend.close();
  return info;
}
