import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { chainInspectors, createDetectorInspector, scanHeaders } from './detector-inspector.js';
import { buildPatterns, MIN_SCANNED_SECRET_BYTES, PatternScan } from './inspector.js';

// A response's header block is scanned in one pass (issue 16): the result must be exactly
// what scanning each name and value alone gives, for any secrets (including ones holding a
// line feed, the separator) and any header texts made of their fragments.

const ticketOf = (id: string) => `<${id}>`;

const secretArb = fc
  .array(fc.constantFrom('a', 'b', 'c', '_', '%', '2', '\n', '&'), {
    minLength: MIN_SCANNED_SECRET_BYTES,
    maxLength: 12,
  })
  .map((chars) => chars.join(''));

const scenario = fc.uniqueArray(secretArb, { minLength: 1, maxLength: 4 }).chain((values) => {
  const fragment = fc.oneof(
    fc.constantFrom(...values),
    fc
      .tuple(fc.constantFrom(...values), fc.nat(), fc.nat())
      .map(([v, a, b]) => v.slice(Math.min(a, b) % v.length, Math.max(a, b) % (v.length + 1))),
    fc.constantFrom(...values).map((v) => encodeURIComponent(v)),
    fc.constantFrom('a', 'b', '_', '%', ' ', '%2', '&amp;'),
  );
  const headerText = fc.array(fragment, { maxLength: 5 }).map((parts) => parts.join(''));
  return fc.tuple(fc.constant(values), fc.array(headerText, { maxLength: 8 }));
});

async function eachAlone(scan: { header(v: string): Promise<string> }, values: readonly string[]) {
  const out: string[] = [];
  for (const v of values) out.push(await scan.header(v));
  return out;
}

describe('header block scanning', () => {
  it('the known-secret scan gives exactly what scanning each value alone gives', async () => {
    await fc.assert(
      fc.asyncProperty(scenario, async ([values, headers]) => {
        const set = buildPatterns(values.map((v, i) => ({ id: `s${i}`, value: Buffer.from(v, 'latin1') })));
        const context = { reissue: async (id: string) => ticketOf(id) };
        const block = await new PatternScan(set, context).headers(headers);
        expect(block).toEqual(await eachAlone(new PatternScan(set, context), headers));
      }),
      { numRuns: 1500 },
    );
  });

  it('a secret holding a line feed that spans two values falls back to value by value', async () => {
    const set = buildPatterns([{ id: 'nl', value: Buffer.from('abc-12\nxyz-34') }]);
    const scan = new PatternScan(set, { reissue: async (id) => ticketOf(id) });
    // Joined, the two values would read as the secret; alone, neither holds it.
    expect(await scan.headers(['x-a', 'value abc-12', 'xyz-34', 'other'])).toEqual([
      'x-a',
      'value abc-12',
      'xyz-34',
      'other',
    ]);
    expect(await scan.headers(['x-a', 'abc-12\nxyz-34'])).toEqual(['x-a', '<nl>']);
  });

  it('the detector scan skips a block without a keyword, and matches value by value otherwise', async () => {
    const aws = ['AKIA', 'Z7QW3RTY', 'UIOP2ASD'].join('');
    const values = ['server', 'nginx', 'x-token', `token ${aws}`, 'date', 'Fri, 04 Dec 2026 13:00:00 GMT'];
    const tokenize = async (value: Buffer) => `<found:${value.length}>`;
    const context = { reissue: async (id: string) => ticketOf(id), tokenize };
    const detector = createDetectorInspector();
    const block = await scanHeaders(await detector.begin(context), values);
    expect(block).toEqual(await eachAlone(await detector.begin(context), values));
    expect(block[3]).toBe(`token <found:${aws.length}>`);
    const quiet = ['server', 'nginx', 'content-type', 'application/json'];
    expect(await scanHeaders(await detector.begin(context), quiet)).toEqual(quiet);
    // Chained after the known-secret scan, as the gateways run them.
    const chained = chainInspectors(
      {
        name: 'known',
        begin: async (c) => new PatternScan(buildPatterns([{ id: 'k', value: Buffer.from('nginx') }]), c),
      },
      detector,
    );
    expect(await scanHeaders(await chained.begin(context), values)).toEqual(
      await eachAlone(await chained.begin(context), values),
    );
  });
});
