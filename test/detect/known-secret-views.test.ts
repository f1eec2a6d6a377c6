import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeView, LONGEST_ESCAPE } from '../../src/detect/canonical.js';
import {
  byPlace,
  createKnownSecretMatcher,
  encodedForms,
  KNOWN_SECRET_DECODE_LEVELS,
  type KnownSecretMatch,
  type KnownSecretMatcher,
} from '../../src/detect/known-secrets.js';

// The detector's known-secret matcher decodes escapes only in stretches around the escapes
// that decode (issue 16; as the response inspector does, ADR 0030). The reference is what
// `find` did before: decode the whole input, up to two levels, and match every view.

type Mode = 'text' | 'bytes';

function wholeInputFind(
  m: KnownSecretMatcher,
  input: string,
  mode: Mode,
  bytes?: Buffer,
): KnownSecretMatch[] {
  const out: KnownSecretMatch[] = [...m.findForms(input, mode, bytes)];
  const seen = new Set(out.map((x) => `${x.secretId}:${x.start}:${x.end}`));
  let view = input;
  let toStart: Int32Array | null = null;
  let toEnd: Int32Array | null = null;
  for (let level = 0; level < KNOWN_SECRET_DECODE_LEVELS; level++) {
    const decoded = decodeView(view, mode);
    if (!decoded.changed) break;
    const ts = toStart;
    const te = toEnd;
    const start: Int32Array = ts === null ? decoded.start : decoded.start.map((u) => ts[u]!);
    const end: Int32Array = te === null ? decoded.end : decoded.end.map((u) => te[u - 1]!);
    for (const x of m.findForms(decoded.view, mode)) {
      const found = { ...x, start: start[x.start]!, end: end[x.end - 1]!, viaView: true };
      const key = `${found.secretId}:${found.start}:${found.end}`;
      if (seen.has(key)) continue;
      seen.add(key);
      out.push(found);
    }
    view = decoded.view;
    toStart = start;
    toEnd = end;
  }
  return out.sort(byPlace);
}

const SECRETS = [
  'Tok3n&<x>+y/z\'!()*~"q',
  'plain-secret-0123456789',
  'caf\u00e9-\u20ac-secret',
  'abcdefgh\u270f',
];
/** Longer than any input below: its margin makes one stretch of the whole input. */
const LONG = `L${'w'.repeat(40_000)}`;

function matcher(values: readonly string[]): KnownSecretMatcher {
  const m = createKnownSecretMatcher();
  for (const [i, v] of values.entries()) m.add(`k${i}`, v);
  return m;
}
const short = matcher(SECRETS);
const withLong = matcher([...SECRETS, LONG]);

const hex = (ch: string, width: number) => ch.charCodeAt(0).toString(16).padStart(width, '0');
const escapes: ((ch: string) => string | null)[] = [
  (ch) => `\\u${hex(ch, 4)}`,
  (ch) => `\\u${hex(ch, 4).toUpperCase()}`,
  (ch) => (ch.charCodeAt(0) < 0x80 ? `%${hex(ch, 2)}` : encodeURIComponent(ch)),
  (ch) => (ch.charCodeAt(0) < 0x80 ? `%${hex(ch, 2).toUpperCase()}` : null),
  (ch) => `&#${ch.charCodeAt(0)};`,
  (ch) => `&#${ch.charCodeAt(0)}`,
  (ch) => `&#x${hex(ch, 1)};`,
  (ch) => ({ '&': '&amp;', "'": '&apos;', '<': '&lt;', '+': '&plus;', '/': '&sol;' })[ch] ?? null,
  (ch) => ({ '"': '\\"', '/': '\\/', '\\': '\\\\' })[ch] ?? null,
  // Two levels: a JSON escape of a percent escape, a percent escape of a JSON one, HTML of percent.
  (ch) => (ch.charCodeAt(0) < 0x80 ? `\\u0025${hex(ch, 2)}` : null),
  (ch) => `%5Cu${hex(ch, 4)}`,
  (ch) => (ch.charCodeAt(0) < 0x80 ? `&#37;${hex(ch, 2)}` : null),
];

/** Every form each secret is looked for in (the longest ones decide the stretch margin). */
const FORMS = SECRETS.flatMap((v) => encodedForms(Buffer.from(v, 'utf8')).map((f) => f.text));

/**
 * A form of a secret with some of its characters escaped, densely or sparsely (a match then
 * reaches far from its escapes: with one nested escape at the front, one escape length
 * farther than the longest form).
 */
const escapedSecret = fc
  .tuple(
    fc.constantFrom(...FORMS),
    fc.constantFrom(1, 3, 12),
    fc.array(fc.nat({ max: 12 * escapes.length }), { minLength: 32, maxLength: 32 }),
  )
  .map(([value, density, choice]) =>
    [...value]
      .map((ch, k) => {
        const c = choice[k % 32]!;
        return (c < density * escapes.length ? escapes[c % escapes.length]!(ch) : null) ?? ch;
      })
      .join(''),
  );

/** A form with one character escaped, near an end (the farthest a match reaches from its escape). */
const oneEscape = fc
  .tuple(fc.constantFrom(...FORMS), fc.nat({ max: escapes.length - 1 }), fc.constantFrom(0, 1, -1, -2))
  .map(([form, e, at]) => {
    const k = at < 0 ? form.length + at : at;
    return `${form.slice(0, k)}${escapes[e]!(form[k]!) ?? form[k]!}${form.slice(k + 1)}`;
  });

const part = fc.oneof(
  { weight: 2, arbitrary: oneEscape },
  // Noise: latin1 bytes hold a stray `%`, `\` or `&` every ~85 characters, few that decode.
  {
    weight: 4,
    arbitrary: fc.uint8Array({ maxLength: 2500, size: 'max' }).map((b) => Buffer.from(b).toString('latin1')),
  },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 300, size: 'max' }) },
  { weight: 3, arbitrary: escapedSecret },
  { weight: 1, arbitrary: fc.constantFrom(...SECRETS) },
  {
    weight: 2,
    arbitrary: fc.constantFrom(
      '%',
      '\\',
      '&',
      '%2',
      '&#',
      '\\u00',
      '%41',
      '\\n',
      '&amp;',
      '%25',
      '%255C',
      '\\\\',
      '&#x',
      '&#99999999',
      '&#x99999999',
      '\\uD83D\\uDE00',
      '\\uD83D',
    ),
  },
  {
    weight: 1,
    arbitrary: fc.constantFrom(' ', '.', 'x').chain((c) => fc.nat({ max: 400 }).map((n) => c.repeat(n))),
  },
);
const inputs = fc.array(part, { maxLength: 14, size: 'max' }).map((parts) => parts.join(''));

function expectSame(m: KnownSecretMatcher, text: string): void {
  expect(m.find(text, 'text')).toEqual(wholeInputFind(m, text, 'text'));
  const buf = Buffer.from(text, 'utf8');
  const latin1 = buf.toString('latin1');
  expect(m.find(latin1, 'bytes', buf)).toEqual(wholeInputFind(m, latin1, 'bytes', buf));
}

describe('known-secret matcher decodes views only around escapes', () => {
  it('finds what decoding the whole input finds: sparse escapes, escaped and nested-escaped secrets', () => {
    fc.assert(
      fc.property(inputs, (text) => expectSame(short, text)),
      { numRuns: 400 },
    );
  });

  it('finds the same with a pattern longer than the input (one stretch over all of it)', () => {
    fc.assert(
      fc.property(inputs, (text) => expectSame(withLong, text)),
      { numRuns: 100 },
    );
  });

  it('finds escaped secrets far into a long input, and nothing in noise', () => {
    const noise = (n: number, seed: number) =>
      Buffer.from(
        Array.from({ length: n }, (_, i) => (i * 131 + seed * 17 + ((i * i) >> 3)) & 0xff),
      ).toString('latin1');
    const escaped = 'plain%2Dsecret\\u002d0123456789';
    const text = `${noise(40_000, 1)}${escaped}${noise(30_000, 2)}%5Cu0070lain-secret-0123456789`;
    const found = short.find(text, 'bytes', Buffer.from(text, 'latin1'));
    expect(found.map((x) => [x.secretId, x.start, x.end])).toEqual([
      ['k1', 40_000, 40_000 + escaped.length],
      ['k1', 70_000 + escaped.length, text.length],
    ]);
    expect(found).toEqual(wholeInputFind(short, text, 'bytes', Buffer.from(text, 'latin1')));
  });

  it('reads an escape at a stretch end as the whole input does (&#99999999 is no escape; cut to &#9999 it would be)', () => {
    // A decodable escape opens a stretch; the numeric reference sits across where its margin ends.
    const margin = short.maxPatternLength + LONGEST_ESCAPE * (KNOWN_SECRET_DECODE_LEVELS + 1);
    for (let shift = -16; shift <= 16; shift++) {
      const text = `%41${'.'.repeat(margin + shift)}abcdefgh&#99999999 tail`;
      expect(short.find(text, 'text')).toEqual([]);
      expect(short.find(text, 'bytes', Buffer.from(text, 'latin1'))).toEqual([]);
    }
    // The control: the reference itself decodes a real one.
    expect(short.find('abcdefgh&#9999; tail', 'text').map((x) => x.secretId)).toEqual(['k3']);
  });
});
