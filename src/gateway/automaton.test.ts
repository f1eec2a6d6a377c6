import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createKeywordIndex } from '../detect/keyword-index.js';
import { Automaton, buildSegment, Children, markOccurrences, patternSet, patternsOf } from './inspector.js';

// Differential tests of the two Aho-Corasick automata against the obvious quadratic
// search: every occurrence of every pattern, overlapping and nested ones included, over
// small alphabets (so patterns share prefixes and suffixes and fail links are exercised).

/** Every (pattern, start, end) by indexOf at every position. */
function naive(text: Buffer, patterns: readonly Buffer[]): string[] {
  const out: string[] = [];
  patterns.forEach((p, index) => {
    for (let at = text.indexOf(p); at !== -1; at = text.indexOf(p, at + 1))
      out.push(`${index}:${at}:${at + p.length}`);
  });
  return out.sort();
}

/** The longest suffix of `text` that is a proper prefix of some pattern (what a stream holds back). */
function naivePartial(text: Buffer, patterns: readonly Buffer[]): number {
  for (let start = 0; start < text.length; start++) {
    const tail = text.subarray(start);
    if (patterns.some((p) => p.length > tail.length && p.subarray(0, tail.length).equals(tail))) return start;
  }
  return text.length;
}

const small = (max: number) =>
  fc.uint8Array({ minLength: 1, maxLength: max }).map((a) => Buffer.from(a.map((b) => 0x61 + (b % 3))));
const bytes = (max: number) =>
  fc.uint8Array({ minLength: 0, maxLength: max }).map((a) => Buffer.from(a.map((b) => 0x61 + (b % 3))));

describe('Automaton (known-secret patterns)', () => {
  it('finds exactly what indexOf finds, and the same held-back tail', () => {
    fc.assert(
      fc.property(fc.array(small(6), { minLength: 1, maxLength: 8 }), bytes(60), (patterns, text) => {
        const automaton = new Automaton(patterns);
        const found: string[] = [];
        const partial = automaton.scan(text.toString('latin1'), (p, s, e) => found.push(`${p}:${s}:${e}`));
        const expected = naive(text, patterns);
        expect(found.sort()).toEqual(expected);
        // The allocation-free passes agree with the full scan.
        expect(automaton.occursIn(text)).toBe(expected.length > 0);
        const none = automaton.partialIfNone(text);
        if (expected.length > 0) expect(none).toBe(-1);
        else {
          expect(none).toBe(partial);
          expect(none).toBe(naivePartial(text, patterns));
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('handles every byte value, duplicate patterns and a pattern inside another', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 6 }),
        fc.uint8Array({ maxLength: 80 }),
        (raw, body) => {
          const patterns = [...raw, raw[0]!, raw[0]!.subarray(0, 1)].map((p) => Buffer.from(p));
          // Plant each pattern once so most runs have matches.
          const text = Buffer.concat([Buffer.from(body), ...patterns, Buffer.from(body)]);
          const automaton = new Automaton(patterns);
          const found: string[] = [];
          automaton.scan(text.toString('latin1'), (p, s, e) => found.push(`${p}:${s}:${e}`));
          expect(found.sort()).toEqual(naive(text, patterns));
          expect(automaton.occursIn(text)).toBe(true);
        },
      ),
      { numRuns: 1000 },
    );
  });
  it('long texts (the native search per pattern) agree with the byte-at-a-time pass', () => {
    fc.assert(
      fc.property(
        fc.array(small(6), { minLength: 1, maxLength: 8 }),
        fc.integer({ min: 4096, max: 6000 }),
        fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        fc.boolean(),
        (patterns, length, seed, plant) => {
          // Filler that avoids the patterns' alphabet except near the end, where a
          // prefix of a pattern (or a whole one) may stand.
          const text = Buffer.alloc(length, 0x7a);
          let x = seed;
          for (let i = length - 12; i < length; i++) {
            x = (x * 1103515245 + 12345) >>> 0;
            text[i] = 0x61 + (x % 3);
          }
          if (plant) patterns[0]!.copy(text, (seed % (length - 20)) | 0);
          const automaton = new Automaton(patterns);
          const expected = naive(text, patterns);
          const none = automaton.partialIfNone(text);
          if (expected.length > 0) expect(none).toBe(-1);
          else expect(none).toBe(naivePartial(text, patterns));
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe("Children (the trie's further children)", () => {
  it('answers as a Map keyed by state and byte, through growth, for states past 2^24', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.tuple(fc.oneof(fc.nat({ max: 40 }), fc.nat({ max: 2 ** 31 - 1 })), fc.nat({ max: 255 })),
          {
            maxLength: 3000,
          },
        ),
        (pairs) => {
          const table = new Children();
          const reference = new Map<string, number>();
          for (const [s, b] of pairs) {
            const key = `${s}:${b}`;
            if (!reference.has(key)) {
              reference.set(key, reference.size + 1);
              table.set(s, b, reference.size);
            }
          }
          expect(table.size).toBe(reference.size);
          for (const [s, b] of pairs) {
            expect(table.get(s, b)).toBe(reference.get(`${s}:${b}`));
            expect(table.get(s, (b + 1) % 256)).toBe(reference.get(`${s}:${(b + 1) % 256}`) ?? 0);
            expect(table.get(s + 1, b)).toBe(reference.get(`${s + 1}:${b}`) ?? 0);
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('Automaton sampled windows (the raw pass at many secrets)', () => {
  // `find` and `partialIfNone` read texts longer than twice the longest pattern through the
  // sampled-window index (patterns of 6 bytes or more): a window every 3 bytes, each pattern
  // indexed at offsets 0-2. The references: indexOf at every position, and the
  // byte-at-a-time `scan` for the held-back tail.
  const pattern = (alphabet: number) =>
    fc
      .uint8Array({ minLength: 6, maxLength: 40 })
      .map((a) => Buffer.from(alphabet === 256 ? a : a.map((b) => 0x61 + (b % alphabet))));
  const setup = fc
    .tuple(
      fc.constantFrom(2, 3, 256),
      fc.integer({ min: 1, max: 40 }),
      fc.array(fc.tuple(fc.nat({ max: 39 }), fc.nat()), { maxLength: 12 }),
      fc.nat({ max: 600 }),
      fc.nat(),
    )
    .chain(([alphabet, count, plants, length, seed]) =>
      fc.tuple(
        fc.array(pattern(alphabet), { minLength: count, maxLength: count }),
        fc.constant({ alphabet, plants, length, seed }),
        fc.nat({ max: 45 }),
      ),
    )
    .map(([patterns, { alphabet, plants, length, seed }, tail]) => {
      // Filler in the patterns' alphabet, patterns planted anywhere (at the start, overlapping,
      // at the very end), and a prefix of one of them (or the whole) at the end.
      let x = seed;
      const next = () => {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        return x >>> 8;
      };
      const text = Buffer.from(
        Array.from({ length: 200 + length }, () =>
          alphabet === 256 ? next() & 0xff : 0x61 + (next() % alphabet),
        ),
      );
      for (const [which, at] of plants) {
        const p = patterns[which % patterns.length]!;
        p.copy(text, at % (text.length - p.length + 1));
      }
      const last = patterns[next() % patterns.length]!;
      const end = last.subarray(0, Math.min(last.length, tail));
      return { patterns, text: Buffer.concat([text, end]) };
    });

  it('find reports every occurrence once, and the same held-back tail as scan', () => {
    fc.assert(
      fc.property(setup, ({ patterns, text }) => {
        const automaton = new Automaton(patterns);
        const found: string[] = [];
        const partial = automaton.find(text, (p, s, e) => found.push(`${p}:${s}:${e}`));
        expect(found.sort()).toEqual(naive(text, patterns));
        expect(partial).toBe(automaton.scan(text.toString('latin1'), () => undefined));
        const none = automaton.partialIfNone(text);
        if (found.length > 0) expect(none).toBe(-1);
        else expect(none).toBe(naivePartial(text, patterns));
      }),
      { numRuns: 1500 },
    );
  });

  it('finds a pattern at the start and at the end of a long text, among 30 others', () => {
    const patterns = Array.from({ length: 30 }, (_, i) => Buffer.from(`pattern-${i}-${'x'.repeat(i)}`));
    const text = Buffer.concat([patterns[7]!, Buffer.alloc(5000, 0x2e), patterns[29]!]);
    const automaton = new Automaton(patterns);
    const found: string[] = [];
    expect(automaton.find(text, (p, s, e) => found.push(`${p}:${s}:${e}`))).toBe(
      automaton.scan(text.toString('latin1'), () => undefined),
    );
    expect(found.sort()).toEqual(naive(text, patterns));
    expect(automaton.partialIfNone(text)).toBe(-1);
    // Without the first, and the last cut by one byte: nothing found, that prefix held back.
    expect(automaton.partialIfNone(text.subarray(patterns[7]!.length, text.length - 1))).toBe(5000);
  });
});

describe('PatternSet.occurrences over the sampled windows', () => {
  // What it returned before: each segment's byte-at-a-time scan, in segment order, sorted by
  // start and end (stably: equal spans in the order the automaton reported them).
  function previously(set: ReturnType<typeof patternSet>, bytes: Buffer) {
    const out: Array<{ start: number; end: number; secretId: string }> = [];
    for (const g of set.segments) {
      g.automaton.scan(bytes.toString('latin1'), (p, start, end) => {
        const secretId = g.patterns[p]!.secretId;
        if (!set.dropped.has(secretId)) out.push({ start, end, secretId });
      });
    }
    return out.sort((x, y) => x.start - y.start || x.end - y.end);
  }

  /** What markOccurrences wrote from those occurrences. */
  function marked(text: Buffer, found: ReturnType<typeof previously>): string | undefined {
    if (found.length === 0) return undefined;
    let out = '';
    let at = 0;
    for (let k = 0; k < found.length; ) {
      let end = found[k]!.end;
      const ids: string[] = [];
      out += text.toString('latin1', at, found[k]!.start);
      for (; k < found.length && found[k]!.start < end; k++) {
        end = Math.max(end, found[k]!.end);
        if (!ids.includes(found[k]!.secretId)) ids.push(found[k]!.secretId);
      }
      out += ids.map((s) => `<${s}>`).join('');
      at = end;
    }
    return out + text.toString('latin1', at);
  }

  it('gives the same occurrences in the same order, equal values under several ids included', () => {
    const value = fc
      .uint8Array({ minLength: 6, maxLength: 14 })
      .map((a) => Buffer.from(a.map((b) => 0x61 + (b % 2))));
    fc.assert(
      fc.property(
        fc.array(fc.array(value, { minLength: 1, maxLength: 5 }), { minLength: 1, maxLength: 3 }),
        fc.array(fc.tuple(fc.nat(), fc.nat()), { maxLength: 10 }),
        fc.nat({ max: 400 }),
        fc.boolean(),
        (groups, plants, length, drop) => {
          let id = 0;
          // A value repeated under another id, in the same segment and in the next one.
          const segments = groups.map((values, g) =>
            buildSegment(
              [...values, values[0]!, ...(g > 0 ? [groups[g - 1]![0]!] : [])].flatMap((v) =>
                patternsOf({ id: `s${id++ % 7}`, value: v }),
              ),
            ),
          );
          const set = patternSet(segments, drop ? new Set(['s1']) : new Set());
          const all = groups.flat();
          const text = Buffer.alloc(200 + length, 0x62);
          for (const [which, at] of plants) {
            const v = all[which % all.length]!;
            v.copy(text, at % (text.length - v.length + 1));
          }
          expect(set.occurrences(text)).toEqual(previously(set, text));
          expect(markOccurrences(text, set, (s) => `<${s}>`)?.toString('latin1')).toBe(
            marked(text, previously(set, text)),
          );
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('KeywordIndex (detector keywords)', () => {
  it('finds every keyword occurrence case-insensitively, on strings and on bytes', () => {
    const keyword = fc
      .string({ unit: fc.constantFrom('a', 'b', 'c', '_', '-'), minLength: 1, maxLength: 5 })
      .map((k) => k.toLowerCase());
    fc.assert(
      fc.property(
        fc.uniqueArray(keyword, { minLength: 1, maxLength: 8 }),
        fc.string({ unit: fc.constantFrom('a', 'b', 'c', 'A', 'B', '_', '-', 'x', 'é'), maxLength: 60 }),
        (keywords, text) => {
          const index = createKeywordIndex(keywords);
          const lower = text.toLowerCase();
          const expected: string[] = [];
          keywords.forEach((k, i) => {
            for (let at = lower.indexOf(k); at !== -1; at = lower.indexOf(k, at + 1))
              expected.push(`${i}:${at + k.length}`);
          });
          const read = (input: string | Buffer): string[] => {
            const hits = index.find(input);
            const out: string[] = [];
            for (let i = 0; i < hits.count; i++) out.push(`${hits.keyword[i]}:${hits.end[i]}`);
            return out.sort();
          };
          expect(read(text)).toEqual(expected.sort());
          expect(index.has(text)).toBe(expected.length > 0);
          // Bytes: latin1 of an ASCII-only text has the same offsets.
          if (/^[\x00-\x7f]*$/.test(text)) {
            expect(read(Buffer.from(text, 'latin1'))).toEqual(expected.sort());
            expect(index.has(Buffer.from(text, 'latin1'))).toBe(expected.length > 0);
          }
          // Hits are reused buffers: a second call does not disturb a first call's count.
          expect(index.find(text).count).toBe(expected.length);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
