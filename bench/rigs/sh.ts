/**
 * Running a program to completion, for the rigs and the kernel tests.
 * @module
 */

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion and returns its exit code and output. */
export async function sh(program: string, ...args: string[]): Promise<Ran> {
  const out = await new Deno.Command(program, { args, stdout: "piped", stderr: "piped" })
    .output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}
