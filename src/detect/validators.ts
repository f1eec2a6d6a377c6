import { crc32 } from 'node:zlib';
import { BASE62_ALPHABET, encodeBase62Fixed } from '../core/base62.js';
import { assertAgentKey, assertRelayKey, assertSubtaskKey } from '../core/ticket-format.js';

/** Shannon entropy in bits per character. */
// Counts reused across calls (the function is synchronous): a Map per call was most of its cost.
const ENTROPY_COUNTS = new Uint32Array(0x10000);
let entropyOrder = new Uint16Array(256);

export function shannonEntropy(value: string): number {
  const n = value.length;
  if (n === 0) return 0;
  if (entropyOrder.length < n) entropyOrder = new Uint16Array(Math.max(n, entropyOrder.length * 2));
  const counts = ENTROPY_COUNTS;
  const order = entropyOrder;
  let distinct = 0;
  for (let i = 0; i < n; i++) {
    const c = value.charCodeAt(i);
    if (counts[c] === 0) order[distinct++] = c;
    counts[c]!++;
  }
  // Summed in order of first occurrence, as before (the same float result to the last bit).
  let bits = 0;
  for (let d = 0; d < distinct; d++) {
    const c = order[d]!;
    const p = counts[c]! / n;
    counts[c] = 0;
    bits -= p * Math.log2(p);
  }
  return bits;
}

/** Luhn (mod 10) check over the digits of `value`; separators are ignored. */
export function luhnValid(value: string): boolean {
  let sum = 0;
  let digits = 0;
  let double = false;
  for (let i = value.length - 1; i >= 0; i--) {
    const c = value.charCodeAt(i);
    if (c < 48 || c > 57) continue;
    let d = c - 48;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    digits++;
    double = !double;
  }
  return digits >= 12 && sum % 10 === 0;
}

/** ISO 13616 IBAN check: country + 2 check digits + BBAN, mod 97 == 1. Spaces ignored. */
export function ibanValid(value: string): boolean {
  const iban = value.replace(/ /g, '').toUpperCase();
  if (!/^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$/.test(iban)) return false;
  const rearranged = iban.slice(4) + iban.slice(0, 4);
  let rest = 0;
  for (const ch of rearranged) {
    const code = ch.charCodeAt(0);
    const n = code >= 65 ? String(code - 55) : ch;
    for (const digit of n) rest = (rest * 10 + (digit.charCodeAt(0) - 48)) % 97;
  }
  return rest === 1;
}

/** Appends the 2 IBAN check digits to `country` + `bban` (used to synthesise examples). */
export function makeIban(country: string, bban: string): string {
  for (let check = 2; check < 100; check++) {
    const candidate = country + String(check).padStart(2, '0') + bban;
    if (ibanValid(candidate)) return candidate;
  }
  throw new Error('unreachable: some check digits always satisfy mod 97');
}

/** Appends the Luhn check digit to `digits`. */
export function makeLuhn(digits: string): string {
  for (let d = 0; d < 10; d++) if (luhnValid(digits + d)) return digits + d;
  throw new Error('unreachable');
}

/**
 * GitHub-style checksum (also npm): the last 6 characters are the CRC32 of the random part,
 * written as base62 (0-9A-Za-z), most significant digit first, padded with 0.
 * https://github.blog/2021-04-05-behind-githubs-new-authentication-token-formats/
 */
export function base62Crc32Valid(token: string, prefixLength: number): boolean {
  const body = token.slice(prefixLength, token.length - 6);
  const check = token.slice(token.length - 6);
  for (const ch of body) if (!BASE62_ALPHABET.includes(ch)) return false;
  return encodeBase62Fixed(crc32(body) >>> 0, 6) === check;
}

/** Builds `prefix` + `random` + checksum (synthetic examples only). */
export function withBase62Crc32(prefix: string, random: string): string {
  return prefix + random + encodeBase62Fixed(crc32(random) >>> 0, 6);
}

/** A validator from a key format's own check (which throws on a malformed key). */
function passes(assert: (value: string) => void): (value: string) => boolean {
  return (value) => {
    try {
      assert(value);
      return true;
    } catch {
      return false;
    }
  };
}

/** coatcheck agent keys (cca_…) carry the same kind of checksum as tickets. */
export const agentKeyValid = passes(assertAgentKey);

/** coatcheck subtask keys (ccs_…) of workflow nodes: the agent-key construction with its own prefix. */
export const subtaskKeyValid = passes(assertSubtaskKey);

/** coatcheck relay keys (ccr_…): the agent-key construction with its own prefix. */
export function relayKeyValid(value: string): boolean {
  try {
    assertRelayKey(value);
    return true;
  } catch {
    return false;
  }
}

function base64UrlDecode(part: string): string | undefined {
  try {
    return Buffer.from(part.replace(/-/g, '+').replace(/_/g, '/'), 'base64').toString('utf8');
  } catch {
    return undefined;
  }
}

/** A JWT's first segment must decode to a JSON object with an `alg`. */
export function jwtHeaderValid(token: string): boolean {
  const head = token.slice(0, token.indexOf('.'));
  const text = base64UrlDecode(head);
  if (text === undefined) return false;
  try {
    const parsed: unknown = JSON.parse(text);
    return typeof parsed === 'object' && parsed !== null && 'alg' in parsed;
  } catch {
    return false;
  }
}

/** HTTP Basic credentials: base64 of `user:password`. */
export function basicCredentialsValid(value: string): boolean {
  const text = Buffer.from(value, 'base64').toString('latin1');
  const colon = text.indexOf(':');
  if (colon <= 0 || colon === text.length - 1) return false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 32 || c === 127) return false;
  }
  return true;
}
