/**
 * NBD device names as people type them ("nbd0", "/dev/nbd0", URL-encoded) and
 * the one form the daemon keys its table by ("/dev/nbd0").
 * @module
 */

export interface DeviceName {
  /** Canonical path, "/dev/nbdN". */
  device: string;
  index: number;
}

const DEVICE_PATTERN = /^(?:\/dev\/)?nbd(0|[1-9]\d{0,5})$/;

/** Parses "nbd3" or "/dev/nbd3"; null for anything else. */
export function parseDeviceName(text: string): DeviceName | null {
  const match = DEVICE_PATTERN.exec(text.trim());
  if (!match) return null;
  const index = Number(match[1]);
  return { device: `/dev/nbd${index}`, index };
}
