/**
 * Injected reply statuses: "answer the next N matching requests with STATUS".
 * Checked once per request in arrival order; costs nothing while no rule is set.
 * @module
 */
import { Op } from "../wire.ts";

/** Which requests a rule applies to. */
export interface InjectFilter {
  /** Only requests arriving at this proxy index. */
  proxy?: number;
  /** Only these op codes; absent = READ and WRITE (the data path). */
  ops?: number[];
}

interface Rule {
  status: number;
  left: number;
  proxy: number | undefined;
  ops: ReadonlySet<number>;
}

const DATA_PATH_OPS: ReadonlySet<number> = new Set([Op.READ, Op.WRITE]);

export class InjectedStatuses {
  #rules: Rule[] = [];

  add(status: number, count: number, filter: InjectFilter = {}): void {
    if (!Number.isInteger(status) || status < 0 || status > 0xffff_ffff) {
      throw new RangeError(`injected status ${status} is not a u32`);
    }
    if (!Number.isInteger(count) || count < 0) {
      throw new RangeError(`injected count ${count} is not a non-negative integer`);
    }
    if (count === 0) return;
    this.#rules.push({
      status,
      left: count,
      proxy: filter.proxy,
      ops: filter.ops ? new Set(filter.ops) : DATA_PATH_OPS,
    });
  }

  /** Takes one injection for this request: the status to answer with, or undefined to serve it. */
  take(proxy: number, op: number): number | undefined {
    if (this.#rules.length === 0) return undefined;
    for (let i = 0; i < this.#rules.length; i++) {
      const rule = this.#rules[i];
      if (rule.proxy !== undefined && rule.proxy !== proxy) continue;
      if (!rule.ops.has(op)) continue;
      if (--rule.left === 0) this.#rules.splice(i, 1);
      return rule.status;
    }
    return undefined;
  }

  /** Injections not yet used, over all rules. */
  get pending(): number {
    return this.#rules.reduce((sum, rule) => sum + rule.left, 0);
  }

  clear(): void {
    this.#rules = [];
  }
}
