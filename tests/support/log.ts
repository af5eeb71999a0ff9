/** A logger that drops everything: for tests whose expected refusals would clutter the output. */
import type { Logger } from "../../src/log.ts";

export const quietLog: Logger = { debug() {}, info() {}, warn() {}, error() {} };
