import { describe, expect, it } from 'vitest';
import { buildPatterns } from '../../../gateway/inspector.js';
import { scrubStatement } from './scrub-statement.js';

const VALUE = ['Tr0ub4dor3', 'horse', 'battery9x'].join('-');
const GHP = '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';
const patterns = buildPatterns([{ id: 'sec_Abc123', value: Buffer.from(VALUE) }]);

describe('scrubStatement', () => {
  it('names a known secret by its id, even where a keyword rule would mask the marker', () => {
    // As typed, and lower-cased (both are in the pattern set), where a keyword rule
    // (`password = '…'`) would otherwise mask the marker and lose the id.
    for (const form of [VALUE, VALUE.toLowerCase()]) {
      const out = scrubStatement(`UPDATE users SET password = '${form}' WHERE id = 1`, patterns);
      expect(out).toBe("UPDATE users SET password = '[secret:sec_Abc123]' WHERE id = 1");
    }
  });

  it('masks a detector finding beside a known secret and keeps both apart', () => {
    const out = scrubStatement(`SELECT '${VALUE}', '${GHP}'`, patterns);
    expect(out).toContain('[secret:sec_Abc123]');
    expect(out).toMatch(/\[REDACTED:github[^\]]*\]/);
    expect(out).not.toContain(VALUE);
    expect(out).not.toContain(GHP);
  });

  it('text the agent wrote cannot pose as a placeholder', () => {
    const forged = 'SELECT \uE000000000000000:0\uE001';
    expect(scrubStatement(`${forged}, '${VALUE}'`, patterns)).toBe(`${forged}, '[secret:sec_Abc123]'`);
  });
});
