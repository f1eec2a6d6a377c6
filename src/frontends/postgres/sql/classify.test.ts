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
  ["SELECT set_config('default_transaction_read_only', 'off', false)", 'privilege'],
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
  ['RESET search_path', 'session'],
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

describe('settings the gateway pins, read-write requests, server versions', () => {
  const classifier = new SqlClassifier();
  const code = (sql: string): string | null => {
    try {
      classifier.classify(sql);
      return null;
    } catch (error) {
      return (error as { code?: string }).code ?? 'thrown';
    }
  };

  it.each([
    'SET standard_conforming_strings = off',
    'SET LOCAL standard_conforming_strings TO off',
    "SET client_encoding = 'SJIS'",
    "SET NAMES 'SJIS'",
    'SET backslash_quote = on',
    'SET search_path = evil, pg_catalog',
    "SET SCHEMA 'evil'",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
    "SELECT pg_catalog.set_config('client_encoding', 'SJIS', false)",
    "SELECT set_config((SELECT 'standard_conforming_strings'), 'off', false)",
    "SELECT set_config('search_path', 'evil', true)",
    'ALTER ROLE CURRENT_USER SET standard_conforming_strings = off',
    "ALTER DATABASE x SET client_encoding = 'SJIS'",
    'ALTER SYSTEM SET search_path = evil',
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET client_encoding = 'SJIS' AS 'select 1'",
  ])('refuses %s as a pinned setting', (sql) => {
    expect(code(sql)).toBe('CC_ERR_PG_SETTING_PINNED');
  });

  it('lets RESET, RESET ALL and DISCARD ALL through (they return to the pinned startup values)', () => {
    for (const sql of [
      'RESET ALL',
      'DISCARD ALL',
      'RESET client_encoding',
      'RESET standard_conforming_strings',
    ])
      expect(classifier.classify(sql).class).toBe('session');
  });

  it.each([
    'BEGIN READ WRITE',
    'START TRANSACTION READ WRITE',
    'BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE',
    'SET TRANSACTION READ WRITE',
    'SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE',
    'SET default_transaction_read_only = off',
    "SET LOCAL transaction_read_only = 'false'",
    'SET transaction_read_only = 0',
    'SET default_transaction_read_only TO DEFAULT',
    "SELECT set_config('default_transaction_read_only', 'off', false)",
  ])('marks %s as asking for read-write', (sql) => {
    expect(classifier.classify(sql).readWrite).toBe(true);
  });

  it('does not mark read-only requests', () => {
    for (const sql of [
      'BEGIN READ ONLY',
      'BEGIN',
      'SET TRANSACTION READ ONLY',
      "SET transaction_read_only = 'on'",
    ])
      expect(classifier.classify(sql).readWrite).toBeUndefined();
  });

  it('does not share a cache entry between setting values', () => {
    const c = new SqlClassifier();
    expect(c.classify("SET default_transaction_read_only = 'on'").readWrite).toBeUndefined();
    expect(c.classify("SET default_transaction_read_only = 'off'").readWrite).toBe(true);
    expect(c.classify("SELECT set_config('application_name', 'x', false)").class).toBe('privilege');
    expect(() => c.classify("SELECT set_config('standard_conforming_strings', 'x', false)")).toThrow();
  });

  it('refuses syntax the upstream version reads differently, and an unknown version', () => {
    const c = new SqlClassifier();
    const pg15 = c.forUpstream({ major: 15, shadowed: new Set(), operators: new Set() });
    const pg17 = c.forUpstream({ major: 17, shadowed: new Set(), operators: new Set() });
    const unknown = c.forUpstream({ major: null, shadowed: new Set(), operators: new Set() });
    for (const sql of [
      'SELECT JSON_SCALAR(1)',
      "SELECT JSON_OBJECT('a': 1)",
      'SELECT JSON_ARRAY(1, 2)',
      "SELECT '1' IS JSON",
      "SELECT JSON_VALUE('{}', '$.a')",
      'SELECT system_user',
    ]) {
      expect(() => pg15.classify(sql), sql).toThrowError(
        expect.objectContaining({ code: 'CC_ERR_PG_SYNTAX_UNSUPPORTED' }) as Error,
      );
      expect(() => unknown.classify(sql), sql).toThrowError(
        expect.objectContaining({ code: 'CC_ERR_PG_SYNTAX_UNSUPPORTED' }) as Error,
      );
      expect(pg17.classify(sql).class, sql).toBe('read');
    }
    expect(pg15.classify('SELECT 1').class).toBe('read');
  });

  it('counts a call of an allowlisted name the upstream shadows, and user operators, as unknown calls', () => {
    const c = new SqlClassifier();
    const s = c.forUpstream({ major: 15, shadowed: new Set(['lower']), operators: new Set(['===']) });
    expect(s.classify('SELECT lower(2)')).toMatchObject({ class: 'function-call', functions: ['lower'] });
    expect(s.classify('SELECT pg_catalog.lower(2)').class).toBe('read');
    expect(s.classify('SELECT upper(a) FROM t').class).toBe('read');
    expect(s.classify('SELECT 1 === 2')).toMatchObject({
      class: 'function-call',
      functions: ['operator(===)'],
    });
    expect(s.classify('SELECT 1 OPERATOR(evil.+) 2').functions).toEqual(['operator(evil.+)']);
    expect(s.classify('SELECT 1 + 2').class).toBe('read');
    // A function this session defines is not pg_catalog's from then on.
    expect(s.classify('SELECT upper(2)').class).toBe('read');
    s.classify('CREATE FUNCTION upper(int) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$');
    expect(s.classify('SELECT upper(2)').class).toBe('function-call');
    // The shared cache holds the catalog-independent answer.
    expect(c.classify('SELECT lower(2)').class).toBe('read');
  });

  it('refuses query texts beyond the size and statement limits before parsing', () => {
    const c = new SqlClassifier({ maxStatementBytes: 4096, maxStatements: 10 });
    expect(() => c.classify(`SELECT '${'x'.repeat(5000)}'`)).toThrowError(
      expect.objectContaining({ code: 'CC_ERR_PG_STATEMENT_TOO_LARGE' }) as Error,
    );
    expect(() => c.classify('SELECT 1;'.repeat(11))).toThrowError(
      expect.objectContaining({ code: 'CC_ERR_PG_STATEMENT_TOO_LARGE' }) as Error,
    );
    expect(c.parses).toBe(0);
    expect(c.classify('SELECT 1;'.repeat(10)).statements).toHaveLength(10);
  });
});
