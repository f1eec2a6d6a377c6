import fc from 'fast-check';
import { expect, it } from 'vitest';
import { canonicalJson } from '../../src/core/canonical-json.js';

// The audit chain hashes canonicalJson's bytes: a record appended by one version must verify
// under the next. This is the first version, kept as the reference for the byte form.
function reference(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    const text = JSON.stringify(value);
    return text === undefined ? 'null' : text;
  }
  if (Array.isArray(value)) return `[${value.map(reference).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${reference(v)}`).join(',')}}`;
}

it('gives the same bytes as the reference for any JSON value, keys in any order and any script', () => {
  fc.assert(
    fc.property(fc.jsonValue({ maxDepth: 5 }), (value) => {
      expect(canonicalJson(value)).toBe(reference(value));
    }),
    { numRuns: 2000 },
  );
});

it('gives the same bytes for values JSON leaves out or rewrites: undefined, holes, NaN, -0, nested undefined', () => {
  fc.assert(
    fc.property(
      fc.anything({
        maxDepth: 4,
        withSparseArray: true,
        withNullPrototype: true,
        withBoxedValues: false,
        withMap: false,
        withSet: false,
        withBigInt: false,
        withDate: true,
        withTypedArray: false,
        withObjectString: true,
      }),
      (value) => {
        expect(canonicalJson(value)).toBe(reference(value));
      },
    ),
    { numRuns: 2000 },
  );
  const odd = {
    b: undefined,
    // biome-ignore lint/suspicious/noSparseArray: a hole is the point
    a: [1, undefined, , Number.NaN, -0],
    é: { z: 1, Z: 2, '\u{1F600}': 3, '\uFFFF': 4 },
  };
  expect(canonicalJson(odd)).toBe(reference(odd));
  expect(canonicalJson(odd)).toBe('{"a":[1,null,,null,0],"é":{"Z":2,"z":1,"\u{1F600}":3,"\uFFFF":4}}');
});
