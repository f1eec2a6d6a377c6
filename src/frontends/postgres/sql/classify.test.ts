import { beforeAll, describe, expect, it } from 'vitest';
import { loadParser, SqlClassifier, shapeOf } from './classify.js';

beforeAll(async () => {
  await loadParser();
});

const cases: Array<[string, string]> = [
  ['SELECT 1', 'read'],
  ['', 'empty'],
  ['-- only a comment', 'empty'],
  ['SELECT * FROM t WHERE a = $1', 'read'],
  ['SELECT count(*), lower(name) FROM t', 'read'],
  ['SELECT pg_catalog.format_type(1, 2)', 'read'],
  ['SHOW search_path', 'read'],
  ['EXPLAIN SELECT 1', 'read'],
  ['EXPLAIN ANALYZE DELETE FROM t', 'write'],
  ['INSERT INTO t VALUES (1)', 'write'],
  ['UPDATE t SET a = 1', 'write'],
  ['DELETE FROM t', 'write'],
  ['MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE', 'write'],
  ['COPY t FROM STDIN', 'write'],
  ['COPY t TO STDOUT', 'read'],
  ['COPY (SELECT 1) TO STDOUT', 'read'],
  ["COPY t TO '/tmp/x'", 'privilege'],
  ["COPY t FROM PROGRAM 'id'", 'privilege'],
  ['WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d', 'write'],
  ['SELECT * FROM (SELECT 1) s, LATERAL (SELECT 2) l WHERE EXISTS (SELECT 1)', 'read'],
  ['SELECT * FROM t FOR UPDATE', 'write'],
  ['SELECT * INTO newt FROM t', 'ddl'],
  ['SELECT my_func(1)', 'function-call'],
  ['SELECT public.lower(x) FROM t', 'function-call'],
  ["SELECT set_config('default_transaction_read_only', 'off', false)", 'function-call'],
  ['CALL proc()', 'function-call'],
  ['DO $$ BEGIN DROP TABLE t; END $$', 'ddl'],
  ['CREATE TABLE z (a int)', 'ddl'],
  ['DROP TABLE z', 'ddl'],
  ['TRUNCATE t', 'ddl'],
  ['ALTER TABLE t ADD COLUMN b int', 'ddl'],
  ['VACUUM t', 'ddl'],
  ['GRANT SELECT ON t TO bob', 'privilege'],
  ['REVOKE ALL ON t FROM bob', 'privilege'],
  ['CREATE ROLE bob', 'privilege'],
  ['ALTER ROLE bob SUPERUSER', 'privilege'],
  ['SET ROLE postgres', 'privilege'],
  ['SET SESSION AUTHORIZATION postgres', 'privilege'],
  ['SET default_transaction_read_only = off', 'privilege'],
  ['SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE', 'privilege'],
  ["LOAD 'plugin'", 'privilege'],
  ['ALTER SYSTEM SET work_mem = 1', 'privilege'],
  ['SET search_path = public', 'session'],
  ['RESET ALL', 'session'],
  ['LISTEN ch', 'session'],
  ["NOTIFY ch, 'x'", 'write'],
  ['BEGIN', 'transaction'],
  ['COMMIT', 'transaction'],
  ['PREPARE p AS DELETE FROM t', 'write'],
  ['PREPARE q AS SELECT 1', 'read'],
  ['LOCK TABLE t', 'write'],
];

describe('SQL classification', () => {
  const classifier = new SqlClassifier();

  it.each(cases)('%s -> %s', (sql, expected) => {
    expect(classifier.classify(sql).class).toBe(expected);
  });

  it('lets the most dangerous statement decide a multi-statement query', () => {
    const c = classifier.classify('SELECT 1; BEGIN; UPDATE t SET a = 1; SELECT 2; COMMIT');
    expect(c.class).toBe('write');
    expect(c.statements).toEqual([
      'SelectStmt',
      'TransactionStmt',
      'UpdateStmt',
      'SelectStmt',
      'TransactionStmt',
    ]);
    expect(classifier.classify('SELECT 1; GRANT SELECT ON t TO x; DROP TABLE t').class).toBe('privilege');
  });

  it('refuses a statement that does not parse, with the parser position', () => {
    expect(() => classifier.classify('SELEC 1')).toThrowError(
      expect.objectContaining({ code: 'CC_ERR_PG_STATEMENT_UNPARSABLE' }) as Error,
    );
    expect(() => classifier.classify("SELECT 'unterminated")).toThrowError(
      expect.objectContaining({ code: 'CC_ERR_PG_STATEMENT_UNPARSABLE' }) as Error,
    );
  });

  it('names the functions that made a statement a function call', () => {
    expect(classifier.classify('SELECT lower(a), evil.write_it(1) FROM t').functions).toEqual([
      'evil.write_it',
    ]);
  });

  it('caches by statement text (bounded LRU)', () => {
    const c = new SqlClassifier({ capacity: 2 });
    c.classify('SELECT a FROM t');
    c.classify('SELECT a FROM t');
    expect(c.parses).toBe(1);
    c.classify('SELECT b FROM t');
    c.classify('SELECT c FROM t'); // evicts the first
    c.classify('SELECT a FROM t');
    expect(c.parses).toBe(4);
  });

  it('locates standard string literals by byte offset, not E-strings or dollar quotes', () => {
    const sql = "SELECT 'héllo', E'x', $$y$$, 'it''s' FROM t";
    const c = classifier.classify(sql);
    const bytes = Buffer.from(sql);
    expect(c.literals.map((l) => bytes.subarray(l.start, l.end).toString()).sort()).toEqual(
      ["'héllo'", "'it''s'"].sort(),
    );
  });

  it('shares one cache entry between texts that differ only in literals', () => {
    expect(shapeOf("SELECT a FROM t1 WHERE id = 42 AND name = 'it''s' AND x > 1.5")).toBe(
      "SELECT a FROM t1 WHERE id = 0 AND name = '' AND x > 0",
    );
    expect(shapeOf('SELECT "q" FROM t')).toBeNull();
    expect(shapeOf("SELECT E'a\\'' FROM t")).toBeNull();
    expect(shapeOf('SELECT 1 -- c')).toBeNull();
    expect(shapeOf("SELECT 'unterminated")).toBeNull();
    const c = new SqlClassifier();
    c.classify('SELECT abalance FROM pgbench_accounts WHERE aid = 17');
    c.classify('SELECT abalance FROM pgbench_accounts WHERE aid = 4242');
    expect(c.parses).toBe(1);
    // Identifiers are part of the shape: a different table or function is parsed again.
    expect(c.classify('SELECT my_func(17)').class).toBe('function-call');
    expect(c.classify('SELECT lower(17::text)').class).toBe('read');
    expect(c.parses).toBe(3);
  });
});
