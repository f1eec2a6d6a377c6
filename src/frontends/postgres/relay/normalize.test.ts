import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadParser } from '../sql/classify.js';
import { normalizeStatement } from './normalize.js';

beforeAll(async () => {
  await loadParser();
});

describe('normalizeStatement', () => {
  it.each([
    ['delete  from users -- x', 'DELETE FROM USERS'],
    ['DELETE/**/FROM/* a /* nested */ b */users', 'DELETE FROM USERS'],
    ["select 'keep -- this /* too */' from t", "SELECT 'keep -- this /* too */' FROM T"],
    ['select "MixedCase" from "T"', 'SELECT "MixedCase" FROM "T"'],
    ['select $q$ -- not a comment $q$, $1', 'SELECT $q$ -- not a comment $q$, $1'],
    ["select e'it\\'s -- no comment' from t", "SELECT E'it\\'s -- no comment' FROM T"],
  ])('%j → %j', (sql, want) => {
    expect(normalizeStatement(sql, true)).toBe(want);
  });

  it('reads backslash escapes in every string when standard_conforming_strings is off', () => {
    expect(normalizeStatement("select 'a\\' -- b' from t", false)).toBe("SELECT 'a\\' -- b' FROM T");
  });

  it('refuses rather than guesses where its lexing would change the statement', () => {
    expect(() => normalizeStatement('select 1 as "x', true)).toThrow(/does not parse to the same statement/);
  });

  it('means the same statement for arbitrary keyword soup (property)', () => {
    const word = fc.constantFrom(
      'select',
      'FROM',
      't',
      'where',
      'a',
      '=',
      "'x -- y'",
      '/* c */',
      '-- z\n',
      '1',
      ',',
      '"Q"',
    );
    fc.assert(
      fc.property(fc.array(word, { minLength: 1, maxLength: 12 }), (words) => {
        const sql = words.join(' ');
        let out: string;
        try {
          out = normalizeStatement(sql, true);
        } catch {
          return; // not SQL, or refused: never a different statement
        }
        // Outside literals and quoted identifiers, no comment is left and every word is upper-case.
        const bare = out.replace(/'[^']*'|"[^"]*"/g, '');
        expect(bare).not.toMatch(/--|\/\*|[a-z]/);
      }),
      { numRuns: 300 },
    );
  });
});
