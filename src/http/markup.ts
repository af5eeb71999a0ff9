/**
 * HTML for the status page on Hono's `html` helper, which escapes every
 * interpolated value by construction: only a value that is itself markup (a
 * nested template, or `raw` of trusted text) goes in unescaped. The page has
 * no async parts, so `markup` narrows hono's result to the synchronous kind.
 *
 * @example A value is escaped, a nested template is not
 * ```ts
 * import { markup } from "./markup.ts";
 * const cell = markup`<td>${"<b>"}</td>`;
 * const row = markup`<tr>${cell}</tr>`;
 * if (String(row) !== "<tr><td>&lt;b&gt;</td></tr>") throw new Error(String(row));
 * ```
 * @module
 */
import { html, raw } from "hono/html";
import type { HtmlEscapedString } from "hono/utils/html";

export type Markup = HtmlEscapedString;
export { raw };

/** hono/html's html`` for synchronous templates. */
export function markup(strings: TemplateStringsArray, ...values: unknown[]): Markup {
  const out = html(strings, ...values);
  if (out instanceof Promise) throw new TypeError("markup: a template value was a Promise");
  return out;
}
