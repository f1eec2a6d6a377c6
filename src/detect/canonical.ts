/**
 * Canonical views of text for secret matching. Encoders write the same value in many
 * ways (`\u0026`, `%2b`, `%2B`, `&#x2b;`, `&plus;` …); rather than listing every encoder's
 * output as fixed patterns, the text is decoded into a view where each escape becomes
 * what it stands for, with a map from every view unit back to the span of the original it
 * came from. Known secrets are then matched on the view and the whole original span is
 * replaced. Pure and linear: one pass per view, no backtracking.
 *
 * Decoded in one pass (mixing is fine: `\u0041%42&#67;`):
 * - JSON / JavaScript / Python string escapes: `\uXXXX` (surrogate pairs joined),
 *   `\UXXXXXXXX`, `\xXX`, `\" \\ \/ \' \b \f \n \r \t`;
 * - percent-encoding, any case: `%XX`, and the legacy `%uXXXX`;
 * - HTML character references: decimal `&#NN;`, hex `&#xHH;` (the `;` optional) and the
 *   named references of ASCII punctuation and a few others (`&amp; &lt; &quot; &apos;
 *   &plus; &sol; …`).
 * Nested encodings (an escape of an escape) are handled by decoding the view again (see
 * `MAX_DECODE_LEVELS` in the callers).
 */

/** What a decoded unit stands for; `bytes` mode writes UTF-8, `text` mode UTF-16. */
export type ViewMode = 'bytes' | 'text';

export interface DecodedView {
  /** The decoded view: latin1 bytes (`bytes` mode) or UTF-16 text (`text` mode). */
  readonly view: string;
  /** For each view unit, where the escape (or literal) it came from starts in the input. */
  readonly start: Int32Array;
  /** For each view unit, where that escape ends in the input. */
  readonly end: Int32Array;
  /** False when nothing was decoded (the view equals the input). */
  readonly changed: boolean;
}

const NAMED: Record<string, number> = {
  amp: 0x26,
  lt: 0x3c,
  gt: 0x3e,
  quot: 0x22,
  apos: 0x27,
  nbsp: 0xa0,
  excl: 0x21,
  num: 0x23,
  dollar: 0x24,
  percnt: 0x25,
  lpar: 0x28,
  rpar: 0x29,
  ast: 0x2a,
  midast: 0x2a,
  plus: 0x2b,
  comma: 0x2c,
  period: 0x2e,
  sol: 0x2f,
  colon: 0x3a,
  semi: 0x3b,
  equals: 0x3d,
  quest: 0x3f,
  commat: 0x40,
  lsqb: 0x5b,
  lbrack: 0x5b,
  bsol: 0x5c,
  rsqb: 0x5d,
  rbrack: 0x5d,
  Hat: 0x5e,
  lowbar: 0x5f,
  grave: 0x60,
  lcub: 0x7b,
  lbrace: 0x7b,
  verbar: 0x7c,
  vert: 0x7c,
  rcub: 0x7d,
  rbrace: 0x7d,
  tilde: 0x7e,
  hyphen: 0x2d,
  dash: 0x2d,
};
const LONGEST_NAME = 8;

const SIMPLE: Record<number, number> = {
  34: 0x22, // \"
  92: 0x5c, // \\
  47: 0x2f, // \/
  39: 0x27, // \'
  98: 0x08, // \b
  102: 0x0c, // \f
  110: 0x0a, // \n
  114: 0x0d, // \r
  116: 0x09, // \t
};

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

function hexAt(s: string, at: number, digits: number): number {
  if (at + digits > s.length) return -1;
  let v = 0;
  for (let k = 0; k < digits; k++) {
    const h = hexValue(s.charCodeAt(at + k));
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

/** Characters that may begin an escape: a view is only worth building when one occurs. */
export function mayHoldEscape(s: string): boolean {
  return s.includes('\\') || s.includes('%') || s.includes('&');
}

/**
 * The escape that begins at `input[i]`, if one does: its length in `input` (0: none),
 * with what it stands for left in `escapeValue` (a code point, or in `bytes` mode for
 * `%XX` a raw byte: `escapeIsByte`). Module state rather than an object: this runs once
 * per escape character of every scanned body.
 */
let escapeValue = 0;
let escapeIsByte = false;

function parseEscape(input: string, i: number, mode: ViewMode): number {
  const n = input.length;
  const c = input.charCodeAt(i);
  escapeIsByte = false;
  if (c === 0x5c) {
    if (i + 1 >= n) return 0;
    const d = input.charCodeAt(i + 1);
    if (d === 0x75) {
      const v = hexAt(input, i + 2, 4);
      if (v < 0) return 0;
      escapeValue = v;
      if (v >= 0xd800 && v < 0xdc00 && input.charCodeAt(i + 6) === 0x5c && input.charCodeAt(i + 7) === 0x75) {
        const low = hexAt(input, i + 8, 4);
        if (low >= 0xdc00 && low < 0xe000) {
          escapeValue = 0x10000 + ((v - 0xd800) << 10) + (low - 0xdc00);
          return 12;
        }
      }
      return 6;
    }
    if (d === 0x55) {
      const v = hexAt(input, i + 2, 8);
      if (v < 0 || v > 0x10ffff) return 0;
      escapeValue = v;
      return 10;
    }
    if (d === 0x78) {
      const v = hexAt(input, i + 2, 2);
      if (v < 0) return 0;
      escapeValue = v;
      return 4;
    }
    const simple = SIMPLE[d];
    if (simple === undefined) return 0;
    escapeValue = simple;
    return 2;
  }
  if (c === 0x25) {
    const v = hexAt(input, i + 1, 2);
    if (v >= 0) {
      // In bytes mode a raw byte, not a code point: %C3%A9 is two bytes of one UTF-8 character.
      if (mode === 'bytes') {
        escapeValue = v;
        escapeIsByte = true;
        return 3;
      }
      if (v >= 0x80) return 0;
      escapeValue = v;
      return 3;
    }
    if ((input.charCodeAt(i + 1) | 0x20) === 0x75) {
      const u = hexAt(input, i + 2, 4);
      if (u < 0) return 0;
      escapeValue = u;
      return 6;
    }
    return 0;
  }
  if (c === 0x26 && i + 2 < n) {
    if (input.charCodeAt(i + 1) === 0x23) {
      const hex = (input.charCodeAt(i + 2) | 0x20) === 0x78;
      let k = i + (hex ? 3 : 2);
      let v = 0;
      const from = k;
      while (k < n && k - from < 8) {
        const ch = input.charCodeAt(k);
        const digit = hex ? hexValue(ch) : ch >= 0x30 && ch <= 0x39 ? ch - 0x30 : -1;
        if (digit < 0) break;
        v = v * (hex ? 16 : 10) + digit;
        k++;
      }
      if (k === from || v > 0x10ffff) return 0;
      if (input.charCodeAt(k) === 0x3b) k++;
      escapeValue = v;
      return k - i;
    }
    // Only the next LONGEST_NAME + 1 characters: a search to the end would make a text of
    // many `&` and no `;` quadratic.
    let semi = -1;
    for (let k = i + 1, last = Math.min(n - 1, i + 1 + LONGEST_NAME); k <= last; k++) {
      if (input.charCodeAt(k) === 0x3b) {
        semi = k;
        break;
      }
    }
    if (semi === -1) return 0;
    const v = NAMED[input.slice(i + 1, semi)];
    if (v === undefined) return 0;
    escapeValue = v;
    return semi + 1 - i;
  }
  return 0;
}

/**
 * Finds, left to right, the characters that may begin an escape (`\\`, `%`, `&`): one
 * native search per character, each remembered until passed, so a text is read at most
 * once per character however the calls interleave.
 */
class EscapeCharacters {
  readonly #text: string;
  // Next position of `\`, `%`, `&` (-1: none left; -2: not searched yet).
  #backslash = -2;
  #percent = -2;
  #ampersand = -2;

  constructor(text: string) {
    this.#text = text;
  }

  /** The first of them at or after `from`, or -1. */
  next(from: number): number {
    if (this.#backslash !== -1 && this.#backslash < from) this.#backslash = this.#text.indexOf('\\', from);
    if (this.#percent !== -1 && this.#percent < from) this.#percent = this.#text.indexOf('%', from);
    if (this.#ampersand !== -1 && this.#ampersand < from) this.#ampersand = this.#text.indexOf('&', from);
    let best = this.#backslash;
    if (this.#percent !== -1 && (best === -1 || this.#percent < best)) best = this.#percent;
    if (this.#ampersand !== -1 && (best === -1 || this.#ampersand < best)) best = this.#ampersand;
    return best;
  }
}

/** Longest escape `decodeView` reads (`\uD83D\uDE00`, `&#x0010FFFF;`). */
export const LONGEST_ESCAPE = 12;

/**
 * The stretches of `input` whose decoded view can differ from the input: each escape that
 * `decodeView` would decode, widened by `margin` characters on both sides, overlapping
 * stretches joined. Outside them the view is the input, character for character. A
 * stretch starts at no escape's middle (an escape near its start would have widened it),
 * and every escape character inside one has the `LONGEST_ESCAPE` characters after it
 * inside too (or the input ends): decoding a stretch alone reads its escapes as decoding
 * the whole input does. (Without that, `&#99999999`, which decodes to nothing, cut to
 * `&#9999` by a stretch's end would decode to U+270F there.)
 */
export function escapeStretches(input: string, margin: number): Array<readonly [number, number]> {
  const out: Array<readonly [number, number]> = [];
  const n = input.length;
  let from = -1;
  let to = -1;
  const candidates = new EscapeCharacters(input);
  for (let i = candidates.next(0); i !== -1; i = candidates.next(i + 1)) {
    const length = parseEscape(input, i, 'bytes');
    if (length === 0) {
      // Inside the open stretch: keep what parsing it reads inside too.
      if (i < to) to = Math.max(to, Math.min(n, i + LONGEST_ESCAPE));
      continue;
    }
    const lo = Math.max(0, i - margin);
    const hi = Math.min(n, i + length + Math.max(margin, LONGEST_ESCAPE));
    if (to >= 0 && lo <= to) to = Math.max(to, hi);
    else {
      if (to >= 0) out.push([from, to]);
      from = lo;
      to = hi;
    }
  }
  if (to >= 0) out.push([from, to]);
  return out;
}

/** One decoded view of a stretch (level 1 decodes the stretch's text, level 2 that view, …). */
export interface StretchView {
  /** The view's text. */
  readonly text: string;
  /** For each view unit, where what it came from starts in the stretch's text (through every level above). */
  readonly start: Int32Array;
  /** For each view unit, where that ends in the stretch's text. */
  readonly end: Int32Array;
  /** This level's own decoding of the level above (its maps point into that level's text). */
  readonly decoded: DecodedView;
}

/** A stretch of the input around escapes, with its decoded views. */
export interface DecodedStretch {
  /** Where the stretch begins and ends in the input (the views' maps are relative to `from`). */
  readonly from: number;
  readonly to: number;
  /** `input.slice(from, to)`. */
  readonly text: string;
  /** Level 1, 2, … (at least one: a stretch where nothing decodes is left out). */
  readonly views: readonly StretchView[];
}

/**
 * The decoded views of `input` where they can differ from it, for a search whose matches
 * are at most `longestMatch` units long, over up to `levels` nested decodings (`%5Cu0041`:
 * percent, then JSON). Each decodable escape is widened by the longest match (a match that
 * uses a decoded unit lies inside) plus the escapes a deeper level can form from decoded
 * units next to literal ones (each within one escape length of an escape of the level
 * above). Every match of the whole input's views that uses a decoded unit is a match of one
 * stretch's views (mapped back through `from`), and every match of a stretch's views is one
 * of the whole input's; outside the stretches the views are the raw input, which the caller
 * scans anyway. Used by the response inspector and the detector's known-secret matcher.
 */
export function decodedStretches(
  input: string,
  mode: ViewMode,
  longestMatch: number,
  levels: number,
): DecodedStretch[] {
  const out: DecodedStretch[] = [];
  if (!mayHoldEscape(input)) return out;
  for (const [from, to] of escapeStretches(input, longestMatch + LONGEST_ESCAPE * (levels + 1))) {
    const text = from === 0 && to === input.length ? input : input.slice(from, to);
    const views: StretchView[] = [];
    let above = text;
    for (let level = 1; level <= levels; level++) {
      const decoded = decodeView(above, mode);
      if (!decoded.changed) break;
      // Compose with the maps of the levels above: view unit -> span of the stretch.
      const last = views.at(-1);
      const toStart = last?.start;
      const toEnd = last?.end;
      const start = toStart === undefined ? decoded.start : decoded.start.map((u) => toStart[u]!);
      const end = toEnd === undefined ? decoded.end : decoded.end.map((u) => toEnd[u - 1]!);
      views.push({ text: decoded.view, start, end, decoded });
      if (!mayHoldEscape(decoded.view)) break;
      above = decoded.view;
    }
    if (views.length > 0) out.push({ from, to, text, views });
  }
  return out;
}

/** 0, 1, 2, … (at least `length` of them): copied from to fill a view's maps in bulk. */
let IOTA = new Int32Array(0);
/** Larger inputs fill their maps in a loop (no table of that size is kept). */
const IOTA_MAX = 1 << 22;
function iotaTo(length: number): Int32Array {
  if (IOTA.length < length) {
    let size = Math.max(1024, IOTA.length);
    while (size < length) size *= 2;
    IOTA = new Int32Array(size);
    for (let k = 0; k < size; k++) IOTA[k] = k;
  }
  return IOTA;
}

/**
 * Decode one level of escapes. Returns `changed: false` (and the input as the view)
 * when there was nothing to decode.
 */
export function decodeView(input: string, mode: ViewMode): DecodedView {
  const n = input.length;
  // Most views of a view decode nothing (binary text keeps its stray `%`, `\\` and `&`):
  // find the first escape before allocating anything.
  const candidates = new EscapeCharacters(input);
  let first = candidates.next(0);
  while (first !== -1 && parseEscape(input, first, mode) === 0) first = candidates.next(first + 1);
  if (first === -1) return { view: input, start: new Int32Array(0), end: new Int32Array(0), changed: false };
  // A decoded view is never longer than its input: every escape is at least as long as
  // what it writes (`%XX` one byte, `\uXXXX` up to three, `&#x10FFFF;` four).
  const units: Uint8Array | Uint16Array = mode === 'bytes' ? Buffer.allocUnsafe(n) : new Uint16Array(n);
  const start = new Int32Array(n);
  const end = new Int32Array(n);
  let w = 0;
  let changed = false;

  const put = (unit: number, from: number, to: number): void => {
    units[w] = unit;
    start[w] = from;
    end[w] = to;
    w++;
  };

  const emitCodePoint = (cp: number, from: number, to: number): void => {
    if (mode === 'text') {
      if (cp >= 0x10000) {
        const v = cp - 0x10000;
        put(0xd800 + (v >> 10), from, to);
        put(0xdc00 + (v & 0x3ff), from, to);
      } else put(cp, from, to);
      return;
    }
    // UTF-8 (lone surrogates as their 3-byte form: they match nothing real).
    if (cp < 0x80) put(cp, from, to);
    else if (cp < 0x800) {
      put(0xc0 | (cp >> 6), from, to);
      put(0x80 | (cp & 0x3f), from, to);
    } else if (cp < 0x10000) {
      put(0xe0 | (cp >> 12), from, to);
      put(0x80 | ((cp >> 6) & 0x3f), from, to);
      put(0x80 | (cp & 0x3f), from, to);
    } else {
      put(0xf0 | (cp >> 18), from, to);
      put(0x80 | ((cp >> 12) & 0x3f), from, to);
      put(0x80 | ((cp >> 6) & 0x3f), from, to);
      put(0x80 | (cp & 0x3f), from, to);
    }
  };

  /** Units [from, to) of the input as they are: one bulk copy per array for long runs. */
  const copyRun = (from: number, to: number): void => {
    const length = to - from;
    if (length < 16 || to >= IOTA_MAX) {
      for (let k = from; k < to; k++) {
        units[w] = input.charCodeAt(k);
        start[w] = k;
        end[w] = k + 1;
        w++;
      }
      return;
    }
    if (mode === 'bytes') (units as Buffer).write(input.substring(from, to), w, length, 'latin1');
    else for (let k = 0; k < length; k++) units[w + k] = input.charCodeAt(from + k);
    const iota = iotaTo(to + 1);
    start.set(iota.subarray(from, to), w);
    end.set(iota.subarray(from + 1, to + 1), w);
    w += length;
  };

  copyRun(0, first);
  let i = first;
  while (i < n) {
    // Copy the run up to the next escape character as it is (most of most bodies).
    const next = i === first ? first : candidates.next(i);
    const runEnd = next === -1 ? n : next;
    if (runEnd > i) {
      copyRun(i, runEnd);
      i = runEnd;
    }
    if (i >= n) break;
    const len = parseEscape(input, i, mode);
    if (len > 0) {
      if (escapeIsByte) put(escapeValue, i, i + len);
      else emitCodePoint(escapeValue, i, i + len);
      changed = true;
      i += len;
      continue;
    }
    put(input.charCodeAt(i), i, i + 1);
    i++;
  }
  if (!changed) return { view: input, start: new Int32Array(0), end: new Int32Array(0), changed: false };
  let view: string;
  if (mode === 'bytes') view = (units as Buffer).toString('latin1', 0, w);
  else {
    view = '';
    for (let k = 0; k < w; k += 8192)
      view += String.fromCharCode(...units.subarray(k, Math.min(w, k + 8192)));
  }
  return { view, start: start.subarray(0, w), end: end.subarray(0, w), changed: true };
}

/**
 * Where a possibly unfinished escape begins at the end of `s` (it may complete in the
 * next chunk of a stream), or `s.length` when the end of `s` cannot start one.
 */
export function unfinishedEscapeFrom(s: string): number {
  const floor = Math.max(0, s.length - 16);
  for (let i = s.length - 1; i >= floor; i--) {
    const c = s.charCodeAt(i);
    if (c === 0x5c || c === 0x25 || c === 0x26) {
      for (let k = i + 1; k < s.length; k++) {
        const d = s.charCodeAt(k);
        const alnum = (d >= 0x30 && d <= 0x39) || ((d | 0x20) >= 0x61 && (d | 0x20) <= 0x7a) || d === 0x23;
        if (!alnum) return s.length;
      }
      return i;
    }
  }
  return s.length;
}
