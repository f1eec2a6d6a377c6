/**
 * One pass over the text that finds every occurrence of every keyword, case-insensitively:
 * an Aho-Corasick automaton compiled to a dense DFA over a small character-class alphabet.
 * Characters that occur in no keyword share class 0, so the table stays small
 * (states x 64 classes) and the inner loop is one table lookup per character.
 */

const CLASS_BITS = 6;
const MAX_CLASSES = 1 << CLASS_BITS;

export interface KeywordHits {
  /** Keyword index of each hit, in order of the hit's end offset. */
  readonly keyword: Int32Array;
  /** End offset (exclusive) of each hit. */
  readonly end: Int32Array;
  readonly count: number;
}

export interface KeywordIndex {
  readonly keywords: readonly string[];
  /**
   * Works on a string (UTF-16 units) or a Buffer (bytes); offsets are in the same units.
   * The hits are views of buffers this index reuses: read them before the next call.
   */
  find(input: string | Buffer): KeywordHits;
  /** Whether any keyword occurs (stops at the first; allocates nothing). */
  has(input: string | Buffer): boolean;
}

export function createKeywordIndex(keywords: readonly string[]): KeywordIndex {
  const classOf = new Uint8Array(128);
  let classes = 1;
  for (const kw of keywords) {
    if (kw.length === 0) throw new Error('empty keyword');
    for (let i = 0; i < kw.length; i++) {
      const c = kw.charCodeAt(i);
      if (c >= 128) throw new Error(`keyword "${kw}" is not ASCII`);
      if (c >= 65 && c <= 90) throw new Error(`keyword "${kw}" is not lower-case`);
      if (classOf[c] === 0) {
        if (classes === MAX_CLASSES) throw new Error('too many distinct keyword characters');
        classOf[c] = classes++;
      }
    }
  }
  // Upper-case letters share the class of their lower-case form.
  for (let c = 65; c <= 90; c++) classOf[c] = classOf[c + 32]!;

  // Trie.
  const goto: number[][] = [new Array<number>(MAX_CLASSES).fill(-1)];
  const outputs: number[][] = [[]];
  keywords.forEach((kw, k) => {
    let s = 0;
    for (let i = 0; i < kw.length; i++) {
      const cls = classOf[kw.charCodeAt(i)]!;
      let next = goto[s]![cls]!;
      if (next === -1) {
        next = goto.length;
        goto.push(new Array<number>(MAX_CLASSES).fill(-1));
        outputs.push([]);
        goto[s]![cls] = next;
      }
      s = next;
    }
    outputs[s]!.push(k);
  });

  // Failure links (BFS) and the dense DFA.
  const states = goto.length;
  const delta = new Int32Array(states * MAX_CLASSES);
  const fail = new Int32Array(states);
  const queue: number[] = [];
  for (let cls = 0; cls < MAX_CLASSES; cls++) {
    const next = goto[0]![cls]!;
    if (next === -1 || cls === 0) {
      delta[cls] = 0;
    } else {
      delta[cls] = next;
      fail[next] = 0;
      queue.push(next);
    }
  }
  for (let head = 0; head < queue.length; head++) {
    const s = queue[head]!;
    outputs[s]!.push(...outputs[fail[s]!]!);
    for (let cls = 0; cls < MAX_CLASSES; cls++) {
      const next = goto[s]![cls]!;
      if (next === -1 || cls === 0) {
        delta[s * MAX_CLASSES + cls] = delta[fail[s]! * MAX_CLASSES + cls]!;
      } else {
        delta[s * MAX_CLASSES + cls] = next;
        fail[next] = delta[fail[s]! * MAX_CLASSES + cls]!;
        queue.push(next);
      }
    }
  }
  // Class 0 (a character in no keyword) always returns to the root.
  for (let s = 0; s < states; s++) delta[s * MAX_CLASSES] = 0;

  // Renumber: states without output first, so "has output" is one comparison (s >= firstOut);
  // within each group in breadth-first order, so the shallow states ordinary text stays in
  // share cache lines.
  const bfs = [0, ...queue];
  const order: number[] = [];
  for (const st of bfs) if (outputs[st]!.length === 0) order.push(st);
  const firstOut = order.length;
  for (const st of bfs) if (outputs[st]!.length !== 0) order.push(st);
  const newId = new Int32Array(states);
  order.forEach((old, i) => {
    newId[old] = i;
  });
  // 16-bit entries when the states fit: half the table, so more of it stays in cache.
  const table =
    states <= 0x10000 ? new Uint16Array(states * MAX_CLASSES) : new Int32Array(states * MAX_CLASSES);
  for (let old = 0; old < states; old++) {
    const row = newId[old]! * MAX_CLASSES;
    for (let cls = 0; cls < MAX_CLASSES; cls++) table[row + cls] = newId[delta[old * MAX_CLASSES + cls]!]!;
  }
  const outStart = new Int32Array(states + 1);
  const flat: number[] = [];
  for (let i = 0; i < states; i++) {
    outStart[i] = flat.length;
    flat.push(...new Set(outputs[order[i]!]));
  }
  outStart[states] = flat.length;
  const outList = Int32Array.from(flat);
  // Byte classes for Buffer input (bytes >= 128 are in no keyword).
  const byteClass = new Uint8Array(256);
  byteClass.set(classOf);

  const dfa: Dfa = {
    table,
    classOf,
    byteClass,
    firstOut,
    outStart,
    outList,
    kwArr: new Int32Array(64),
    endArr: new Int32Array(64),
  };
  return {
    keywords,
    find: (input) => (typeof input === 'string' ? findInString(dfa, input) : findInBytes(dfa, input)),
    has: (input) => (typeof input === 'string' ? hasInString(dfa, input) : hasInBytes(dfa, input)),
  };
}

/**
 * The automaton's tables. The passes below are module functions that read them into locals:
 * as closures made anew for each index (the detector has several), the same loops ran at
 * half the speed (one shared, unspecialized compilation reloading every table from its
 * context on each character, and the hit recorder a call that was not inlined).
 */
interface Dfa {
  readonly table: Uint16Array | Int32Array;
  readonly classOf: Uint8Array;
  readonly byteClass: Uint8Array;
  /** States from here on have output. */
  readonly firstOut: number;
  readonly outStart: Int32Array;
  readonly outList: Int32Array;
  /** Hit buffers reused across calls (find is synchronous): allocating on every call cost more than the pass on a short input. */
  kwArr: Int32Array;
  endArr: Int32Array;
}

/** Append state `st`'s keywords, ending at `end`, after the first `count` hits; returns the new count. */
function recordHits(dfa: Dfa, st: number, end: number, count: number): number {
  const outStart = dfa.outStart;
  const outList = dfa.outList;
  let n = count;
  for (let o = outStart[st]!; o < outStart[st + 1]!; o++) {
    if (n === dfa.kwArr.length) {
      const keyword = new Int32Array(n * 2);
      keyword.set(dfa.kwArr);
      dfa.kwArr = keyword;
      const ends = new Int32Array(n * 2);
      ends.set(dfa.endArr);
      dfa.endArr = ends;
    }
    dfa.kwArr[n] = outList[o]!;
    dfa.endArr[n] = end;
    n++;
  }
  return n;
}

function findInBytes(dfa: Dfa, input: Buffer): KeywordHits {
  const table = dfa.table;
  const byteClass = dfa.byteClass;
  const firstOut = dfa.firstOut;
  const n = input.length;
  let count = 0;
  let st = 0;
  for (let i = 0; i < n; i++) {
    // The inner loop only reads (no call, no store): the compiler keeps the tables in registers.
    for (; i < n; i++) {
      st = table[(st << CLASS_BITS) | byteClass[input[i]!]!]!;
      if (st >= firstOut) break;
    }
    if (i === n) break;
    count = recordHits(dfa, st, i + 1, count);
  }
  return { keyword: dfa.kwArr, end: dfa.endArr, count };
}

function findInString(dfa: Dfa, input: string): KeywordHits {
  const table = dfa.table;
  const classOf = dfa.classOf;
  const firstOut = dfa.firstOut;
  const n = input.length;
  let count = 0;
  let st = 0;
  for (let i = 0; i < n; i++) {
    for (; i < n; i++) {
      const c = input.charCodeAt(i);
      st = table[(st << CLASS_BITS) | (c < 128 ? classOf[c]! : 0)]!;
      if (st >= firstOut) break;
    }
    if (i === n) break;
    count = recordHits(dfa, st, i + 1, count);
  }
  return { keyword: dfa.kwArr, end: dfa.endArr, count };
}

function hasInBytes(dfa: Dfa, input: Buffer): boolean {
  const table = dfa.table;
  const byteClass = dfa.byteClass;
  const firstOut = dfa.firstOut;
  const n = input.length;
  let st = 0;
  for (let i = 0; i < n; i++) {
    st = table[(st << CLASS_BITS) | byteClass[input[i]!]!]!;
    if (st >= firstOut) return true;
  }
  return false;
}

function hasInString(dfa: Dfa, input: string): boolean {
  const table = dfa.table;
  const classOf = dfa.classOf;
  const firstOut = dfa.firstOut;
  const n = input.length;
  let st = 0;
  for (let i = 0; i < n; i++) {
    const c = input.charCodeAt(i);
    st = table[(st << CLASS_BITS) | (c < 128 ? classOf[c]! : 0)]!;
    if (st >= firstOut) return true;
  }
  return false;
}
