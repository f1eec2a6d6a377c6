import { CoatcheckError } from '../core/errors.js';
import type { KnownSecretEncoding } from './types.js';

/** Known secrets shorter than this would match ordinary text. */
export const KNOWN_SECRET_MIN_BYTES = 8;
/** Mirrors the vault's limit on secret values. */
export const KNOWN_SECRET_MAX_BYTES = 64 * 1024;

/**
 * The scan hashes a window of Q characters at every S-th position of the text. Every
 * registered form is indexed by the hashes of its windows at offsets 0..S-1, so any
 * occurrence (length >= Q + S - 1 = 8) has exactly one window on a sampled position.
 * One lookup per S characters in a bitset keeps the scan cheap however many secrets exist.
 */
const Q = 6;
const S = 3;
const MIN_FORM = Q + S - 1;
const MIX = 0x85ebca6b | 0;

/** Which representation of the scanned input a pattern applies to. */
const TEXT = 1; // a JavaScript string (UTF-16)
const BYTES = 2; // a Buffer viewed as latin1 (one char per byte)

interface Pattern {
  readonly id: string;
  readonly text: string;
  readonly encoding: KnownSecretEncoding;
  readonly modes: number;
}

/** One indexed window of a pattern: the hash of text[offset, offset + Q). */
interface Entry {
  readonly pattern: Pattern;
  readonly offset: number;
  readonly hash: number;
}

export interface KnownSecretMatch {
  readonly secretId: string;
  readonly encoding: KnownSecretEncoding;
  readonly start: number;
  readonly end: number;
}

export interface KnownSecretMatcher {
  /** Registers (or replaces) a secret under `id`. Throws CC_ERR_DETECT_KNOWN_SECRET_TOO_SHORT/_TOO_LARGE. */
  add(id: string, value: Buffer | string): void;
  /** Forgets a secret; true when it was registered. */
  remove(id: string): boolean;
  has(id: string): boolean;
  /** Number of registered secrets. */
  readonly size: number;
  /** Length of the longest encoded form: a stream overlap must cover it. */
  readonly maxPatternLength: number;
  /**
   * Every occurrence of every registered secret, in every encoded form. `mode` says how the
   * input was decoded: 'text' for strings, 'bytes' for Buffers read as latin1.
   */
  find(input: string, mode: 'text' | 'bytes'): KnownSecretMatch[];
}

function windowHash(s: string, from: number): number {
  let h = 0x811c9dc5 | 0;
  for (let i = from; i < from + Q; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h;
}

function base64Forms(bytes: Buffer): string[] {
  const out: string[] = [];
  const skip = [0, 2, 3];
  for (let a = 0; a < 3; a++) {
    const padded = a === 0 ? bytes : Buffer.concat([Buffer.alloc(a), bytes]);
    const enc = padded.toString('base64');
    const full = Math.floor(((a + bytes.length) * 8) / 6);
    out.push(enc.slice(skip[a], full));
  }
  return out;
}

/** The forms a secret is looked for in, each a string with its encoding and modes. */
export function encodedForms(
  value: Buffer,
): { text: string; encoding: KnownSecretEncoding; modes: number }[] {
  const forms: { text: string; encoding: KnownSecretEncoding; modes: number }[] = [];
  const seen = new Map<string, number>();
  const push = (text: string, encoding: KnownSecretEncoding, modes: number): void => {
    if (text.length < MIN_FORM) return;
    const at = seen.get(text);
    if (at !== undefined) {
      const prev = forms[at]!;
      forms[at] = { ...prev, modes: prev.modes | modes };
      return;
    }
    seen.set(text, forms.length);
    forms.push({ text, encoding, modes });
  };
  const utf8 = value.toString('utf8');
  const validUtf8 = Buffer.from(utf8, 'utf8').equals(value);
  push(value.toString('latin1'), 'raw', BYTES);
  if (validUtf8) push(utf8, 'raw', TEXT);
  for (const b64 of base64Forms(value)) {
    push(b64, 'base64', TEXT | BYTES);
    push(b64.replace(/\+/g, '-').replace(/\//g, '_'), 'base64url', TEXT | BYTES);
  }
  if (validUtf8) {
    const url = encodeURIComponent(utf8);
    push(url, 'url', TEXT | BYTES);
    push(
      url.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase()),
      'url',
      TEXT | BYTES,
    );
    push(url.replace(/%20/g, '+'), 'url', TEXT | BYTES);
    const json = JSON.stringify(utf8).slice(1, -1);
    push(json, 'json', TEXT);
    push(Buffer.from(json, 'utf8').toString('latin1'), 'json', BYTES);
    const asciiJson = json.replace(
      /[\u007f-\uffff]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
    );
    push(asciiJson, 'json', TEXT | BYTES);
    push(asciiJson.replace(/\//g, '\\/'), 'json', TEXT | BYTES);
  }
  return forms;
}

export function createKnownSecretMatcher(): KnownSecretMatcher {
  const byId = new Map<string, { patterns: Pattern[]; entries: Entry[] }>();
  const byHash = new Map<number, Entry[]>();
  let bits = 16;
  // Scan-side bitset: one bit per slot, kept at most ~1/16 full. Removals leave stale bits
  // (a stale bit only costs a Map lookup); the bitset is rebuilt once they pile up.
  let bitset = new Int32Array(1 << (bits - 5));
  let entryCount = 0;
  let stale = 0;
  let maxLen = 0;

  const slot = (hash: number): number => Math.imul(hash, MIX) >>> (32 - bits);
  const mark = (hash: number): void => {
    const s = slot(hash);
    bitset[s >>> 5]! |= 1 << (s & 31);
  };

  function rebuild(newBits: number): void {
    bits = newBits;
    bitset = new Int32Array(1 << (bits - 5));
    stale = 0;
    for (const list of byHash.values()) for (const e of list) mark(e.hash);
  }

  function insert(e: Entry): void {
    let list = byHash.get(e.hash);
    if (list === undefined) {
      list = [];
      byHash.set(e.hash, list);
    }
    list.push(e);
    mark(e.hash);
    entryCount++;
    if (entryCount * 16 > 1 << bits && bits < 28) rebuild(bits + 1);
  }

  function drop(e: Entry): void {
    const list = byHash.get(e.hash);
    if (list === undefined) return;
    const i = list.indexOf(e);
    if (i === -1) return;
    list.splice(i, 1);
    if (list.length === 0) byHash.delete(e.hash);
    entryCount--;
    stale++;
  }

  function recomputeMax(): void {
    maxLen = 0;
    for (const { patterns } of byId.values())
      for (const p of patterns) maxLen = Math.max(maxLen, p.text.length);
  }

  return {
    add(id, value) {
      const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
      if (bytes.length < KNOWN_SECRET_MIN_BYTES) {
        throw new CoatcheckError(
          'CC_ERR_DETECT_KNOWN_SECRET_TOO_SHORT',
          `known secret ${id} is shorter than ${KNOWN_SECRET_MIN_BYTES} bytes`,
          { details: { secretId: id } },
        );
      }
      if (bytes.length > KNOWN_SECRET_MAX_BYTES) {
        throw new CoatcheckError(
          'CC_ERR_DETECT_KNOWN_SECRET_TOO_LARGE',
          `known secret ${id} exceeds 64 KiB`,
          {
            details: { secretId: id },
          },
        );
      }
      if (byId.has(id)) this.remove(id);
      const patterns = encodedForms(bytes).map(
        (f): Pattern => ({ id, text: f.text, encoding: f.encoding, modes: f.modes }),
      );
      const entries: Entry[] = [];
      for (const p of patterns) {
        for (let k = 0; k < S; k++) entries.push({ pattern: p, offset: k, hash: windowHash(p.text, k) });
        maxLen = Math.max(maxLen, p.text.length);
      }
      byId.set(id, { patterns, entries });
      for (const e of entries) insert(e);
    },
    remove(id) {
      const held = byId.get(id);
      if (held === undefined) return false;
      for (const e of held.entries) drop(e);
      byId.delete(id);
      if (stale > 1024 && stale * 4 > entryCount) rebuild(bits);
      recomputeMax();
      return true;
    },
    has(id) {
      return byId.has(id);
    },
    get size() {
      return byId.size;
    },
    get maxPatternLength() {
      return maxLen;
    },
    find(input, mode) {
      const out: KnownSecretMatch[] = [];
      const n = input.length;
      if (byId.size === 0 || n < MIN_FORM) return out;
      const want = mode === 'text' ? TEXT : BYTES;
      const set = bitset;
      const shift = 32 - bits;
      for (let i = 0; i + Q <= n; i += S) {
        let h = 0x811c9dc5 | 0;
        h = Math.imul(h ^ input.charCodeAt(i), 0x01000193);
        h = Math.imul(h ^ input.charCodeAt(i + 1), 0x01000193);
        h = Math.imul(h ^ input.charCodeAt(i + 2), 0x01000193);
        h = Math.imul(h ^ input.charCodeAt(i + 3), 0x01000193);
        h = Math.imul(h ^ input.charCodeAt(i + 4), 0x01000193);
        h = Math.imul(h ^ input.charCodeAt(i + 5), 0x01000193);
        const sl = Math.imul(h, MIX) >>> shift;
        if ((set[sl >>> 5]! & (1 << (sl & 31))) === 0) continue;
        const list = byHash.get(h);
        if (list === undefined) continue;
        for (const e of list) {
          const p = e.pattern;
          const start = i - e.offset;
          if (start >= 0 && (p.modes & want) !== 0 && input.startsWith(p.text, start)) {
            out.push({ secretId: p.id, encoding: p.encoding, start, end: start + p.text.length });
          }
        }
      }
      return out.length > 1 ? out.sort((a, b) => a.start - b.start || a.end - b.end) : out;
    },
  };
}
