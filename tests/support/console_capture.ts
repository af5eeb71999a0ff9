/**
 * Runs a command in the test's own process with console.log and console.error
 * captured: what it printed on stdout and stderr, one entry per call.
 */

export interface Captured<T> {
  result: T;
  stdout: string[];
  stderr: string[];
}

export async function captureConsole<T>(body: () => Promise<T>): Promise<Captured<T>> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const original = { log: console.log, error: console.error };
  console.log = (...parts: unknown[]) => stdout.push(parts.join(" "));
  console.error = (...parts: unknown[]) => stderr.push(parts.join(" "));
  try {
    return { result: await body(), stdout, stderr };
  } finally {
    console.log = original.log;
    console.error = original.error;
  }
}
