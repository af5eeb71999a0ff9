/**
 * The serve loop's buffer pool; it lives in `src/io/buffer_pool.ts` so that the
 * IVBS test server can use it without importing the NBD layer.
 * @module
 */
export { BufferPool } from "../io/buffer_pool.ts";
