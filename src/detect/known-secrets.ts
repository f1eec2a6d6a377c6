import { CoatcheckError } from '../core/errors.js';
import type { KnownSecretEncoding } from './types.js';

/** Known secrets shorter than this would match ordinary text. */
export const KNOWN_SECRET_MIN_BYTES = 8;
/** Mirrors the vault's limit on secret values. */
export const KNOWN_SECRET_MAX_BYTES = 64 * 1024;

/** Prefix length hashed at every position of the scanned text. */
const PREFIX = 8;
const BASE = 0x9e3779b1 | 0;
const MIX = 0x85ebca6b | 0;
const POW = (() => {
  let p = 1;
  for (let i = 0; i < PREFIX - 1; i++) p = Math.imul(p, BASE);
  return p;
})();

/** Which representation of the scanned input a pattern applies to. */
const TEXT = 1; // a JavaScript string (UTF-16)
const BYTES = 2; // a Buffer viewed as latin1 (one char per byte)

interface Pattern {
  readonly id: string;
  readonly text: string;
  readonly encoding: KnownSecretEncoding;
  readonly modes: number;
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

function prefixHash(s: string, from: number): number {
  let h = 0;
  for (let i = from; i < from + PREFIX; i++) h = (Math.imul(h, BASE) + (s.charCodeAt(i) & 0xffff)) | 0;
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
    if (text.length < PREFIX) return;
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
  const byId = new Map<string, Pattern[]>();
  const byHash = new Map<number, Pattern[]>();
  let bits = 16;
  let filter = new Uint8Array(1 << bits);
  let patternCount = 0;
  let maxLen = 0;

  const slot = (hash: number): number => Math.imul(hash, MIX) >>> (32 - bits);

  function rebuild(newBits: number): void {
    bits = newBits;
    filter = new Uint8Array(1 << bits);
    for (const list of byHash.values()) {
      for (const p of list) {
        const s = slot(p.hash);
        if (filter[s]! < 255) filter[s]!++;
      }
    }
  }

  function insert(p: Pattern): void {
    let list = byHash.get(p.hash);
    if (list === undefined) {
      list = [];
      byHash.set(p.hash, list);
    }
    list.push(p);
    const s = slot(p.hash);
    if (filter[s]! < 255) filter[s]!++;
    patternCount++;
    if (patternCount * 16 > 1 << bits && bits < 26) rebuild(bits + 1);
  }

  function drop(p: Pattern): void {
    const list = byHash.get(p.hash);
    if (list === undefined) return;
    const i = list.indexOf(p);
    if (i === -1) return;
    list.splice(i, 1);
    if (list.length === 0) byHash.delete(p.hash);
    const s = slot(p.hash);
    // A saturated counter stays set: it may still cover other patterns.
    if (filter[s]! < 255) filter[s]!--;
    patternCount--;
  }

  function recomputeMax(): void {
    maxLen = 0;
    for (const list of byId.values()) for (const p of list) maxLen = Math.max(maxLen, p.text.length);
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
        (f): Pattern => ({
          id,
          text: f.text,
          encoding: f.encoding,
          modes: f.modes,
          hash: prefixHash(f.text, 0),
        }),
      );
      byId.set(id, patterns);
      for (const p of patterns) {
        insert(p);
        maxLen = Math.max(maxLen, p.text.length);
      }
    },
    remove(id) {
      const patterns = byId.get(id);
      if (patterns === undefined) return false;
      for (const p of patterns) drop(p);
      byId.delete(id);
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
      if (byId.size === 0 || n < PREFIX) return out;
      const want = mode === 'text' ? TEXT : BYTES;
      const f = filter;
      const shift = 32 - bits;
      let h = prefixHash(input, 0);
      for (let i = 0; ; i++) {
        if (f[Math.imul(h, MIX) >>> shift] !== 0) {
          const list = byHash.get(h);
          if (list !== undefined) {
            for (const p of list) {
              if ((p.modes & want) !== 0 && input.startsWith(p.text, i)) {
                out.push({ secretId: p.id, encoding: p.encoding, start: i, end: i + p.text.length });
              }
            }
          }
        }
        if (i + PREFIX >= n) break;
        const gone = input.charCodeAt(i) & 0xffff;
        const come = input.charCodeAt(i + PREFIX) & 0xffff;
        h = (Math.imul((h - Math.imul(gone, POW)) | 0, BASE) + come) | 0;
      }
      return out;
    },
  };
}
