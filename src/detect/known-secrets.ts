import { CoatcheckError } from '../core/errors.js';
import { decodedStretches } from './canonical.js';
import type { KnownSecretEncoding } from './types.js';

/** Known secrets shorter than this would match ordinary text. */
export const KNOWN_SECRET_MIN_BYTES = 8;
/** Levels of nested escapes `find` decodes (`%5Cu0041`: percent, then JSON). */
export const KNOWN_SECRET_DECODE_LEVELS = 2;
/** Mirrors the vault's limit on secret values. */
export const KNOWN_SECRET_MAX_BYTES = 64 * 1024;

/**
 * The scan hashes a window of Q characters at every S-th position of the text. Every
 * registered form is indexed by the hashes of its windows at offsets 0..S-1, so any
 * occurrence (length >= Q + S - 1 = 8) has exactly one window on a sampled position.
 * One bit test per S characters keeps the scan cheap however many secrets exist.
 */
const Q = 4;
const S = 5;
const MIN_FORM = Q + S - 1;
const MIX = 0x9e3779b1 | 0;

/** Which representation of the scanned input a pattern applies to. */
const TEXT = 1; // a JavaScript string (UTF-16)
const BYTES = 2; // a Buffer viewed as latin1 (one char per byte)

export interface KnownSecretMatch {
  readonly secretId: string;
  readonly encoding: KnownSecretEncoding;
  readonly start: number;
  readonly end: number;
  /** Found on a decoded view of the input (the span covers the escaped form). */
  readonly viaView?: boolean;
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
   * input was decoded: 'text' for strings, 'bytes' for Buffers read as latin1 (then pass
   * the Buffer as `bytes` too: it is hashed with one 32-bit load per window).
   */
  find(input: string, mode: 'text' | 'bytes', bytes?: Buffer): KnownSecretMatch[];
  /**
   * Like `find`, on the input as given only (no decoded views): for a caller that knows
   * the input holds no escape a view would decode beyond what the JSON-escaped form covers
   * (the recording writer's JSON lines without `\\`, `\u`, `%` or `&`).
   */
  findForms(input: string, mode: 'text' | 'bytes', bytes?: Buffer): KnownSecretMatch[];
}

/**
 * Hash of the Q = 4 characters at `from`: their low bytes as a little-endian 32-bit word,
 * multiplied. The same value comes from one 32-bit load when the input is a Buffer.
 */
function windowHash(s: string, from: number): number {
  const w =
    (s.charCodeAt(from) & 0xff) |
    ((s.charCodeAt(from + 1) & 0xff) << 8) |
    ((s.charCodeAt(from + 2) & 0xff) << 16) |
    ((s.charCodeAt(from + 3) & 0xff) << 24);
  return Math.imul(w, MIX);
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
  // Patterns (encoded forms), stored column-wise; removed ones are marked dead and dropped
  // at the next rebuild.
  const pText: string[] = [];
  const pId: string[] = [];
  const pEnc: KnownSecretEncoding[] = [];
  const pModes: number[] = [];
  const pAlive: boolean[] = [];
  const byId = new Map<string, number[]>();
  let live = 0;
  let dead = 0;
  let maxLen = 0;

  // Open-addressing table of windows: hash and (pattern index * S + offset). Load <= 1/2.
  let tBits = 10;
  let tHash = new Int32Array(1 << tBits);
  let tRef = new Int32Array(1 << tBits).fill(-1);
  let tCount = 0;
  // Scan-side bitset over a larger slot space, at most ~1/16 full.
  let fBits = 14;
  let filter = new Int32Array(1 << (fBits - 5));

  function place(hash: number, ref: number): void {
    const mask = (1 << tBits) - 1;
    let k = hash >>> (32 - tBits);
    while (tRef[k] !== -1) k = (k + 1) & mask;
    tHash[k] = hash;
    tRef[k] = ref;
    tCount++;
    const f = hash >>> (32 - fBits);
    filter[f >>> 5]! |= 1 << (f & 31);
  }

  function rebuild(): void {
    while (tCount * 2 > 1 << tBits) tBits++;
    while (tCount * 16 > 1 << fBits) fBits++;
    tHash = new Int32Array(1 << tBits);
    tRef = new Int32Array(1 << tBits).fill(-1);
    filter = new Int32Array(1 << (fBits - 5));
    tCount = 0;
    for (let p = 0; p < pText.length; p++) {
      if (!pAlive[p]) continue;
      for (let k = 0; k < S; k++) place(windowHash(pText[p]!, k), p * S + k);
    }
    dead = 0;
  }

  function addPattern(id: string, text: string, encoding: KnownSecretEncoding, modes: number): number {
    const p = pText.length;
    pText.push(text);
    pId.push(id);
    pEnc.push(encoding);
    pModes.push(modes);
    pAlive.push(true);
    live++;
    maxLen = Math.max(maxLen, text.length);
    if ((tCount + S) * 2 > 1 << tBits || (tCount + S) * 16 > 1 << fBits) {
      tCount += S;
      rebuild();
    } else {
      for (let k = 0; k < S; k++) place(windowHash(text, k), p * S + k);
    }
    return p;
  }

  function compact(): void {
    // Drop dead patterns entirely (indices change, so byId is rebuilt too).
    let w = 0;
    byId.clear();
    for (let p = 0; p < pText.length; p++) {
      if (!pAlive[p]) continue;
      pText[w] = pText[p]!;
      pId[w] = pId[p]!;
      pEnc[w] = pEnc[p]!;
      pModes[w] = pModes[p]!;
      pAlive[w] = true;
      const list = byId.get(pId[w]!) ?? [];
      list.push(w);
      byId.set(pId[w]!, list);
      w++;
    }
    pText.length = w;
    pId.length = w;
    pEnc.length = w;
    pModes.length = w;
    pAlive.length = w;
    tCount = w * S;
    rebuild();
  }

  function recomputeMax(): void {
    maxLen = 0;
    for (let p = 0; p < pText.length; p++) if (pAlive[p]) maxLen = Math.max(maxLen, pText[p]!.length);
  }

  function findForms(input: string, mode: 'text' | 'bytes', bytes?: Buffer): KnownSecretMatch[] {
    const out: KnownSecretMatch[] = [];
    const n = input.length;
    if (byId.size === 0 || n < MIN_FORM) return out;
    const want = mode === 'text' ? TEXT : BYTES;
    const f = filter;
    const fShift = 32 - fBits;
    const tShift = 32 - tBits;
    const tMask = (1 << tBits) - 1;
    const view =
      bytes !== undefined && bytes.length === n
        ? new DataView(bytes.buffer, bytes.byteOffset, bytes.length)
        : undefined;
    for (let i = 0; i + Q <= n; i += S) {
      const w =
        view !== undefined
          ? view.getInt32(i, true)
          : (input.charCodeAt(i) & 0xff) |
            ((input.charCodeAt(i + 1) & 0xff) << 8) |
            ((input.charCodeAt(i + 2) & 0xff) << 16) |
            ((input.charCodeAt(i + 3) & 0xff) << 24);
      const h = Math.imul(w, MIX);
      const fs = h >>> fShift;
      if ((f[fs >>> 5]! & (1 << (fs & 31))) === 0) continue;
      for (let k = h >>> tShift; tRef[k] !== -1; k = (k + 1) & tMask) {
        if (tHash[k] !== h) continue;
        const ref = tRef[k]!;
        const p = (ref / S) | 0;
        const start = i - (ref - p * S);
        const text = pText[p]!;
        if (start >= 0 && pAlive[p] && (pModes[p]! & want) !== 0 && input.startsWith(text, start)) {
          out.push({ secretId: pId[p]!, encoding: pEnc[p]!, start, end: start + text.length });
        }
      }
    }
    return out;
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
      byId.set(
        id,
        encodedForms(bytes).map((f) => addPattern(id, f.text, f.encoding, f.modes)),
      );
    },
    remove(id) {
      const held = byId.get(id);
      if (held === undefined) return false;
      for (const p of held) {
        pAlive[p] = false;
        live--;
        dead++;
      }
      byId.delete(id);
      if (dead > 256 && dead * 4 > live) compact();
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
    findForms(input, mode, bytes) {
      const out = findForms(input, mode, bytes);
      return out.length > 1 ? out.sort(byPlace) : out;
    },
    find(input, mode, bytes) {
      const out = findForms(input, mode, bytes);
      // Escaped forms (`\u0026`, `%2b`, `&#x2b;`, nested up to two levels): match on the
      // decoded views and report the whole original span. Views only around escapes that
      // decode (elsewhere a view is the input, read above), as the response inspector does.
      const stretches = decodedStretches(input, mode, maxLen, KNOWN_SECRET_DECODE_LEVELS);
      if (stretches.length > 0) {
        const seen = new Set(out.map((m) => `${m.secretId}:${m.start}:${m.end}`));
        for (const { from, views } of stretches) {
          for (const { text, start, end } of views) {
            for (const m of findForms(text, mode)) {
              const found = {
                ...m,
                start: from + start[m.start]!,
                end: from + end[m.end - 1]!,
                viaView: true,
              };
              const key = `${found.secretId}:${found.start}:${found.end}`;
              if (seen.has(key)) continue;
              seen.add(key);
              out.push(found);
            }
          }
        }
      }
      return out.length > 1 ? out.sort(byPlace) : out;
    },
  };
}

/** Matches by start, end, then secret (the same order whatever order they were found in). */
export function byPlace(a: KnownSecretMatch, b: KnownSecretMatch): number {
  return (
    a.start - b.start || a.end - b.end || (a.secretId < b.secretId ? -1 : a.secretId > b.secretId ? 1 : 0)
  );
}
