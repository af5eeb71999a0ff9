/**
 * The NBD and QEMU command-line tools some tests drive (Debian's libnbd-bin and
 * qemu-utils): whether one is installed, and running one to its end.
 */

/** True when `tool --version` runs; tests needing a missing tool skip and say so. */
export async function hasTool(tool: string): Promise<boolean> {
  try {
    const out = await new Deno.Command(tool, {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** Runs `tool args…` to its end; stdout and stderr as text. */
export async function runTool(
  tool: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(tool, { args, stdout: "piped", stderr: "piped" }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}
