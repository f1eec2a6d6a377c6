import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { FieldDescription } from '../../../src/frontends/postgres/protocol/messages.js';
import { columnMatcher } from '../../../src/frontends/postgres/rules.js';
import { loadParser } from '../../../src/frontends/postgres/sql/classify.js';
import { LineageTracker, type StatementLineage } from '../../../src/frontends/postgres/sql/lineage.js';
import { createPgCatalog, type PgCatalog } from '../../../src/frontends/postgres/sql/pg-catalog.js';

/**
 * Masking by lineage against a real PostgreSQL 15: each statement is analysed, run on the
 * server, and the plan is applied to the RowDescription the server really sent; the masked
 * rows must hold no SSN canary in any case or spacing.
 */

const DB = 'pg_output_lineage';
const SSN = ['SSNcanary-111-22-3333', 'SSNcanary-444-55-6666'];
const MASKS = ['ssn', 'card_*'];

let admin: pg.Client;
let db: pg.Client;
let catalog: PgCatalog;
let tracker: LineageTracker;

beforeAll(async () => {
  await loadParser();
  admin = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: 'postgres' });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await admin.query(`CREATE DATABASE ${DB}`);
  db = new pg.Client({ host: '127.0.0.1', port: 5432, user: 'postgres', database: DB });
  await db.connect();
  await db.query(`
    CREATE TABLE users (id int PRIMARY KEY, name text, ssn text, card_no text);
    INSERT INTO users VALUES (1, 'ann', '${SSN[0]}', '4111'), (2, 'bob', '${SSN[1]}', '5500');
    CREATE TABLE orders (id int, user_id int, note text);
    INSERT INTO orders VALUES (1, 1, 'first'), (2, 2, 'second');
    CREATE VIEW v_users AS SELECT id, name, ssn AS x FROM users;
    CREATE VIEW v_v AS SELECT x AS y, name FROM v_users;
    CREATE VIEW v_safe AS SELECT id, name FROM users;
    CREATE VIEW v_expr AS SELECT id, 'id:' || lower(ssn) AS tag FROM users;
    CREATE MATERIALIZED VIEW mv AS SELECT id, upper(ssn) AS u, name FROM users;
    CREATE FUNCTION get_users() RETURNS SETOF users LANGUAGE sql AS 'SELECT * FROM users';
    CREATE FUNCTION leak() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM users LIMIT 1';
    CREATE SCHEMA other;
    CREATE TABLE public.accounts (id int, ssn text);
    CREATE TABLE other.accounts (id int, owner text);
    INSERT INTO public.accounts VALUES (1, '${SSN[0]}');
  `);
  catalog = createPgCatalog({ host: '127.0.0.1', port: 5432, user: 'postgres', database: DB });
}, 60_000);

afterAll(async () => {
  await catalog?.close();
  await db?.end();
  await admin?.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`);
  await admin?.end();
});

beforeEach(() => {
  tracker = new LineageTracker({ masked: columnMatcher(MASKS), catalog });
});

function fieldsOf(result: pg.QueryResult): FieldDescription[] {
  return result.fields.map((f) => ({
    name: f.name,
    tableOid: f.tableID,
    columnAttr: f.columnID,
    typeOid: f.dataTypeID,
    typeSize: f.dataTypeSize,
    typeModifier: f.dataTypeModifier,
    format: 0,
  }));
}

interface Checked {
  readonly mask: number[];
  readonly touches: boolean;
  readonly statement: StatementLineage;
}

function leaks(rows: unknown[][]): boolean {
  const text = JSON.stringify(rows)
    .toLowerCase()
    .replace(/[\s"\\]/g, '');
  return SSN.some((s) => text.includes(s.toLowerCase()) || text.includes(s.toLowerCase().slice(10)));
}

/** Analyse, run, mask with the server's own RowDescription; the canary must not survive. */
async function check(sql: string, setup: readonly string[] = []): Promise<Checked> {
  await db.query('BEGIN');
  try {
    for (const s of setup) {
      const r = await tracker.analyze(s);
      if (!r.ok) throw new Error(r.message);
      await db.query(s);
    }
    const r = await tracker.analyze(sql);
    if (!r.ok) throw new Error(`refused: ${r.message}`);
    const statement = r.statements.at(-1)!;
    const result = await db.query({ text: sql, rowMode: 'array' });
    const mask = tracker.planColumns(statement, fieldsOf(result));
    const rows = (result.rows as unknown[][]).map((row) => row.map((v, i) => (mask[i] === 1 ? '***' : v)));
    // The unmasked result must have held the canary where the statement selects it.
    expect(leaks(rows), `${sql} leaked ${JSON.stringify(rows)}`).toBe(false);
    return { mask: [...mask], touches: r.touchesMasked, statement };
  } finally {
    await db.query('ROLLBACK');
  }
}

async function refused(sql: string): Promise<string> {
  const r = await tracker.analyze(sql);
  if (r.ok) throw new Error(`not refused: ${sql}`);
  expect(r.code).toBe('CC_ERR_PG_MASK_LINEAGE');
  return r.message;
}

describe('the examples of the issue', () => {
  it.each([
    ['SELECT ssn AS x FROM users', [1]],
    ["SELECT ssn || '' FROM users", [1]],
    ['SELECT upper(ssn) FROM users', [1]],
    ['SELECT row_to_json(u) FROM users u', [1]],
    ['SELECT u FROM users u', [1]],
    ['SELECT * FROM v_users', [0, 0, 1]],
    ['WITH c(a, b) AS (SELECT id, ssn FROM users) SELECT b, a FROM c', [1, 0]],
    ['SELECT json_agg(ssn) FROM users', [1]],
    ['SELECT array_agg(u) FROM users u', [1]],
  ])('%s', async (sql, expected) => {
    const c = await check(sql);
    expect(c.mask).toEqual(expected);
    expect(c.touches).toBe(true);
  });

  it('RETURNING ssn AS s2 (UPDATE, INSERT)', async () => {
    expect((await check('UPDATE users SET name = name WHERE id = 1 RETURNING id, ssn AS s2')).mask).toEqual([
      0, 1,
    ]);
    expect(
      (await check(`INSERT INTO users VALUES (3, 'cy', '${SSN[0]}', '1') RETURNING ssn AS s2, name`)).mask,
    ).toEqual([1, 0]);
  });

  it('cursors: the FETCH takes its plan from the DECLARE', async () => {
    const c = await check('FETCH ALL FROM cur', ['DECLARE cur CURSOR FOR SELECT name, ssn AS s FROM users']);
    expect(c.mask).toEqual([0, 1]);
  });

  it('ssn::int: the statement reads a masked column, so its error is withheld', async () => {
    const r = await tracker.analyze('SELECT ssn::int FROM users');
    expect(r).toMatchObject({ ok: true, touchesMasked: true });
    await expect(db.query('SELECT ssn::int FROM users')).rejects.toThrow(/SSNcanary/);
  });
});

describe('variants: expressions', () => {
  it.each([
    'SELECT concat(ssn) FROM users',
    "SELECT format('%s', ssn) FROM users",
    "SELECT COALESCE(ssn, '') FROM users",
    'SELECT substring(ssn from 1 for 30) FROM users',
    'SELECT CASE WHEN id > 0 THEN ssn END FROM users',
    'SELECT ssn::varchar(40) FROM users',
    "SELECT replace(ssn, '-', ' ') FROM users",
  ])('%s', async (sql) => {
    expect((await check(sql)).mask).toEqual([1]);
  });
});

describe('variants: whole rows and *', () => {
  it.each([
    ['SELECT to_jsonb(u) FROM users u', [1]],
    ['SELECT (u).ssn FROM users u', [1]],
    ['SELECT row(u.*)::text FROM users u', [1]],
    ['SELECT t FROM (SELECT * FROM users) t', [1]],
    ['SELECT * FROM users', [0, 0, 1, 1]],
    ['TABLE users', [0, 0, 1, 1]],
    ['SELECT u.* FROM users u', [0, 0, 1, 1]],
    ['SELECT (u).* FROM users u', [1, 1, 1, 1]],
    ['SELECT * FROM users JOIN orders USING (id)', [0, 0, 1, 1, 0, 0]],
    ['SELECT o.note, u.* FROM orders o JOIN users u ON u.id = o.user_id', [0, 0, 0, 1, 1]],
  ])('%s', async (sql, expected) => {
    expect((await check(sql)).mask).toEqual(expected);
  });
});

describe('variants: aggregates, subqueries, CTEs, set operations', () => {
  it.each([
    ["SELECT string_agg(ssn, ',') FROM users", [1]],
    ['SELECT array_agg(ssn ORDER BY id) FROM users', [1]],
    ['SELECT max(ssn), count(*) FROM users', [1, 0]],
    ['SELECT json_agg(u) FROM users u', [1]],
    ['SELECT s FROM (SELECT ssn AS s FROM users) q', [1]],
    ['SELECT (SELECT ssn FROM users LIMIT 1)', [1]],
    ['SELECT ARRAY(SELECT ssn FROM users)', [1]],
    ['SELECT x.v FROM users u, LATERAL (SELECT u.ssn AS v) x', [1]],
    ['SELECT v FROM users u CROSS JOIN LATERAL unnest(ARRAY[u.ssn]) AS f(v)', [1]],
    [
      'WITH RECURSIVE r(n, s) AS (SELECT 1, ssn FROM users WHERE id = 1 UNION ALL SELECT n + 1, s FROM r WHERE n < 2) SELECT n, s FROM r',
      [0, 1],
    ],
    ['WITH a AS (SELECT ssn FROM users), b AS (SELECT ssn AS t FROM a) SELECT t FROM b', [1]],
    ['SELECT name FROM users UNION ALL SELECT ssn FROM users', [1]],
    ['SELECT ssn FROM users INTERSECT SELECT ssn FROM users', [1]],
    ['VALUES ((SELECT ssn FROM users LIMIT 1), 1)', [1, 0]],
  ])('%s', async (sql, expected) => {
    expect((await check(sql)).mask).toEqual(expected);
  });
});

describe('variants: views, functions, RETURNING, cursors', () => {
  it.each([
    ['SELECT y, name FROM v_v', [1, 0]],
    ['SELECT * FROM v_v', [1, 0]],
    ['SELECT u, id FROM mv', [1, 0]],
    ['SELECT * FROM mv', [0, 1, 0]],
    ['SELECT tag FROM v_expr', [1]],
    ['SELECT v FROM v_users v', [1]],
    ['SELECT * FROM get_users()', [1, 1, 1, 1]],
    ['SELECT g.ssn, g.id FROM get_users() g', [1, 1]],
    ['SELECT leak()', [1]],
    ['SELECT get_users FROM get_users()', [1]],
    ["SELECT ssn || '' FROM users TABLESAMPLE SYSTEM (100)", [1]],
    ['SELECT * FROM users TABLESAMPLE SYSTEM (100) REPEATABLE (1)', [0, 0, 1, 1]],
  ])('%s', async (sql, expected) => {
    expect((await check(sql)).mask).toEqual(expected);
  });

  it('RETURNING variants: *, an expression, DELETE', async () => {
    expect((await check('UPDATE users SET name = name RETURNING *')).mask).toEqual([0, 0, 1, 1]);
    expect((await check('UPDATE users SET name = name RETURNING upper(ssn)')).mask).toEqual([1]);
    expect((await check('DELETE FROM users WHERE id = 2 RETURNING ssn || name')).mask).toEqual([1]);
    expect(
      (await check('WITH d AS (DELETE FROM users WHERE id = 2 RETURNING *) SELECT ssn, name FROM d')).mask,
    ).toEqual([1, 0]);
  });

  it('cursor variants: over a view, SELECT *, a cursor the gateway never saw', async () => {
    expect((await check('FETCH 5 FROM c1', ['DECLARE c1 CURSOR FOR SELECT * FROM v_users'])).mask).toEqual([
      0, 0, 1,
    ]);
    expect(
      (await check('FETCH NEXT FROM c2', ['DECLARE c2 SCROLL CURSOR FOR SELECT u FROM users u'])).mask,
    ).toEqual([1]);
    const unknown = await tracker.analyze('FETCH ALL FROM never_declared');
    expect(unknown).toMatchObject({ ok: true });
    const plan = unknown.ok ? unknown.statements[0]! : null;
    expect(plan?.maskAll).toBe(true);
    // SQL-level PREPARE / EXECUTE work the same way.
    expect((await check('EXECUTE p1', ['PREPARE p1 AS SELECT name, ssn FROM users'])).mask).toEqual([0, 1]);
  });
});

describe('what is not masked, and inference', () => {
  it.each([
    ['SELECT id, name FROM users', [0, 0], false],
    ['SELECT name FROM v_safe', [0], false],
    ['SELECT o.note FROM orders o', [0], false],
    // The inference no gateway can stop: the value is never returned, only facts about it.
    ["SELECT count(*) FROM users WHERE ssn LIKE 'SSN%'", [0], true],
    ['SELECT count(*) FROM users GROUP BY ssn', [0], true],
    ['SELECT name FROM users ORDER BY ssn', [0], true],
    ["SELECT EXISTS (SELECT 1 FROM users WHERE ssn = 'x')", [0], true],
  ])('%s', async (sql, expected, touches) => {
    const c = await check(sql);
    expect(c.mask).toEqual(expected);
    expect(c.touches).toBe(touches);
  });
});

describe('per-statement masks (a policy @mask)', () => {
  it('adds to the connection masks for one analysis only', async () => {
    await db.query('BEGIN');
    try {
      const r = await tracker.analyze('SELECT name, id FROM users', columnMatcher(['name']));
      const result = await db.query({ text: 'SELECT name, id FROM users', rowMode: 'array' });
      expect(r.ok && [...tracker.planColumns(r.statements[0]!, fieldsOf(result))]).toEqual([1, 0]);
      const plain = await tracker.analyze('SELECT name, id FROM users');
      expect(plain.ok && [...tracker.planColumns(plain.statements[0]!, fieldsOf(result))]).toEqual([0, 0]);
    } finally {
      await db.query('ROLLBACK');
    }
  });
});

describe('refusals (CC_ERR_PG_MASK_LINEAGE)', () => {
  it('statements that would copy masked values somewhere unmasked', async () => {
    expect(await refused('INSERT INTO orders (note) SELECT ssn FROM users')).toMatch(/INSERT would copy/);
    expect(await refused('UPDATE orders SET note = (SELECT ssn FROM users LIMIT 1)')).toMatch(/UPDATE/);
    expect(await refused('CREATE TABLE stolen AS SELECT ssn FROM users')).toMatch(/CREATE TABLE AS/);
    expect(await refused('SELECT u.ssn INTO stolen2 FROM users u')).toMatch(/SELECT INTO/);
    expect(await refused('COPY users TO STDOUT')).toMatch(/COPY TO/);
    expect(await refused('COPY (SELECT ssn FROM users) TO STDOUT')).toMatch(/COPY TO/);
  });

  it('what cannot be traced over a database with masked columns', async () => {
    expect(await refused("DO $$BEGIN RAISE NOTICE '%', (SELECT ssn FROM users LIMIT 1); END$$")).toMatch(
      /DO block/,
    );
    expect(await refused('SELECT * FROM accounts')).toMatch(/several schemas/);
    expect(await refused('SELECT * FROM temp_only')).toMatch(/not visible/);
    expect(
      await refused("CREATE FUNCTION f2() RETURNS text LANGUAGE sql AS 'SELECT ssn FROM users LIMIT 1'"),
    ).toMatch(/CreateFunctionStmt/);
  });

  it('statistics catalogs, functions that run SQL text, DDL that would unmask', async () => {
    await db.query('ANALYZE users');
    const stats = await db.query("SELECT histogram_bounds::text AS v FROM pg_stats WHERE attname = 'ssn'");
    expect(JSON.stringify(stats.rows)).toContain('SSNcanary');
    expect(await refused("SELECT most_common_vals FROM pg_stats WHERE attname = 'ssn'")).toMatch(
      /sample values/,
    );
    expect(await refused('SELECT stavalues1 FROM pg_catalog.pg_statistic')).toMatch(/sample values/);
    expect(await refused("SELECT query_to_xml('SELECT ssn FROM users', true, false, '')")).toMatch(
      /query_to_xml/,
    );
    expect(await refused("SELECT table_to_xml('users', true, false, '')")).toMatch(/table_to_xml/);
    expect(await refused("SELECT * FROM ts_stat('SELECT to_tsvector(ssn) FROM users')")).toMatch(/ts_stat/);
    expect(await refused('ALTER TABLE users RENAME COLUMN ssn TO plain')).toMatch(/RenameStmt/);
    expect(await refused('ALTER TABLE users ADD COLUMN copy text GENERATED ALWAYS AS (ssn) STORED')).toMatch(
      /AlterTableStmt/,
    );
    // DDL elsewhere is not lineage's business.
    expect((await tracker.analyze('ALTER TABLE orders ADD COLUMN extra int')).ok).toBe(true);
  });

  it('side channels and write paths found in review', async () => {
    expect(await refused("SELECT set_config('application_name', ssn, false) FROM users")).toMatch(
      /set_config/,
    );
    expect(await refused("SELECT pg_notify('c', upper(ssn)) FROM users")).toMatch(/pg_notify/);
    expect(await refused('SELECT lo_from_bytea(0, convert_to(ssn, $$UTF8$$)) FROM users')).toMatch(
      /lo_from_bytea/,
    );
    expect((await tracker.analyze("SELECT set_config('application_name', name, false) FROM users")).ok).toBe(
      true,
    );
    expect(
      await refused(
        "INSERT INTO users (id, ssn) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.ssn",
      ),
    ).toMatch(/ON CONFLICT/);
    expect(
      await refused(
        "INSERT INTO users (id, ssn) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET name = users.ssn",
      ),
    ).toMatch(/ON CONFLICT/);
    expect(
      (
        await tracker.analyze(
          "INSERT INTO users (id, ssn) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET ssn = EXCLUDED.ssn",
        )
      ).ok,
    ).toBe(true);
    expect(await refused('UPDATE orders SET (note, user_id) = (SELECT ssn, 1 FROM users LIMIT 1)')).toMatch(
      /UPDATE/,
    );
  });

  it('a write to a table with masked columns has its errors withheld, even when it names none', async () => {
    await db.query('BEGIN');
    try {
      await db.query('ALTER TABLE users ALTER COLUMN name SET NOT NULL');
      const sql = 'UPDATE users SET name = NULL WHERE id = 1';
      // The server puts the whole row, SSN included, in the error's detail.
      const error = await db.query(sql).catch((e: { detail?: string }) => e);
      expect(String((error as { detail?: string }).detail)).toContain('SSNcanary');
      expect(await tracker.analyze(sql)).toMatchObject({ ok: true, touchesMasked: true });
      expect(await tracker.analyze('UPDATE orders SET note = NULL')).toMatchObject({
        ok: true,
        touchesMasked: false,
      });
    } finally {
      await db.query('ROLLBACK');
    }
  });

  it('a * over a result of unknown shape still has its WHERE and INTO checked', async () => {
    expect(await refused('SELECT * INTO stolen3 FROM get_users()')).toMatch(/SELECT INTO/);
    const r = await tracker.analyze(
      "SELECT * FROM json_each('{}') j WHERE EXISTS (SELECT 1 FROM users WHERE ssn = 'x')",
    );
    expect(r).toMatchObject({ ok: true, touchesMasked: true });
  });

  it('a cursor over a failing cast: the FETCH (where the error arises) reads a masked column', async () => {
    const d = await tracker.analyze('DECLARE cx CURSOR FOR SELECT ssn::int FROM users');
    expect(d).toMatchObject({ ok: true, touchesMasked: true });
    const f = await tracker.analyze('FETCH ALL FROM cx');
    expect(f).toMatchObject({ ok: true, touchesMasked: true });
    const safe = await tracker.analyze(
      'DECLARE cy CURSOR FOR SELECT name FROM users; FETCH ALL FROM cy; SELECT ssn FROM users',
    );
    expect(safe.ok && safe.statements.map((s) => s.touchesMasked)).toEqual([false, false, true]);
    expect(safe.ok && safe.touchesMasked).toBe(true);
  });

  it('a qualified name resolves the ambiguity; a masked target column may receive masked values', async () => {
    expect((await check('SELECT * FROM public.accounts')).mask).toEqual([0, 1]);
    expect((await check('SELECT * FROM other.accounts')).mask).toEqual([0, 0]);
    const r = await tracker.analyze("UPDATE users SET ssn = ssn || 'x'");
    expect(r.ok).toBe(true);
  });
});

describe('the catalog helper', () => {
  it('caches lookups, and invalidate() drops them', async () => {
    const c = createPgCatalog({ host: '127.0.0.1', port: 5432, user: 'postgres', database: DB, capacity: 2 });
    const t = new LineageTracker({ masked: columnMatcher(MASKS), catalog: c });
    const r1 = await t.analyze('SELECT ssn FROM users');
    const first = c.queries;
    // The same text again: the tracker's result cache, no catalog query.
    expect(await t.analyze('SELECT ssn FROM users')).toBe(r1);
    expect(c.queries).toBe(first);
    c.invalidate();
    const r2 = await t.analyze('SELECT ssn FROM users');
    expect(r2).not.toBe(r1);
    expect(r2).toEqual(r1);
    expect(c.queries).toBeGreaterThan(first);
    // Cursor statements are analysed each time (they carry session state).
    await t.analyze('DECLARE k CURSOR FOR SELECT ssn FROM users');
    const f1 = await t.analyze('FETCH ALL FROM k');
    await t.analyze('CLOSE k');
    const f2 = await t.analyze('FETCH ALL FROM k');
    expect(f1.ok && f1.statements[0]!.maskAll).toBe(false);
    expect(f2.ok && f2.statements[0]!.maskAll).toBe(true);
    // Bounded: more relations than its capacity still answer correctly.
    for (const rel of ['users', 'orders', 'v_users', 'v_safe', 'mv', 'users']) {
      const r = await t.analyze(`SELECT * FROM ${rel}`);
      expect(r.ok).toBe(true);
    }
    await c.close();
  });

  it('fails closed when the upstream is unreachable', async () => {
    const c = createPgCatalog({ host: '127.0.0.1', port: 1, user: 'postgres', database: DB, timeoutMs: 500 });
    const t = new LineageTracker({ masked: columnMatcher(MASKS), catalog: c });
    await expect(t.analyze('SELECT ssn FROM users')).rejects.toMatchObject({
      code: 'CC_ERR_PG_UPSTREAM_UNREACHABLE',
    });
    await c.close();
  });
});
