import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createKeywordIndex } from '../detect/keyword-index.js';
import { Automaton } from './inspector.js';

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
