import type { Rng } from './types.js';

export const DIGITS = '0123456789';
export const HEX = '0123456789abcdef';
export const HEX_UPPER = '0123456789ABCDEF';
export const LOWER = 'abcdefghijklmnopqrstuvwxyz';
export const UPPER = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
export const ALNUM = DIGITS + UPPER + LOWER;
export const ALNUM_LOWER = DIGITS + LOWER;
export const ALNUM_UPPER = DIGITS + UPPER;
export const B64 = ALNUM + '+/';
export const B64URL = ALNUM + '-_';
export const BASE32_UPPER = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** FNV-1a of a string: turns a seed name into a 32-bit state. */
function seedOf(seed: string | number): number {
  if (typeof seed === 'number') return seed >>> 0 || 0x9e3779b9;
  let h = 0x811c9dc5;
  for (let i = 0; i < seed.length; i++) {
    h ^= seed.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0 || 0x9e3779b9;
}

/**
 * A small deterministic generator (xorshift32) for synthetic secrets. Test and corpus
 * positives are built from it at run time, so no secret-shaped literal sits in the repo.
 */
export function createRng(seed: string | number): Rng {
  let state = seedOf(seed);
  const next = (): number => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state;
  };
  return {
    int(n: number): number {
      return next() % n;
    },
    chars(alphabet: string, length: number): string {
      let out = '';
      for (let i = 0; i < length; i++) out += alphabet[next() % alphabet.length];
      return out;
    },
  };
}
