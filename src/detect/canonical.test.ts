import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeView, unfinishedEscapeFrom } from './canonical.js';

describe('decodeView', () => {
  it('decodes JSON, percent and HTML escapes in one pass and maps each unit to its escape', () => {
    const input = 'a\\u0026b%2Fc&#x2b;d&amp;e\\"';
    const d = decodeView(input, 'bytes');
    expect(d.view).toBe('a&b/c+d&e"');
    expect([...d.start]).toEqual([0, 1, 7, 8, 11, 12, 18, 19, 24, 25]);
    expect([...d.end]).toEqual([1, 7, 8, 11, 12, 18, 19, 24, 25, 27]);
  });

  it('writes UTF-8 in bytes mode and UTF-16 in text mode (surrogate pairs joined)', () => {
    const input = '\\ud83d\\ude00 %C3%A9 &#233;';
    expect(Buffer.from(decodeView(input, 'bytes').view, 'latin1').toString('utf8')).toBe('\u{1f600} é é');
    // Text mode decodes percent escapes of ASCII only (bytes of a UTF-8 sequence stay escaped).
    expect(decodeView(input, 'text').view).toBe('\u{1f600} %C3%A9 é');
  });

  it('leaves what is not an escape alone and says when nothing changed', () => {
    expect(decodeView('100% &co \\q %zz &#;', 'bytes').changed).toBe(false);
    expect(decodeView('plain', 'text')).toMatchObject({ view: 'plain', changed: false });
  });
});

describe('decodeView over long literal runs (copied in bulk)', () => {
  const piece = fc.oneof(
    fc.string({
      unit: fc.constantFrom('a', 'Z', '0', ' ', '\n', '%', '&', '\\', 'é', '€', '\u{1f600}'),
      maxLength: 80,
    }),
    fc.constantFrom(
      '\\u0041',
      '%41',
      '%c3%a9',
      '&amp;',
      '&#x2b;',
      '&#43',
      '\\n',
      '\\"',
      '\\x7e',
      '\\ud83d\\ude00',
      '%u20ac',
    ),
  );
  const text = fc.array(piece, { maxLength: 60 }).map((parts) => parts.join(''));

  it('maps every unit back: literal units to the same character, escapes to what they decode to alone', () => {
    fc.assert(
      fc.property(text, fc.constantFrom('bytes' as const, 'text' as const), (input, mode) => {
        const d = decodeView(input, mode);
        if (!d.changed) {
          expect(d.view).toBe(input);
          return;
        }
        expect(d.start.length).toBe(d.view.length);
        let at = 0;
        for (let u = 0; u < d.view.length; ) {
          const from = d.start[u]!;
          const to = d.end[u]!;
          expect(from).toBe(at);
          let k = u;
          while (k < d.view.length && d.start[k] === from) {
            expect(d.end[k]).toBe(to);
            k++;
          }
          const units = d.view.slice(u, k);
          if (to - from === 1 && k - u === 1) {
            // A literal unit (or a one-character escape, which decodes to itself: none exists).
            if (mode === 'bytes' && input.charCodeAt(from) > 0xff)
              expect(units.charCodeAt(0)).toBe(input.charCodeAt(from) & 0xff);
            else expect(units).toBe(input[from]);
          } else {
            expect(decodeView(input.slice(from, to), mode).view).toBe(units);
          }
          at = to;
          u = k;
        }
        expect(at).toBe(input.length);
      }),
      { numRuns: 500 },
    );
  });
});

describe('unfinishedEscapeFrom', () => {
  it('finds an escape the next chunk may complete', () => {
    expect(unfinishedEscapeFrom('abc\\u00')).toBe(3);
    expect(unfinishedEscapeFrom('abc%4')).toBe(3);
    expect(unfinishedEscapeFrom('abc&#x2')).toBe(3);
    expect(unfinishedEscapeFrom('abc&am')).toBe(3);
    expect(unfinishedEscapeFrom('abc\\')).toBe(3);
    expect(unfinishedEscapeFrom('abc%41 ')).toBe(7);
    expect(unfinishedEscapeFrom('abc&amp;')).toBe(8);
  });
});
