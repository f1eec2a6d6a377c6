import { createRequire } from 'node:module';
import type * as Cedar from '@cedar-policy/cedar-wasm/nodejs';

export type { Cedar };

let loaded: typeof Cedar | null = null;

/**
 * Cedar, loaded on first use. Loading compiles its WebAssembly (about 200 ms here), which a
 * CLI command that decides nothing (issuing a ticket without a server) should not pay. The
 * Node build is CommonJS, so it loads synchronously and decisions stay synchronous.
 */
export function cedar(): typeof Cedar {
  loaded ??= createRequire(import.meta.url)('@cedar-policy/cedar-wasm/nodejs') as typeof Cedar;
  return loaded;
}
