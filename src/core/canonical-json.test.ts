import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalJson, canonicalJsonReference } from './canonical-json.js';

describe('canonicalJson', () => {
  it('gives the reference form, byte for byte, for any JSON-like value', () => {
    const value = fc.letrec((tie) => ({
      any: fc.oneof(
        { depthSize: 'small' },
        fc.constantFrom(
          null,
          undefined,
          true,
          false,
          0,
          -0,
          Number.NaN,
          Number.POSITIVE_INFINITY,
          () => 1,
          Symbol('s'),
        ),
        fc.constantFrom(new Date(0), new Map([[1, 2]]), Buffer.from('ab'), Object.create(null) as object),
        fc.double(),
        fc.integer(),
        fc.string({ unit: 'binary' }),
        fc.array(tie('any')),
        fc.sparseArray(tie('any')),
        fc.dictionary(fc.string({ unit: 'binary' }), tie('any')),
        fc.dictionary(
          fc.constantFrom(
            '__proto__',
            '0',
            '10',
            '2',
            '-1',
            '1.5',
            '4294967295',
            'a',
            'B',
            'é',
            '\u{1f600}',
            '',
          ),
          tie('any'),
        ),
      ),
    })).any;
    fc.assert(
      fc.property(value, (v) => {
        expect(canonicalJson(v)).toBe(canonicalJsonReference(v));
      }),
      { numRuns: 2000 },
    );
  });

  it('orders many keys (past the small-object sort) and keys that differ only past a surrogate pair', () => {
    const many = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`k${(i * 7919) % 40}`, i]));
    expect(canonicalJson(many)).toBe(canonicalJsonReference(many));
    const near = { '\u{1f600}b': 1, '\uffffa': 2, '\u{1f600}a': 3, z: 4, '\ud83d': 5 };
    expect(canonicalJson(near)).toBe(canonicalJsonReference(near));
    expect(Object.keys(JSON.parse(canonicalJson(near)))).toEqual([
      'z',
      '\ud83d',
      '\u{1f600}a',
      '\u{1f600}b',
      '\uffffa',
    ]);
  });

  it('sorts keys at every level and leaves out undefined members', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, undefined, 'x'], c: undefined }, '10': 0, '9': 0 })).toBe(
      '{"10":0,"9":0,"a":{"d":[1,null,"x"]},"b":1}',
    );
    expect(canonicalJson({ a: undefined })).toBe('{}');
    expect(canonicalJson({ a: undefined, b: 2 })).toBe('{"b":2}');
    expect(canonicalJson({ f: () => 1, s: [undefined, () => 1] })).toBe('{"f":null,"s":[null,null]}');
    // biome-ignore lint/suspicious/noSparseArray: a hole, as the reference writes it
    expect(canonicalJson([1, , 2])).toBe('[1,,2]');
    expect(canonicalJson(undefined)).toBe('null');
  });
});
