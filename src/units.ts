/**
 * Human-readable sizes for the views (status page, CLI tables). Self-contained
 * on purpose: the status page also ships this function to the browser as source.
 * @module
 */

/** 1536 → "1.5 KiB"; whole numbers of bytes below 1 KiB. */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}
