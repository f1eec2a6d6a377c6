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
