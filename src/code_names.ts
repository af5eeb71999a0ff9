/**
 * Names for the codes of a wire table (`{ READ: 0, WRITE: 1 }`), for logs:
 * every codec names its ops, statuses and errors this one way, and a code not
 * in the table still says what it is.
 * @module
 */

/** A code's name in `table`, or what `unknown` makes of a code not in it. */
export function codeNames(
  table: Readonly<Record<string, number>>,
  unknown: (code: number) => string,
): (code: number) => string {
  const names = new Map<number, string>(Object.entries(table).map(([name, code]) => [code, name]));
  return (code) => names.get(code) ?? unknown(code);
}
