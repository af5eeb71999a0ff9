/**
 * A checkout of the ivbsnetd operators run today (main at 6320cf8, the last
 * commit before state format 2 and `serve --replace` preparing first), for
 * the upgrade tests: its `main.ts` starts the old daemon. Made with
 * `git worktree add --detach` from this repository's own history (works in a
 * fresh CI clone that has the history), or taken from IVBSNETD_OLD_CHECKOUT.
 * @module
 */
import { fileURLToPath } from "node:url";

export const TODAYS_MAIN = "6320cf8";

const REPO = fileURLToPath(new URL("../..", import.meta.url));

export interface OldCheckout {
  /** main.ts of the old checkout. */
  main: string;
  /** Removes the worktree this made (nothing for IVBSNETD_OLD_CHECKOUT). */
  remove(): Promise<void>;
}

async function git(...args: string[]): Promise<string> {
  const out = await new Deno.Command("git", { args: ["-C", REPO, ...args], stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`git ${args.join(" ")}: ${text.trim()}`);
  return text;
}

export async function oldCheckout(): Promise<OldCheckout> {
  const given = Deno.env.get("IVBSNETD_OLD_CHECKOUT");
  if (given) return { main: `${given.replace(/\/+$/, "")}/main.ts`, remove: async () => {} };
  try {
    await git("cat-file", "-e", `${TODAYS_MAIN}^{commit}`);
  } catch (error) {
    throw new Error(
      `commit ${TODAYS_MAIN} is not in this clone (a shallow CI checkout needs fetch-depth: 0), ` +
        `or set IVBSNETD_OLD_CHECKOUT: ${(error as Error).message}`,
    );
  }
  const base = await Deno.makeTempDir({ prefix: "ivbsnetd-old-" });
  const dir = `${base}/ivbsnetd-${TODAYS_MAIN}`;
  await git("worktree", "add", "--detach", dir, TODAYS_MAIN);
  return {
    main: `${dir}/main.ts`,
    remove: async () => {
      await git("worktree", "remove", "--force", dir).catch(() => {});
      await Deno.remove(base, { recursive: true }).catch(() => {});
    },
  };
}
