/**
 * Response inspection: what comes back from an upstream is scanned before the agent
 * sees it, and every secret found is replaced by a fresh ticket. Front-ends drive a
 * `ResponseScan` (header values whole, body chunk by chunk); inspectors decide what a
 * finding is. The known-secret inspector below needs no detector; the detection engine
 * (src/detect) will plug in as another `ResponseInspector`.
 */

import { CoatcheckError } from '../core/errors.js';
import { decodedStretches, unfinishedEscapeFrom } from '../detect/canonical.js';

export interface InspectionContext {
  /** A ticket that stands for `secretId`, bound to the caller (one per secret per response). */
  reissue(secretId: string): Promise<string>;
  /**
   * A secret the vault did not know (a detector finding): register it and return a ticket
   * bound to the caller and to where the response came from.
   */
  tokenize?(value: Buffer, kind: string): Promise<string>;
}

export interface ResponseScan {
  /** Scan one complete header value (latin1, as HTTP carries it). */
  header(value: string): Promise<string>;
  /**
   * Scan a whole header block (names and values, latin1) at once: the same result as
   * `header` on each, in one pass where the scan can show that is exactly equivalent.
   */
  headers?(values: readonly string[]): Promise<string[]>;
  /** Scan a body chunk; returns what may be sent now (a possible partial match is held back). */
  push(chunk: Buffer): Promise<Buffer>;
  /** End of body: the held-back tail, scanned. */
  end(): Promise<Buffer>;
  /** Secret ids replaced so far, with how many times (ids, never values). */
  readonly findings: ReadonlyMap<string, number>;
}

export interface ResponseInspector {
  readonly name: string;
  begin(context: InspectionContext): Promise<ResponseScan>;
}

/** Secrets shorter than this are not searched for in responses (they would match everywhere). */
export const MIN_SCANNED_SECRET_BYTES = 6;

export interface KnownSecret {
  readonly id: string;
  /** The raw value. Used only to build search patterns; never logged. */
  readonly value: Buffer;
}

export interface Pattern {
  readonly secretId: string;
  readonly bytes: Buffer;
  /** The bytes that replace a match, given the ticket that replaces the secret. */
  readonly replace: (ticket: string) => Buffer;
}

/**
 * Patterns with one automaton over them: immutable once built. A set is made of several
 * (one large one built in slices, small ones for secrets added since: ADR 0021).
 */
export interface PatternSegment {
  readonly patterns: readonly Pattern[];
  readonly automaton: Automaton;
  /** Longest pattern in the segment. */
  readonly maxLength: number;
}

export interface PatternSet {
  readonly segments: readonly PatternSegment[];
  /**
   * Secrets whose patterns are still in a segment but are no longer searched for (erased
   * since the segment was built): their matches are dropped before anything is replaced.
   */
  readonly dropped: ReadonlySet<string>;
  /** Every pattern, segment after segment (made on first use: for tests and small sets). */
  readonly patterns: readonly Pattern[];
  /** No pattern at all. */
  readonly empty: boolean;
  /** Longest pattern: the most a single match can span in a decoded view. */
  readonly maxLength: number;
  /** True when `bytes` (or a decoded view of it) may hold a known secret. */
  mayContain(bytes: Buffer): boolean;
  /** Occurrences on the bytes as they are (no decoded view), by start then end. */
  occurrences(
    bytes: Buffer,
  ): Array<{ readonly start: number; readonly end: number; readonly secretId: string }>;
}

/** The tables of an automaton, as its builder leaves them. */
interface AutomatonParts {
  readonly root: Int32Array;
  readonly one: Int32Array;
  readonly oneByte: Uint8Array;
  readonly next: Children;
  readonly fail: Int32Array;
  readonly depth: Int32Array;
  readonly outHead: Int32Array;
  readonly outNext: Int32Array;
  readonly dict: Int32Array;
  readonly lengths: Int32Array;
  /** The sampled-window index over the same patterns (null: a pattern is too short for it). */
  readonly windows: readonly Windows[] | null;
}

/** Steps of work (trie bytes or states) between two yields of the builder. */
const BUILD_STEPS_PER_YIELD = 1024;

/**
 * The raw pass without walking the automaton byte by byte: a window of `WINDOW_Q` bytes is
 * read at every `stride`-th position of the text, and every pattern is indexed by its
 * windows at offsets 0 … stride - 1, so any occurrence (at least `WINDOW_Q + stride - 1`
 * bytes) has exactly one window on a sampled position. A bitset answers most positions with
 * one bit test; a hit is checked against the entries of its bucket (the window's four
 * bytes, then the rest of the pattern). Two strides: 8 for patterns of 11 bytes or more,
 * 3 for shorter ones (down to 6, `MIN_SCANNED_SECRET_BYTES`), each class with its own index
 * and its own pass. At 100k secrets the automaton walks ordinary text three or four states
 * deep at every byte: this reads one word per stride.
 */
const WINDOW_Q = 4;
const WINDOW_STRIDES = [8, 3] as const;
const WINDOW_MIX = 0x9e3779b1 | 0;

interface Windows {
  readonly stride: number;
  /** One bit per hash slot (`hash >>> fShift`), at most about 1/16 of them set. */
  readonly filter: Int32Array;
  readonly fShift: number;
  /** Entries of bucket `b` (`hash >>> bShift`): `[bucket[b], bucket[b + 1])` of `words`/`refs`. */
  readonly bucket: Int32Array;
  readonly bShift: number;
  /** The window's four bytes (little-endian) and where it is: pattern * stride + offset. */
  readonly words: Int32Array;
  readonly refs: Int32Array;
}

function windowWord(bytes: Uint8Array, at: number): number {
  return bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24);
}

/** The window indexes of `patterns` (the longest stride each can take), or null when one is too short for any. */
function* windowParts(patterns: readonly Buffer[]): Generator<void, Windows[] | null, void> {
  if (patterns.length === 0) return null;
  const classes: number[][] = WINDOW_STRIDES.map(() => []);
  for (let p = 0; p < patterns.length; p++) {
    const c = WINDOW_STRIDES.findIndex((stride) => patterns[p]!.length >= WINDOW_Q + stride - 1);
    if (c === -1) return null;
    classes[c]!.push(p);
  }
  const out: Windows[] = [];
  for (let c = 0; c < WINDOW_STRIDES.length; c++) {
    if (classes[c]!.length > 0) out.push(yield* windowIndex(patterns, classes[c]!, WINDOW_STRIDES[c]!));
  }
  return out;
}

function* windowIndex(
  patterns: readonly Buffer[],
  members: readonly number[],
  stride: number,
): Generator<void, Windows, void> {
  const total = members.length * stride;
  let bBits = 4;
  while (2 ** (bBits + 1) <= total && bBits < 30) bBits++;
  let fBits = 10;
  while (2 ** fBits < total * 16 && fBits < 31) fBits++;
  const bShift = 32 - bBits;
  const fShift = 32 - fBits;
  const filter = new Int32Array(2 ** (fBits - 5));
  const bucket = new Int32Array((1 << bBits) + 1);
  const hashes = new Int32Array(total);
  let steps = 0;
  for (let m = 0; m < members.length; m++) {
    const bytes = patterns[members[m]!]!;
    for (let k = 0; k < stride; k++) {
      const h = Math.imul(windowWord(bytes, k), WINDOW_MIX);
      hashes[m * stride + k] = h;
      bucket[(h >>> bShift) + 1]!++;
      const f = h >>> fShift;
      filter[f >>> 5]! |= 1 << (f & 31);
    }
    if (++steps >= BUILD_STEPS_PER_YIELD) {
      steps = 0;
      yield;
    }
  }
  for (let b = 1; b < bucket.length; b++) bucket[b]! += bucket[b - 1]!;
  const fill = bucket.slice(0, -1);
  const words = new Int32Array(total);
  const refs = new Int32Array(total);
  for (let e = 0; e < total; e++) {
    const at = fill[hashes[e]! >>> bShift]!++;
    const m = (e / stride) | 0;
    const k = e - m * stride;
    words[at] = windowWord(patterns[members[m]!]!, k);
    refs[at] = members[m]! * stride + k;
    if (++steps >= BUILD_STEPS_PER_YIELD * 4) {
      steps = 0;
      yield;
    }
  }
  return { stride, filter, fShift, bucket, bShift, words, refs };
}

/**
 * The trie's second and further children ((state, byte) -> child; the first is kept inline):
 * open addressing in typed arrays. A `Map` keyed by `state * 256 + byte` held them before;
 * past 8M states its keys are not small integers and every lookup hashed a heap number
 * (building a 100k-secret set spent most of its time there).
 */
export class Children {
  #state = new Int32Array(16).fill(-1);
  #byte = new Uint8Array(16);
  #child = new Int32Array(16);
  #shift = 28;
  #mask = 15;
  #count = 0;

  get size(): number {
    return this.#count;
  }

  /** The child of `s` on byte `b`, or 0 (the root is nobody's child). */
  get(s: number, b: number): number {
    const state = this.#state;
    const mask = this.#mask;
    for (
      let k = (Math.imul(s, 0x9e3779b1) ^ Math.imul(b + 1, 0x85ebca6b)) >>> this.#shift;
      ;
      k = (k + 1) & mask
    ) {
      const at = state[k]!;
      if (at === -1) return 0;
      if (at === s && this.#byte[k] === b) return this.#child[k]!;
    }
  }

  /** Sets the child of `s` on byte `b` (which has none yet). */
  set(s: number, b: number, child: number): void {
    if ((this.#count + 1) * 2 > this.#state.length) this.#grow();
    this.#place(s, b, child);
    this.#count++;
  }

  #place(s: number, b: number, child: number): void {
    const mask = this.#mask;
    let k = (Math.imul(s, 0x9e3779b1) ^ Math.imul(b + 1, 0x85ebca6b)) >>> this.#shift;
    while (this.#state[k] !== -1) k = (k + 1) & mask;
    this.#state[k] = s;
    this.#byte[k] = b;
    this.#child[k] = child;
  }

  #grow(): void {
    const state = this.#state;
    const byte = this.#byte;
    const child = this.#child;
    const size = state.length * 2;
    this.#state = new Int32Array(size).fill(-1);
    this.#byte = new Uint8Array(size);
    this.#child = new Int32Array(size);
    this.#shift--;
    this.#mask = size - 1;
    for (let k = 0; k < state.length; k++) if (state[k] !== -1) this.#place(state[k]!, byte[k]!, child[k]!);
  }
}

/**
 * Builds an automaton's tables, yielding every few thousand steps so that a large set can
 * be built in slices between other work on the event loop (`Automaton.buildInSlices`).
 */
function* automatonParts(patterns: readonly Buffer[]): Generator<void, AutomatonParts, void> {
  const total = patterns.reduce((sum, p) => sum + p.length, 0) + 1;
  const lengths = Int32Array.from(patterns, (p) => p.length);
  const one = new Int32Array(total);
  const oneByte = new Uint8Array(total);
  const parent = new Int32Array(total);
  const byte = new Uint8Array(total);
  const depth = new Int32Array(total);
  const outHead = new Int32Array(total).fill(-1);
  const outNext = new Int32Array(patterns.length).fill(-1);
  const root = new Int32Array(256);
  const next = new Children();
  let states = 1;
  let steps = 0;
  for (let index = 0; index < patterns.length; index++) {
    const bytes = patterns[index]!;
    let s = 0;
    for (let k = 0; k < bytes.length; k++) {
      const b = bytes[k]!;
      let t: number;
      if (s === 0) t = root[b]!;
      else if (one[s] !== 0 && oneByte[s] === b) t = one[s]!;
      else t = next.get(s, b);
      if (t === 0) {
        t = states++;
        if (s === 0) root[b] = t;
        else if (one[s] === 0) {
          one[s] = t;
          oneByte[s] = b;
        } else next.set(s, b, t);
        parent[t] = s;
        byte[t] = b;
        depth[t] = depth[s]! + 1;
      }
      s = t;
    }
    outNext[index] = outHead[s]!;
    outHead[s] = index;
    steps += bytes.length;
    if (steps >= BUILD_STEPS_PER_YIELD) {
      steps = 0;
      yield;
    }
  }
  const fail = new Int32Array(states);
  const dict = new Int32Array(states);
  const goto = (s: number, b: number): number => {
    if (s === 0) return root[b]!;
    if (one[s] !== 0 && oneByte[s] === b) return one[s]!;
    return next.get(s, b);
  };
  // Breadth first (states by depth): a state's fail link is known before its children's.
  let maxDepth = 0;
  for (let t = 1; t < states; t++) maxDepth = Math.max(maxDepth, depth[t]!);
  const firstOfDepth = new Int32Array(maxDepth + 2);
  for (let t = 1; t < states; t++) firstOfDepth[depth[t]! + 1]!++;
  for (let d = 1; d < firstOfDepth.length; d++) firstOfDepth[d]! += firstOfDepth[d - 1]!;
  const order = new Int32Array(states);
  for (let t = 1; t < states; t++) order[firstOfDepth[depth[t]!]!++] = t;
  yield;
  for (let q = 0; q < states - 1; q++) {
    const t = order[q]!;
    if (depth[t] === 1) continue;
    const b = byte[t]!;
    let f = fail[parent[t]!]!;
    for (;;) {
      const g = goto(f, b);
      if (g !== 0) {
        fail[t] = g;
        break;
      }
      if (f === 0) break;
      f = fail[f]!;
    }
    const ft = fail[t]!;
    dict[t] = outHead[ft] !== -1 ? ft : dict[ft]!;
    if (++steps >= BUILD_STEPS_PER_YIELD) {
      steps = 0;
      yield;
    }
  }
  const windows = yield* windowParts(patterns);
  return {
    root,
    windows,
    one: one.slice(0, states),
    oneByte: oneByte.slice(0, states),
    next,
    fail,
    depth: depth.slice(0, states),
    outHead: outHead.slice(0, states),
    outNext,
    dict,
    lengths,
  };
}

/** Runs a builder to its end at once. */
function runToEnd<T>(builder: Generator<void, T, void>): T {
  for (;;) {
    const step = builder.next();
    if (step.done === true) return step.value;
  }
}

/**
 * An Aho-Corasick automaton over the patterns' bytes: one pass over the text finds every
 * occurrence of every pattern, overlapping ones included, whatever the number of
 * secrets; the state at the end of the text gives the longest suffix that could still
 * grow into a match (what a stream must hold back). Transitions out of the root are a
 * dense table (most bytes of a response stay there); a state's first child is kept
 * inline (deep in the trie, states have one) and further children sit in one hash map.
 * Built in typed arrays, linear in the total length of the patterns.
 */
export class Automaton {
  readonly #root: Int32Array;
  /** Most states have one child: kept inline; states with more use `#next` for the rest. */
  readonly #one: Int32Array;
  readonly #oneByte: Uint8Array;
  readonly #next: Children;
  readonly #fail: Int32Array;
  readonly #depth: Int32Array;
  /** Patterns ending at a state (a list through `#outNext`), and the next state on the fail chain with any. */
  readonly #outHead: Int32Array;
  readonly #outNext: Int32Array;
  readonly #dict: Int32Array;
  readonly #lengths: Int32Array;
  readonly #windows: readonly Windows[] | null;

  /** The patterns themselves, and the longest one's length (for the native search). */
  readonly #patterns: readonly Buffer[];
  readonly #longest: number;

  constructor(patterns: readonly Buffer[], parts?: AutomatonParts) {
    const built = parts ?? runToEnd(automatonParts(patterns));
    this.#patterns = patterns;
    this.#longest = patterns.reduce((m, p) => Math.max(m, p.length), 1);
    this.#root = built.root;
    this.#one = built.one;
    this.#oneByte = built.oneByte;
    this.#next = built.next;
    this.#fail = built.fail;
    this.#depth = built.depth;
    this.#outHead = built.outHead;
    this.#outNext = built.outNext;
    this.#dict = built.dict;
    this.#lengths = built.lengths;
    this.#windows = built.windows;
  }

  /**
   * The same automaton, built in slices of about `sliceMs` of work with the event loop free
   * in between (`setImmediate`): a set of 100k secrets is built without stalling requests.
   */
  static async buildInSlices(patterns: readonly Buffer[], sliceMs = 0.5): Promise<Automaton> {
    const builder = automatonParts(patterns);
    for (;;) {
      const until = performance.now() + sliceMs;
      for (;;) {
        const step = builder.next();
        if (step.done === true) return new Automaton(patterns, step.value);
        if (performance.now() >= until) break;
      }
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  }

  /** The child of `s` on byte `b`, or 0. */
  #goto(s: number, b: number): number {
    if (s === 0) return this.#root[b]!;
    if (this.#one[s] !== 0 && this.#oneByte[s] === b) return this.#one[s]!;
    return this.#next.get(s, b);
  }

  get empty(): boolean {
    return this.#lengths.length === 0;
  }

  /** The state after reading byte `b` in state `s`. */
  step(s: number, b: number): number {
    for (;;) {
      const t = this.#goto(s, b);
      if (t !== 0 || s === 0) return t;
      s = this.#fail[s]!;
    }
  }

  /** How many bytes state `s` has read of the patterns it may still complete. */
  depth(s: number): number {
    return this.#depth[s]!;
  }

  /** True when some pattern ends in state `s`. */
  hasOutput(s: number): boolean {
    return this.#outHead[s] !== -1 || this.#dict[s] !== 0;
  }

  /** Every pattern that ends in state `s`, with its length. */
  ends(s: number, onMatch: (pattern: number, length: number) => void): void {
    for (let o = this.#outHead[s] !== -1 ? s : this.#dict[s]!; o !== 0; o = this.#dict[o]!) {
      for (let p = this.#outHead[o]!; p !== -1; p = this.#outNext[p]!) onMatch(p, this.#lengths[p]!);
    }
  }

  /**
   * Every occurrence in `text` (latin1, one char per byte): `onMatch(pattern, start, end)`.
   * Returns where the longest unfinished prefix at the end of `text` starts. When
   * `states` is given, `states[i]` is set to the state before reading `text[i]`.
   */
  /** Whether any pattern occurs in `bytes` (stops at the first; allocates nothing). */
  occursIn(bytes: Buffer): boolean {
    return this.partialIfNone(bytes) === -1;
  }

  /**
   * With no pattern in `bytes`: where the longest unfinished prefix at its end starts (what
   * a stream must hold back), as `scan` returns. With one: -1. Allocates nothing.
   */
  partialIfNone(bytes: Buffer): number {
    // Few patterns and a long text: one native search per pattern is several times faster
    // than a byte-at-a-time loop in JavaScript; the unfinished prefix at the end lies in
    // the last (longest pattern - 1) bytes, so the automaton reads only those.
    if (this.#patterns.length <= NATIVE_SEARCH_MAX_PATTERNS && bytes.length >= NATIVE_SEARCH_MIN_BYTES) {
      for (const p of this.#patterns) if (bytes.indexOf(p) !== -1) return -1;
      const from = Math.max(0, bytes.length - (this.#longest - 1));
      return this.#partialFrom(bytes, from);
    }
    // Many patterns: the sampled windows, then the automaton over those last bytes.
    if (this.#windowed(bytes)) {
      if (this.#windowsFind(bytes, undefined)) return -1;
      return this.#partialFrom(bytes, bytes.length - (this.#longest - 1));
    }
    return this.#partialFrom(bytes, 0);
  }

  /**
   * `scan` over bytes: every occurrence (`onMatch(pattern, start, end)`, in no set order) and
   * where the longest unfinished prefix at the end starts.
   */
  find(bytes: Buffer, onMatch: (pattern: number, start: number, end: number) => void): number {
    if (!this.#windowed(bytes)) return this.scan(bytes.toString('latin1'), onMatch);
    this.#windowsFind(bytes, onMatch);
    // The state at the end is the longest suffix that is a prefix of a pattern: at most the
    // longest pattern, so reading from there from the root reaches the same state.
    return this.#tailFrom(bytes, bytes.length - this.#longest);
  }

  /** Whether the sampled windows read `bytes` (long enough that they save work). */
  #windowed(bytes: Buffer): boolean {
    return this.#windows !== null && bytes.length > 2 * this.#longest + 64;
  }

  /**
   * Every occurrence in `bytes` by the sampled windows, each reported once. Without
   * `onMatch`: stops at the first and returns true.
   */
  #windowsFind(
    bytes: Buffer,
    onMatch: ((pattern: number, start: number, end: number) => void) | undefined,
  ): boolean {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    let found = false;
    for (const windows of this.#windows!) {
      if (this.#windowsPass(bytes, view, windows, onMatch)) {
        if (onMatch === undefined) return true;
        found = true;
      }
    }
    return found;
  }

  /** One stride's pass of `#windowsFind`. */
  #windowsPass(
    bytes: Buffer,
    view: DataView,
    windows: Windows,
    onMatch: ((pattern: number, start: number, end: number) => void) | undefined,
  ): boolean {
    const { stride, filter, fShift, bucket, bShift, words, refs } = windows;
    const patterns = this.#patterns;
    const n = bytes.length;
    let found = false;
    for (let i = 0; i + WINDOW_Q <= n; i += stride) {
      const w = view.getInt32(i, true);
      const h = Math.imul(w, WINDOW_MIX);
      const f = h >>> fShift;
      if ((filter[f >>> 5]! & (1 << (f & 31))) === 0) continue;
      const b = h >>> bShift;
      for (let e = bucket[b]!, last = bucket[b + 1]!; e < last; e++) {
        if (words[e] !== w) continue;
        const ref = refs[e]!;
        const p = (ref / stride) | 0;
        const start = i - (ref - p * stride);
        const pattern = patterns[p]!;
        const end = start + pattern.length;
        if (start < 0 || end > n) continue;
        let k = 0;
        while (k < pattern.length && bytes[start + k] === pattern[k]) k++;
        if (k < pattern.length) continue;
        if (onMatch === undefined) return true;
        found = true;
        onMatch(p, start, end);
      }
    }
    return found;
  }

  /** The state after reading `bytes` from `from` (from the root), as `scan` returns it. */
  #tailFrom(bytes: Buffer, from: number): number {
    let s = 0;
    for (let i = Math.max(0, from); i < bytes.length; i++) s = this.step(s, bytes[i]!);
    return bytes.length - this.#depth[s]!;
  }

  /** `partialIfNone` reading `bytes` from `from` (the automaton starts at the root there). */
  #partialFrom(bytes: Buffer, from: number): number {
    const root = this.#root;
    const one = this.#one;
    const oneByte = this.#oneByte;
    const next = this.#next;
    const fail = this.#fail;
    const outHead = this.#outHead;
    const dict = this.#dict;
    let s = 0;
    for (let i = from; i < bytes.length; i++) {
      const b = bytes[i]!;
      for (;;) {
        if (s === 0) {
          s = root[b]!;
          break;
        }
        if (one[s] !== 0 && oneByte[s] === b) {
          s = one[s]!;
          break;
        }
        const t = next.get(s, b);
        if (t !== 0) {
          s = t;
          break;
        }
        s = fail[s]!;
      }
      if (s !== 0 && (outHead[s] !== -1 || dict[s] !== 0)) return -1;
    }
    return bytes.length - this.#depth[s]!;
  }

  scan(
    text: string,
    onMatch: (pattern: number, start: number, end: number) => void,
    states?: Int32Array,
  ): number {
    const root = this.#root;
    const one = this.#one;
    const oneByte = this.#oneByte;
    const next = this.#next;
    const fail = this.#fail;
    const outHead = this.#outHead;
    const outNext = this.#outNext;
    const dict = this.#dict;
    const lengths = this.#lengths;
    let s = 0;
    for (let i = 0; i < text.length; i++) {
      if (states !== undefined) states[i] = s;
      const b = text.charCodeAt(i) & 0xff;
      for (;;) {
        if (s === 0) {
          s = root[b]!;
          break;
        }
        if (one[s] !== 0 && oneByte[s] === b) {
          s = one[s]!;
          break;
        }
        const t = next.get(s, b);
        if (t !== 0) {
          s = t;
          break;
        }
        s = fail[s]!;
      }
      if (s === 0) continue;
      for (let o = outHead[s] !== -1 ? s : dict[s]!; o !== 0; o = dict[o]!) {
        for (let p = outHead[o]!; p !== -1; p = outNext[p]!) onMatch(p, i + 1 - lengths[p]!, i + 1);
      }
    }
    return text.length - this.#depth[s]!;
  }
}

/**
 * The base64 characters that depend only on `value` when it sits `offset` bytes (mod 3)
 * into a larger base64-encoded blob. Characters mixing neighbouring bytes are left out.
 */
function base64Fragment(value: Buffer, offset: number, alphabet: 'base64' | 'base64url'): string {
  const encoded = Buffer.concat([Buffer.alloc(offset), value]).toString(alphabet);
  const start = Math.ceil((offset * 8) / 6);
  const end = Math.floor(((offset + value.length) * 8) / 6);
  return encoded.slice(start, end);
}

/**
 * The replacement for a base64 fragment: the ticket framed by spaces so that the
 * characters kept around the match (which mix in neighbouring bytes) land on the spaces,
 * and padded so whatever follows in the blob keeps its alignment.
 */
function base64Replacement(
  ticket: string,
  secretLength: number,
  offset: number,
  alphabet: 'base64' | 'base64url',
) {
  const front = offset === 0 ? 0 : 1;
  let back = 1;
  while ((front + ticket.length + back - secretLength) % 3 !== 0) back++;
  const framed = Buffer.from(`${' '.repeat(front)}${ticket}${' '.repeat(back)}`);
  return Buffer.from(base64Fragment(framed, offset, alphabet));
}

/**
 * The forms in which a known secret is searched for, with their replacements. Escaped
 * forms (JSON `\u`, percent, HTML references, in any case and any mix) are not listed:
 * the scan decodes them (`decodeView`) and matches these forms on the decoded view.
 */
export function patternsOf(secret: KnownSecret): Pattern[] {
  const patterns: Pattern[] = [];
  if (secret.value.length < MIN_SCANNED_SECRET_BYTES) return patterns;
  const seen = new Set<string>();
  const add = (text: string | Buffer, replace: (ticket: string) => Buffer) => {
    const bytes = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
    if (bytes.length < MIN_SCANNED_SECRET_BYTES) return;
    const key = bytes.toString('latin1');
    if (seen.has(key)) return;
    seen.add(key);
    patterns.push({ secretId: secret.id, bytes, replace });
  };
  const plain = (ticket: string) => Buffer.from(ticket);
  add(secret.value, plain);
  // Lower-cased: HTTP clients and servers fold header names (undici hands them over in
  // lower case), so a secret echoed in a header name arrives folded.
  const lower = Buffer.from(secret.value.toString('latin1').toLowerCase(), 'latin1');
  if (!lower.equals(secret.value)) add(lower, plain);
  // Form encoding writes a space as `+` (every other escape is decoded by the scan).
  if (secret.value.includes(0x20)) {
    add(Buffer.from(secret.value.toString('latin1').replace(/ /g, '+'), 'latin1'), plain);
  }
  for (const alphabet of ['base64', 'base64url'] as const) {
    for (const offset of [0, 1, 2]) {
      add(base64Fragment(secret.value, offset, alphabet), (ticket) =>
        base64Replacement(ticket, secret.value.length, offset, alphabet),
      );
    }
  }
  return patterns;
}

/** One segment over `patterns`, built at once (small sets: a few secrets take microseconds). */
export function buildSegment(patterns: readonly Pattern[]): PatternSegment {
  return {
    patterns,
    automaton: new Automaton(patterns.map((p) => p.bytes)),
    maxLength: patterns.reduce((max, p) => Math.max(max, p.bytes.length), 0),
  };
}

/** One segment over `patterns`, built in slices with the event loop free in between. */
export async function buildSegmentInSlices(
  patterns: readonly Pattern[],
  sliceMs?: number,
): Promise<PatternSegment> {
  return {
    patterns,
    automaton: await Automaton.buildInSlices(
      patterns.map((p) => p.bytes),
      sliceMs,
    ),
    maxLength: patterns.reduce((max, p) => Math.max(max, p.bytes.length), 0),
  };
}

/** A set over `segments`, without the patterns of the `dropped` secrets. */
export function patternSet(
  segments: readonly PatternSegment[],
  dropped: ReadonlySet<string> = new Set(),
): PatternSet {
  const live = segments.filter((g) => !g.automaton.empty);
  let flat: readonly Pattern[] | null = null;
  const set: PatternSet = {
    segments: live,
    dropped,
    get patterns() {
      flat ??= live.flatMap((g) => g.patterns.filter((p) => !dropped.has(p.secretId)));
      return flat;
    },
    empty: live.length === 0,
    maxLength: live.reduce((max, g) => Math.max(max, g.maxLength), 0),
    mayContain: (bytes) => {
      if (live.length === 0) return false;
      // No escape character: no decoded view differs from the bytes, so one pass decides.
      if (!bytesMayHoldEscape(bytes)) {
        if (!live.some((g) => g.automaton.occursIn(bytes))) return false;
        if (dropped.size === 0) return true;
      }
      return findSpans(bytes, set, true).spans.length > 0;
    },
    occurrences: (bytes) => {
      const found: Array<{ start: number; end: number; secretId: string; segment: number; pattern: number }> =
        [];
      if (live.length === 0 || bytes.length === 0) return found;
      live.forEach((g, segment) => {
        if (!g.automaton.occursIn(bytes)) return;
        g.automaton.find(bytes, (pattern, start, end) => {
          const secretId = g.patterns[pattern]!.secretId;
          if (!dropped.has(secretId)) found.push({ start, end, secretId, segment, pattern });
        });
      });
      // Equal spans in the order the automaton's byte-at-a-time pass reported them: segment by
      // segment, and within one the pattern added last first (`markOccurrences` writes the
      // marks of a stretch in order of first occurrence).
      found.sort(
        (x, y) => x.start - y.start || x.end - y.end || x.segment - y.segment || y.pattern - x.pattern,
      );
      return found.map(({ start, end, secretId }) => ({ start, end, secretId }));
    },
  };
  return set;
}

/**
 * `bytes` with every occurrence of a known secret (on the bytes as they are) replaced by
 * `mark(secretId)`; overlapping occurrences are replaced as one stretch, by the marks of
 * their secrets in order of first occurrence, so no byte of either survives. Null when
 * there is none.
 */
export function markOccurrences(
  bytes: Buffer,
  set: PatternSet,
  mark: (secretId: string) => string,
): Buffer | null {
  const found = set.occurrences(bytes);
  if (found.length === 0) return null;
  const parts: Buffer[] = [];
  let at = 0;
  for (let k = 0; k < found.length; ) {
    const start = found[k]!.start;
    let end = found[k]!.end;
    const ids: string[] = [];
    for (; k < found.length && found[k]!.start < end; k++) {
      end = Math.max(end, found[k]!.end);
      if (!ids.includes(found[k]!.secretId)) ids.push(found[k]!.secretId);
    }
    parts.push(bytes.subarray(at, start), Buffer.from(ids.map(mark).join('')));
    at = end;
  }
  parts.push(bytes.subarray(at));
  return Buffer.concat(parts);
}

/** A set of one segment over every form of every secret in `secrets`. */
export function buildPatterns(secrets: readonly KnownSecret[]): PatternSet {
  return patternSet([buildSegment(secrets.flatMap((s) => patternsOf(s)))]);
}

const EMPTY: PatternSet = buildPatterns([]);

/** Up to this many patterns, a long text is searched with one native indexOf per pattern. */
const NATIVE_SEARCH_MAX_PATTERNS = 24;
const NATIVE_SEARCH_MIN_BYTES = 4096;

/** `mayHoldEscape` on bytes: a backslash, `%` or `&` (the characters every escape starts with). */
function bytesMayHoldEscape(bytes: Buffer): boolean {
  return bytes.indexOf(0x5c) !== -1 || bytes.indexOf(0x25) !== -1 || bytes.indexOf(0x26) !== -1;
}

/** Levels of nested escapes decoded (`%5Cu0041`: percent, then JSON). */
export const MAX_DECODE_LEVELS = 3;
/** Most bytes a stream may hold back (an overlap chain longer than this is refused). */
export const MAX_HELD_BYTES = 1024 * 1024;

interface Match {
  readonly start: number;
  readonly end: number;
  /** The pattern's place in the set (segment after segment): orders and dedupes matches. */
  readonly pattern: number;
  readonly ref: Pattern;
  /** Found on the raw bytes (0) or on a decoded view (1…). */
  readonly level: number;
}

/** One stretch of the original to replace: the union of overlapping matches. */
interface Span {
  start: number;
  end: number;
  readonly matches: Match[];
}

interface Analysis {
  readonly spans: Span[];
  /** Where the bytes that must be held back begin (`buf.length` when `final`). */
  readonly hold: number;
}

/** One decoded view of the input, with its maps back to the original. */
interface Level {
  readonly text: string;
  /** View unit -> original start / end (null: the view is the original). */
  readonly start: Int32Array | null;
  readonly end: Int32Array | null;
  /** Escapes decoded into this view: first view unit, units written, span in the level above. */
  readonly escapes: { unit: number; units: number; from: number; to: number }[];
}

/** A stretch of the chunk around escapes, with its decoded views (level 0: the raw text). */
interface Stretch {
  /** Where the stretch begins in the chunk (the views' maps are relative to it). */
  readonly offset: number;
  /** Whether it ends where the chunk ends. */
  readonly atEnd: boolean;
  readonly levels: Level[];
}

function escapesOf(local: { start: Int32Array; end: Int32Array }): Level['escapes'] {
  const out: Level['escapes'] = [];
  for (let u = 0; u < local.start.length; ) {
    const from = local.start[u]!;
    const to = local.end[u]!;
    let k = u + 1;
    while (k < local.start.length && local.start[k] === from) k++;
    if (to - from > 1) out.push({ unit: u, units: k - u, from, to });
    u = k;
  }
  return out;
}

/**
 * Every known secret in `buf`, on the raw bytes and on up to `MAX_DECODE_LEVELS`
 * decoded views, as spans of the original: overlapping matches are merged into one span
 * (adjacent ones are not: they share no byte). Unless `final`, also where the bytes that
 * could still be part of a match (an unfinished pattern or escape at the end) begin.
 *
 * Decoding is ambiguous where an escape's own characters could be the first or last
 * characters of a secret (`%` then `%ca…`: `%ca` is a byte, or `%` then `ca…`). For that,
 * at every escape the scan also forks: it reads the escape as plain characters, then the
 * decoded text after it, from the state the main scan had before the escape, until the
 * fork can only repeat what the main scan sees (bounded by the longest pattern).
 */
function findSpans(buf: Buffer, set: PatternSet, final: boolean, cuts = true): Analysis {
  if (set.empty || buf.length === 0) return { spans: [], hold: buf.length };
  const raw = buf.toString('latin1');
  // Where an escape cut by the chunk border begins (on the raw bytes or any view): the
  // rest waits for the next chunk, and what comes before is analysed once more without
  // it (once: a second pass must not cut again, or `%25%25%25…` would cost n² work).
  const check = cuts && !final;
  let cut = check ? unfinishedEscapeFrom(raw) : raw.length;
  if (cut < raw.length) {
    const inner = findSpans(buf.subarray(0, cut), set, false, false);
    return { spans: inner.spans, hold: Math.min(inner.hold, cut) };
  }
  const stretches: Stretch[] = [];
  // Decoded views only around escapes: elsewhere a view is the raw text, which the raw scan
  // reads. Binary output (a `%`, `\` or `&` every ~85 bytes, a decodable escape every few
  // KB) decodes a few hundred bytes per escape instead of all of it.
  for (const stretch of decodedStretches(raw, 'bytes', set.maxLength, MAX_DECODE_LEVELS)) {
    const { from, to } = stretch;
    const atEnd = to === raw.length;
    const levels: Level[] = [{ text: stretch.text, start: null, end: null, escapes: [] }];
    for (const view of stretch.views) {
      levels.push({ text: view.text, start: view.start, end: view.end, escapes: escapesOf(view.decoded) });
      // An unfinished escape can only be at the end of the stretch that ends the chunk.
      if (check && atEnd) {
        const at = unfinishedEscapeFrom(view.text);
        if (at < view.text.length) cut = Math.min(cut, from + view.start[at]!);
      }
    }
    stretches.push({ offset: from, atEnd, levels });
  }
  if (cut < raw.length) {
    // Decode again without the unfinished escape at the end: it may change the views.
    const inner = findSpans(buf.subarray(0, cut), set, false, false);
    return { spans: inner.spans, hold: Math.min(inner.hold, cut) };
  }
  const matches: Match[] = [];
  let hold = raw.length;
  let base = 0;
  for (const segment of set.segments) {
    scanSegment(segment, base);
    base += segment.patterns.length;
  }
  function scanSegment(segment: PatternSegment, base: number): void {
    const automaton = segment.automaton;
    const dropped = set.dropped;
    const add = (pattern: number, start: number, end: number, level: number): void => {
      const ref = segment.patterns[pattern]!;
      if (dropped.size > 0 && dropped.has(ref.secretId)) return;
      matches.push({ start, end, pattern: base + pattern, ref, level });
    };
    // The raw bytes, whole. Most chunks hold no pattern: then only where an unfinished one
    // may begin at the end is wanted (for a few patterns, one native search each).
    const none = automaton.partialIfNone(buf);
    const partial = none !== -1 ? none : automaton.find(buf, (pattern, s, e) => add(pattern, s, e, 0));
    if (!final && partial < raw.length) hold = Math.min(hold, partial);
    for (const stretch of stretches) scanStretch(stretch, automaton, add);
  }
  /** The decoded views of one stretch (its level 0 is the raw text, scanned above). */
  function scanStretch(
    stretch: Stretch,
    automaton: Automaton,
    add: (pattern: number, start: number, end: number, level: number) => void,
  ): void {
    const { offset, atEnd, levels } = stretch;
    // Held bytes come only from the stretch that ends the chunk: anywhere else, a match
    // still open at the stretch's end would have to be longer than the margin around
    // every escape (longer than any pattern).
    const holds = !final && atEnd;
    for (let level = 1; level < levels.length; level++) {
      const view = levels[level]!;
      const states = view.escapes.length > 0 ? new Int32Array(view.text.length) : undefined;
      const unitStart = (u: number) => offset + view.start![u]!;
      const unitEnd = (u: number) => offset + view.end![u]!;
      const partial = automaton.scan(
        view.text,
        (pattern, s, e) => add(pattern, unitStart(s), unitEnd(e - 1), level),
        states,
      );
      if (holds && partial < view.text.length) hold = Math.min(hold, unitStart(partial));
      if (states === undefined) continue;
      const above = levels[level - 1]!;
      const aboveStart = (u: number) => offset + (above.start === null ? u : above.start[u]!);
      const aboveEnd = (u: number) => offset + (above.end === null ? u + 1 : above.end[u]!);
      // Stream of a fork: the view before the escape (negative indices), the escape's own
      // characters, then the view after it.
      const streamAt = (esc: Level['escapes'][number], i: number, edge: 'start' | 'end'): number => {
        const literal = esc.to - esc.from;
        if (i < 0) return edge === 'start' ? unitStart(esc.unit + i) : unitEnd(esc.unit + i);
        if (i < literal) return edge === 'start' ? aboveStart(esc.from + i) : aboveEnd(esc.from + i);
        const u = esc.unit + esc.units + i - literal;
        return edge === 'start' ? unitStart(u) : unitEnd(u);
      };
      for (const esc of view.escapes) {
        const literal = esc.to - esc.from;
        const after = esc.unit + esc.units;
        let s = states[esc.unit]!;
        const length = literal + view.text.length - after;
        let i = 0;
        for (; i < length; i++) {
          const b =
            i < literal
              ? above.text.charCodeAt(esc.from + i) & 0xff
              : view.text.charCodeAt(after + i - literal) & 0xff;
          s = automaton.step(s, b);
          if (automaton.hasOutput(s)) {
            const at = i;
            automaton.ends(s, (pattern, n) =>
              add(pattern, streamAt(esc, at + 1 - n, 'start'), streamAt(esc, at, 'end'), level),
            );
          }
          // Past the escape, and every match still possible starts after it: the main scan sees it.
          if (i >= literal && automaton.depth(s) <= i - literal + 1) break;
          if (i === literal - 1 && s === 0) break;
        }
        if (holds && i === length && automaton.depth(s) > 0) {
          hold = Math.min(hold, streamAt(esc, length - automaton.depth(s), 'start'));
        }
      }
    }
  }
  if (matches.length > 1)
    matches.sort(
      (a, b) =>
        a.start - b.start ||
        b.end - a.end ||
        (a.ref.secretId < b.ref.secretId ? -1 : a.ref.secretId > b.ref.secretId ? 1 : 0) ||
        a.level - b.level ||
        a.pattern - b.pattern,
    );
  const spans: Span[] = [];
  let previous: Match | undefined;
  for (const match of matches) {
    // The same occurrence of the same secret seen again: on a decoded view where nothing in
    // it was escaped, or in a second segment (a secret indexed alone while a bulk segment
    // holding it was built).
    if (
      previous !== undefined &&
      previous.start === match.start &&
      previous.end === match.end &&
      previous.ref.secretId === match.ref.secretId
    )
      continue;
    previous = match;
    const last = spans.at(-1);
    if (last !== undefined && match.start < last.end) {
      last.end = Math.max(last.end, match.end);
      last.matches.push(match);
    } else {
      spans.push({ start: match.start, end: match.end, matches: [match] });
    }
  }
  // A span reaching into the held bytes may still grow: hold it whole.
  for (const span of spans) {
    if (span.end > hold) {
      hold = Math.min(hold, span.start);
      break;
    }
  }
  return { spans: spans.filter((s) => s.end <= hold), hold };
}

/**
 * A streaming scanner over one pattern set. Every occurrence of every known secret is
 * replaced, on the raw bytes and on the decoded views; overlapping occurrences (of one
 * secret or several) are replaced as one span, so no byte of any of them survives:
 *
 * - a span of one match on the raw bytes becomes that pattern's replacement (the ticket;
 *   for a base64 fragment, the ticket in base64 keeping the blob's alignment);
 * - any other span (several overlapping secrets, or an escaped form) becomes the tickets
 *   of the secrets in it, in order of first occurrence, written one after the other.
 *
 * Memory is bounded: besides the chunk in hand it keeps only what could still be part
 * of a match (an unfinished pattern, escape or overlap chain), at most `MAX_HELD_BYTES`.
 */
export class PatternScan implements ResponseScan {
  readonly #set: PatternSet;
  readonly #context: InspectionContext;
  readonly #tickets = new Map<string, Promise<string>>();
  readonly #findings = new Map<string, number>();
  #tail: Buffer = Buffer.alloc(0);

  constructor(set: PatternSet, context: InspectionContext) {
    this.#set = set;
    this.#context = context;
  }

  get findings(): ReadonlyMap<string, number> {
    return this.#findings;
  }

  #ticketFor(secretId: string): Promise<string> {
    let ticket = this.#tickets.get(secretId);
    if (ticket === undefined) {
      ticket = this.#context.reissue(secretId);
      this.#tickets.set(secretId, ticket);
    }
    return ticket;
  }

  async #replacement(span: Span): Promise<Buffer> {
    const ids: string[] = [];
    for (const match of span.matches) {
      const id = match.ref.secretId;
      this.#findings.set(id, (this.#findings.get(id) ?? 0) + 1);
      if (!ids.includes(id)) ids.push(id);
    }
    const only = span.matches.length === 1 ? span.matches[0]! : undefined;
    if (only !== undefined && only.level === 0) {
      return only.ref.replace(await this.#ticketFor(only.ref.secretId));
    }
    const tickets = await Promise.all(ids.map((id) => this.#ticketFor(id)));
    return Buffer.from(tickets.join(''), 'latin1');
  }

  async #rewrite(buf: Buffer, spans: readonly Span[], until: number): Promise<Buffer> {
    if (spans.length === 0) return until === buf.length ? buf : buf.subarray(0, until);
    const parts: Buffer[] = [];
    let at = 0;
    for (const span of spans) {
      parts.push(buf.subarray(at, span.start));
      parts.push(await this.#replacement(span));
      at = span.end;
    }
    parts.push(buf.subarray(at, until));
    return Buffer.concat(parts);
  }

  async #scan(buf: Buffer, final: boolean): Promise<{ out: Buffer; rest: Buffer }> {
    const set = this.#set;
    if (set.empty) return { out: buf, rest: Buffer.alloc(0) };
    if (!bytesMayHoldEscape(buf)) {
      // No escape character: no decoded view differs from the bytes and no escape is cut
      // at the end, so one allocation-free pass per segment decides (the common case:
      // nothing found).
      let partial = buf.length;
      for (const segment of set.segments) {
        const p = segment.automaton.partialIfNone(buf);
        if (p === -1) {
          partial = -1;
          break;
        }
        partial = Math.min(partial, p);
      }
      if (partial !== -1) {
        const hold = final ? buf.length : partial;
        return { out: hold === buf.length ? buf : buf.subarray(0, hold), rest: buf.subarray(hold) };
      }
    }
    const { spans, hold } = findSpans(buf, set, final);
    if (buf.length - hold > MAX_HELD_BYTES) {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_INSPECTION_FAILED',
        `a run of overlapping secret matches is longer than ${MAX_HELD_BYTES} bytes`,
      );
    }
    return { out: await this.#rewrite(buf, spans, hold), rest: buf.subarray(hold) };
  }

  async header(value: string): Promise<string> {
    const { out } = await this.#scan(Buffer.from(value, 'latin1'), true);
    return out.toString('latin1');
  }

  /**
   * The block joined by line feeds (which no header name or value holds) and scanned once.
   * A match inside one value is found and replaced exactly as `header` would; a match that
   * reaches across a line feed (a secret that itself holds one) removes it, so the block no
   * longer splits into as many parts, and then each value is scanned alone, as before.
   */
  async headers(values: readonly string[]): Promise<string[]> {
    if (this.#set.empty || values.length === 0) return [...values];
    const joined = values.some((v) => v.includes('\n')) ? null : values.join('\n');
    if (joined === null) return this.#eachHeader(values);
    const { out } = await this.#scan(Buffer.from(joined, 'latin1'), true);
    if (out.length === joined.length && out.toString('latin1') === joined) return [...values];
    const parts = out.toString('latin1').split('\n');
    return parts.length === values.length ? parts : this.#eachHeader(values);
  }

  async #eachHeader(values: readonly string[]): Promise<string[]> {
    const out: string[] = [];
    for (const v of values) out.push(await this.header(v));
    return out;
  }

  async push(chunk: Buffer): Promise<Buffer> {
    const buf = this.#tail.length === 0 ? chunk : Buffer.concat([this.#tail, chunk]);
    const { out, rest } = await this.#scan(buf, false);
    // Copy the tail: it must not pin the (possibly large) chunk it was cut from.
    this.#tail = Buffer.from(rest);
    return out;
  }

  async end(): Promise<Buffer> {
    const { out } = await this.#scan(this.#tail, true);
    this.#tail = Buffer.alloc(0);
    return out;
  }
}

/**
 * The known-secret inspector: every live vault secret, in every encoding listed in
 * `buildPatterns`. Patterns are rebuilt only when the vault's list changes.
 */
export function createKnownSecretInspector(
  knownSecrets: () => Promise<ReadonlyArray<{ id: string; value: { reveal(): Buffer } }>>,
): ResponseInspector {
  let cachedFor: unknown = null;
  let cached: PatternSet = EMPTY;
  return {
    name: 'known-secrets',
    async begin(context) {
      const secrets = await knownSecrets();
      if (secrets !== cachedFor) {
        cached = buildPatterns(secrets.map((s) => ({ id: s.id, value: s.value.reveal() })));
        cachedFor = secrets;
      }
      return new PatternScan(cached, context);
    },
  };
}
