import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createDetector } from '../../src/detect/detector.js';
import { createKeywordIndex } from '../../src/detect/keyword-index.js';
import { createKnownSecretMatcher } from '../../src/detect/known-secrets.js';
import { BUILTIN_RULES } from '../../src/detect/rules/index.js';
import type { Finding } from '../../src/detect/types.js';
import { shannonEntropy } from '../../src/detect/validators.js';
import { loadCorpus, materialize } from './corpus.js';

// Differential tests for the detection fast paths (issue 16). Each compares a fast path with
// the behaviour it replaced, on random and adversarial inputs, so a secret the fast path
// misses (or adds) fails here:
// - scan(Buffer) decodes latin1 only around keyword hits; the reference is scan(Buffer) on
//   the whole-text path (taken when a detector holds known secrets: one that never occurs),
//   which decodes all of it, as scan(Buffer) did before. (Not scan(latin1 string): a value read
//   from bytes must also be UTF-8, ADR 0030, which a string scan cannot know.)
// - shannonEntropy counts in a reused array; the reference is the Map version it replaced
//   (same summation order, so the same float to the last bit: thresholds compare equal).
// - the keyword automaton (renumbered states, 16-bit table); the reference is a naive search.

const detector = createDetector();
const withPii = createDetector({ pii: true });

/** The same rules on the whole-text path: a known secret (that never occurs) makes scan(Buffer) decode everything. */
function wholeTextPath(options: { pii?: boolean } = {}) {
  const known = createKnownSecretMatcher();
  known.add('sec_never', randomBytes(32));
  return createDetector({ ...options, knownSecrets: known });
}
const wholeText = new Map([
  [detector, wholeTextPath()],
  [withPii, wholeTextPath({ pii: true })],
]);

const docs = loadCorpus()
  .filter((r) => r.kind !== 'known')
  .map((r) => materialize(r).text);

function bytesOf(text: string): Buffer {
  // Corpus text may hold non-latin1 characters: encode as UTF-8 bytes, the way a response carries them.
  return Buffer.from(text, 'utf8');
}

/** What scan(buf) returned before: the findings of the whole text, decoded at once. */
function reference(d: typeof detector, buf: Buffer): Finding[] {
  return wholeText.get(d)!.scan(buf);
}

function expectSame(buf: Buffer): void {
  expect(detector.scan(buf)).toEqual(reference(detector, buf));
  expect(withPii.scan(buf)).toEqual(reference(withPii, buf));
}

/** Filler that holds no keyword-rich text: random bytes, including non-ASCII and escapes. */
const noise = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));
const doc = fc.integer({ min: 0, max: docs.length - 1 }).map((i) => bytesOf(docs[i]!));
/** Context that flips accept(): a data URI or SRI prefix before, a template after. */
const context = fc.constantFrom(
  '',
  'data:text/plain;base64,',
  'integrity="sha384-',
  'src="data:x;base64,AAAA',
  '<',
  '${',
  '{{',
  '\\n',
  '%',
  '&amp;',
  '\u00e9\u00ff',
);

describe('scan(Buffer) decodes only around keyword hits, and finds what scan(latin1 string) finds', () => {
  it('every corpus document, alone and padded to block edges', () => {
    for (const d of docs) {
      const b = bytesOf(d);
      expectSame(b);
      for (const pad of [97, 255, 511]) {
        const padded = Buffer.concat([Buffer.alloc(pad, 0x78), b, Buffer.alloc(pad, 0x20)]);
        expect(detector.scan(padded)).toEqual(reference(detector, padded));
      }
    }
  });

  it('documents planted in random bytes at random offsets, with context around them', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(noise(700), context, doc, context), { minLength: 1, maxLength: 6 }),
        noise(700),
        (parts, tail) => {
          const pieces: Buffer[] = [];
          for (const [pad, before, d, after] of parts)
            pieces.push(pad, Buffer.from(before, 'latin1'), d, Buffer.from(after, 'latin1'));
          pieces.push(tail);
          expectSame(Buffer.concat(pieces));
        },
      ),
      { numRuns: 400 },
    );
  });

  it('sparse hits in long runs (segments far apart) and dense hits (whole decode)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.integer({ min: 0, max: 5000 }), doc), { minLength: 1, maxLength: 8 }),
        fc.constantFrom(0x20, 0x41, 0xe9, 0x00, 0x5c, 0x25),
        (parts, fill) => {
          expectSame(Buffer.concat(parts.flatMap(([gap, d]) => [Buffer.alloc(gap, fill), d])));
        },
      ),
      { numRuns: 200 },
    );
  });

  it('a secret whose context (96 before, 2 after) straddles the decoded segment edges', () => {
    // A data URI prefix up to 96 bytes before the value suppresses it; a template right
    // after it makes it a placeholder. Long keyword-free runs around keep the decoding sparse.
    const value = 'AKIAIOSFODNN7EXAMPLF';
    const far = ' '.repeat(3000);
    for (let lead = 0; lead < 600; lead += 3) {
      for (const sep of ['/', ',', '.', '=']) {
        const pad = ' '.repeat(lead);
        expectSame(Buffer.from(`${pad}data:x;base64,AAAA${sep}${value}${sep}${far}`, 'latin1'));
        expectSame(Buffer.from(`${pad}data:x;base64,${'A'.repeat(70)}${sep}${value}${far}`, 'latin1'));
      }
      const pad = ' '.repeat(lead);
      expectSame(Buffer.from(`${far}${pad}${value}<x${far}`, 'latin1'));
      expectSame(Buffer.from(`${far}${pad}${value}\${{x${far}`, 'latin1'));
      expectSame(Buffer.from(`${far}${pad}\u00ff${value}{{${far}`, 'latin1'));
    }
  });

  it('random bytes alone', () => {
    fc.assert(
      fc.property(noise(4096), (b) => expectSame(b)),
      { numRuns: 300 },
    );
  });
});

function entropyReference(value: string): number {
  if (value.length === 0) return 0;
  const counts = new Map<number, number>();
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    counts.set(c, (counts.get(c) ?? 0) + 1);
  }
  let bits = 0;
  for (const n of counts.values()) {
    const p = n / value.length;
    bits -= p * Math.log2(p);
  }
  return bits;
}

describe('shannonEntropy equals the Map version bit for bit', () => {
  it('random strings (ASCII, latin1, full UTF-16, long runs)', () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ maxLength: 300 }),
          fc.string({ unit: 'binary', maxLength: 300 }),
          fc.string({ unit: fc.constantFrom('a', 'b', '\u00ff', '\ud800'), maxLength: 5000 }),
        ),
        (s) => {
          expect(Object.is(shannonEntropy(s), entropyReference(s))).toBe(true);
          // Reused state is left clean: the same value twice gives the same result.
          expect(Object.is(shannonEntropy(s), entropyReference(s))).toBe(true);
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe('keyword automaton finds what a naive search finds', () => {
  const keywords = [...new Set(BUILTIN_RULES.flatMap((r) => r.keywords))];
  const index = createKeywordIndex(keywords);

  function naive(text: string): string[] {
    const lower = text.replace(/[A-Z]/g, (c) => c.toLowerCase());
    const out: string[] = [];
    keywords.forEach((kw, k) => {
      for (let at = lower.indexOf(kw); at !== -1; at = lower.indexOf(kw, at + 1))
        out.push(`${k}@${at + kw.length}`);
    });
    return out.sort();
  }
  function found(input: string | Buffer): string[] {
    const h = index.find(input);
    const out: string[] = [];
    for (let i = 0; i < h.count; i++) out.push(`${h.keyword[i]}@${h.end[i]}`);
    return out.sort();
  }

  it('on corpus documents and random mixes of keywords and noise', () => {
    const kw = fc.constantFrom(...keywords).map((k) => (Math.random() < 0.5 ? k.toUpperCase() : k));
    fc.assert(
      fc.property(
        fc.array(fc.oneof(kw, fc.string({ maxLength: 8 }), fc.constantFrom(...docs.slice(0, 200))), {
          maxLength: 20,
        }),
        (parts) => {
          const text = parts.join('');
          expect(found(text)).toEqual(naive(text));
          const latin1 = Buffer.from(text, 'latin1');
          expect(found(latin1)).toEqual(naive(latin1.toString('latin1')));
        },
      ),
      { numRuns: 300 },
    );
  });

  /** Hits in the order `find` returns them. */
  function inOrder(h: ReturnType<typeof index.find>): Array<{ keyword: number; end: number }> {
    return Array.from({ length: h.count }, (_, i) => ({ keyword: h.keyword[i]!, end: h.end[i]! }));
  }

  it('in order of end offset, the longer keyword first at one end (the detector widens windows in that order); has() agrees', () => {
    const kw = fc.constantFrom(...keywords).map((k) => (Math.random() < 0.5 ? k.toUpperCase() : k));
    fc.assert(
      fc.property(fc.array(fc.oneof(kw, fc.string({ maxLength: 4 })), { maxLength: 30 }), (parts) => {
        const text = parts.join('');
        for (const input of [text, Buffer.from(text, 'latin1')]) {
          const hits = inOrder(index.find(input));
          for (let i = 1; i < hits.length; i++) {
            const [a, b] = [hits[i - 1]!, hits[i]!];
            expect(
              a.end < b.end || (a.end === b.end && keywords[a.keyword]!.length > keywords[b.keyword]!.length),
            ).toBe(true);
          }
          expect(index.has(input)).toBe(hits.length > 0);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('thousands of hits in one input (the hit buffers grow), and two indexes used in turn keep their own', () => {
    const text = keywords.join(' ').repeat(3);
    const bytes = Buffer.from(text, 'latin1');
    const other = createKeywordIndex(['zz', 'zzz']);
    expect(found(text)).toEqual(naive(text));
    expect(other.find('a zzz b').count).toBe(3); // zz twice, zzz once
    expect(found(bytes)).toEqual(naive(text));
    expect(found(bytes).length).toBeGreaterThan(3 * keywords.length);
    expect(inOrder(other.find(Buffer.from('zz')))).toEqual([{ keyword: 0, end: 2 }]);
    expect(other.has(bytes)).toBe(text.includes('zz'));
  });
});
