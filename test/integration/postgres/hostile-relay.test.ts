import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { errorCode, errorField } from './raw-client.js';
import {
  B,
  C,
  CANARY,
  D,
  E,
  leaked,
  login,
  P,
  Q,
  type RelayFixture,
  ROW_LIMIT,
  readies,
  resultSizes,
  S,
  scalar,
  startRelayFixture,
  values,
} from './relay-fixture.js';

let f: RelayFixture;

beforeAll(async () => {
  f = await startRelayFixture();
}, 120_000);

afterAll(async () => {
  await f?.close();
});

beforeEach(async () => {
  await scalar(f, 'TRUNCATE sink');
});

const SELECT_ALL = 'SELECT id, name, secret, ssn FROM people ORDER BY id';

describe('pipelined results reach their own statement', () => {
  it('masks and row-limits every one of many pipelined simple queries', async () => {
    const c = await login(f);
    c.write(Buffer.concat(Array.from({ length: 20 }, () => Q(SELECT_ALL))));
    const got = await readies(c, 20);
    expect(leaked(c)).toBe(false);
    expect(resultSizes(got)).toEqual(Array(20).fill(ROW_LIMIT));
    expect(values(got).filter((v) => v === '***')).toHaveLength(20 * ROW_LIMIT * 2);
    c.close();
  });

  it('masks and row-limits every one of many pipelined extended batches', async () => {
    const c = await login(f);
    const batch = Buffer.concat([P('', SELECT_ALL), B('', ''), D('P', ''), E(''), S]);
    c.write(Buffer.concat(Array.from({ length: 50 }, () => batch)));
    const got = await readies(c, 50);
    expect(leaked(c)).toBe(false);
    expect(resultSizes(got)).toEqual(Array(50).fill(ROW_LIMIT));
    c.close();
  });

  it('a statement description does not outlive its statement (Parse over a closed name)', async () => {
    const c = await login(f);
    c.write(Buffer.concat([P('s1', 'SELECT id, name FROM people'), D('S', 's1'), S]));
    await readies(c, 1);
    // Same name, other columns, never described: its rows cannot be matched to the old description.
    c.write(Buffer.concat([C('S', 's1'), P('s1', 'SELECT secret, ssn FROM people'), B('', 's1'), E(''), S]));
    await readies(c, 1);
    expect(leaked(c)).toBe(false);
    c.close();
  });

  it('a portal description does not outlive its portal (variant: Bind over a used portal name)', async () => {
    const c = await login(f);
    c.write(Buffer.concat([P('a', 'SELECT id, name FROM people'), B('p', 'a'), D('P', 'p'), E('p'), S]));
    await readies(c, 1);
    c.write(Buffer.concat([P('b', 'SELECT secret, name FROM people'), B('p', 'b'), E('p'), S]));
    await readies(c, 1);
    expect(leaked(c)).toBe(false);
    c.close();
  });

  it('applies the policy mask to a protocol Bind of a SQL PREPARE', async () => {
    const c = await login(f);
    c.write(Q('PREPARE sqlprep AS SELECT id, secret FROM people ORDER BY id'));
    await readies(c, 1);
    c.write(Buffer.concat([B('', 'sqlprep'), D('P', ''), E(''), S]));
    const got = await readies(c, 1);
    expect(leaked(c)).toBe(false);
    expect(values(got).filter((v) => v === '***')).toHaveLength(ROW_LIMIT);
    c.close();
  });

  it('counts the row limit per portal across Executes with a row count (variant)', async () => {
    const c = await login(f);
    c.write(Q('BEGIN'));
    await readies(c, 1);
    c.write(
      Buffer.concat([
        P('', 'SELECT id FROM people'),
        B('cur', ''),
        D('P', 'cur'),
        ...Array.from({ length: 8 }, () => E('cur', 1)),
        S,
      ]),
    );
    const got = await readies(c, 1);
    expect(values(got)).toHaveLength(ROW_LIMIT);
    c.write(Q('ROLLBACK'));
    await readies(c, 1);
    c.close();
  });

  it('counts the row limit per cursor across FETCHes (variant)', async () => {
    const c = await login(f);
    c.write(
      Buffer.concat([
        Q('BEGIN'),
        Q('DECLARE cur CURSOR FOR SELECT id, secret FROM people ORDER BY id'),
        ...Array.from({ length: 5 }, () => Q('FETCH 2 FROM cur')),
        Q('COMMIT'),
      ]),
    );
    const got = await readies(c, 8);
    expect(values(got).filter((v) => v !== '***')).toHaveLength(ROW_LIMIT);
    expect(leaked(c)).toBe(false);
    c.close();
  });
});

describe('a refusal inside a pipelined transaction aborts it, as PostgreSQL would', () => {
  it('BEGIN; INSERT; <refused>; INSERT; COMMIT pipelined as simple queries commits nothing', async () => {
    const c = await login(f);
    c.write(
      Buffer.concat([
        Q('BEGIN'),
        Q("INSERT INTO sink VALUES (1, 'a')"),
        Q('DROP TABLE people'),
        Q("INSERT INTO sink VALUES (2, 'b')"),
        Q('COMMIT'),
      ]),
    );
    const got = await readies(c, 5);
    expect(errorField(got, 'D')).toBe('CC_ERR_POLICY_DENIED');
    expect(
      got.filter((m) => m.type === 'ReadyForQuery').map((m) => (m as { status: string }).status),
    ).toEqual(['T', 'T', 'E', 'E', 'I']);
    expect(got.find((m) => m.type === 'CommandComplete' && m.tag === 'ROLLBACK')).toBeDefined();
    expect(await scalar(f, 'SELECT count(*)::int FROM sink')).toBe(0);
    c.close();
  });

  it('the same in the extended protocol (variant)', async () => {
    const c = await login(f);
    const insert = (n: number) => [P('', `INSERT INTO sink VALUES (${n}, 'x')`), B('', ''), E(''), S];
    c.write(
      Buffer.concat([
        Q('BEGIN'),
        ...insert(1),
        P('', 'DROP TABLE people'),
        B('', ''),
        E(''),
        S,
        ...insert(2),
        Q('COMMIT'),
      ]),
    );
    const got = await readies(c, 5);
    expect(errorField(got, 'D')).toBe('CC_ERR_POLICY_DENIED');
    expect(await scalar(f, 'SELECT count(*)::int FROM sink')).toBe(0);
    c.close();
  });

  it('a refused ticket exchange inside a pipelined transaction aborts it too (variant)', async () => {
    // A real ticket, but bound to another agent: its exchange is refused.
    const other = await f.gw.createAgent(`other-${Date.now()}`);
    const foreign = await f.gw.issue('canary', other.ref, ['conn:main']);
    const c = await login(f);
    c.write(
      Buffer.concat([
        Q('BEGIN'),
        Q("INSERT INTO sink VALUES (1, 'a')"),
        Q(`INSERT INTO sink VALUES (2, '${foreign}')`),
        Q("INSERT INTO sink VALUES (3, 'c')"),
        Q('COMMIT'),
      ]),
    );
    const got = await readies(c, 5);
    expect(errorField(got, 'M')).toMatch(/^coatcheck: ticket refused/);
    expect(await scalar(f, 'SELECT count(*)::int FROM sink')).toBe(0);
    c.close();
  });

  it('a savepoint recovers from a pipelined refusal exactly as from a server error (variant)', async () => {
    const c = await login(f);
    c.write(
      Buffer.concat([
        Q('BEGIN'),
        Q('SAVEPOINT a'),
        Q("INSERT INTO sink VALUES (1, 'a')"),
        Q('DROP TABLE people'),
        Q('ROLLBACK TO SAVEPOINT a'),
        Q("INSERT INTO sink VALUES (2, 'b')"),
        Q('COMMIT'),
      ]),
    );
    const got = await readies(c, 7);
    expect(
      got.filter((m) => m.type === 'ReadyForQuery').map((m) => (m as { status: string }).status),
    ).toEqual(['T', 'T', 'T', 'E', 'T', 'T', 'I']);
    expect(await scalar(f, "SELECT string_agg(b, ',') FROM sink")).toBe('b');
    c.close();
  });
});

describe('policy decides each statement on its normalised facts', () => {
  it('a padded SELECT does not carry a forbidden DELETE past the forbid', async () => {
    const c = await login(f);
    c.query(`SELECT 1 /*${'x'.repeat(9000)}*/; DELETE FROM users`);
    const got = await readies(c, 1);
    expect(errorField(got, 'D')).toBe('CC_ERR_POLICY_DENIED');
    expect(errorField(got, 'M')).toBe('coatcheck: forbidden by policy no-delete-users');
    expect(await scalar(f, 'SELECT count(*)::int FROM users')).toBe(2);
    c.close();
  });

  it.each([
    'delete from users',
    'DeLeTe   FROM\n\tusers',
    'DELETE/**/FROM/* x */users',
    'delete -- comment\n from users',
  ])('like rules match normalised text: %j is forbidden', async (sql) => {
    const c = await login(f);
    c.query(sql);
    const got = await readies(c, 1);
    expect(errorField(got, 'M')).toBe('coatcheck: forbidden by policy no-delete-users');
    expect(await scalar(f, 'SELECT count(*)::int FROM users')).toBe(2);
    c.close();
  });

  it('a forbidden statement hidden after 8 KiB in one Query with several statements is forbidden (variant)', async () => {
    const c = await login(f);
    c.query(`SELECT '${'y'.repeat(9000)}'; SELECT 2; drop table users`);
    const got = await readies(c, 1);
    expect(errorField(got, 'M')).toBe('coatcheck: forbidden by policy no-drop');
    expect(await scalar(f, "SELECT count(*)::int FROM pg_tables WHERE tablename = 'users'")).toBe(1);
    c.close();
  });

  it('a refusal answers in its place between pipelined masked results (variant)', async () => {
    const c = await login(f);
    c.write(
      Buffer.concat([
        Q('SELECT secret FROM people LIMIT 1'),
        Q('drop table users'),
        Q('SELECT secret FROM people LIMIT 1'),
      ]),
    );
    const got = await readies(c, 3);
    expect(got.map((m) => m.type)).toEqual([
      'RowDescription',
      'DataRow',
      'CommandComplete',
      'ReadyForQuery',
      'ErrorResponse',
      'ReadyForQuery',
      'RowDescription',
      'DataRow',
      'CommandComplete',
      'ReadyForQuery',
    ]);
    expect(errorCode(got)).toBe('42501');
    expect(values(got)).toEqual(['***', '***']);
    c.close();
  });
});

describe('refusal bursts and clients that do not read', () => {
  it('batches the audit records of many pipelined refusals; each is answered, in order', async () => {
    await f.gw.settled();
    const before = (await f.gw.ctx.store.readAudit(0, 1_000_000)).length;
    const c = await login(f, 'ro');
    const n = 5000;
    c.write(Buffer.concat(Array.from({ length: n }, (_, i) => Q(`INSERT INTO sink VALUES (${i % 7}, 'r')`))));
    const got = await readies(c, n);
    expect(got.filter((m) => m.type === 'ErrorResponse')).toHaveLength(n);
    c.close();
    await f.gw.settled();
    const records = (await f.gw.ctx.store.readAudit(0, 1_000_000)).slice(before);
    const queries = records.filter((r) => r.type === 'postgres.query');
    const refused = queries
      .flatMap((r) => (r.data as { statements: Array<{ decision: string; count?: number }> }).statements)
      .filter((s) => s.decision === 'deny');
    expect(refused.reduce((sum, s) => sum + (s.count ?? 1), 0)).toBe(n);
    expect(queries.length).toBeLessThan(n / 10);
  }, 60_000);
});

describe('audit and approvers never see a secret typed into SQL', () => {
  it('scrubs a known secret and a detector finding from postgres.query records', async () => {
    await f.gw.settled();
    const before = (await f.gw.ctx.store.readAudit(0, 1_000_000)).length;
    const aws = 'AKIAIOSFODNN7EXAMPL2';
    const c = await login(f);
    c.write(
      Buffer.concat([
        Q(`SELECT '${CANARY}' AS a`),
        Q(`SELECT '${aws}' AS b`),
        Q(`DROP TABLE "${CANARY}"`),
        Q(`SELECT E'${CANARY.replace('Z', '\\x5a')}' || '${CANARY}'`),
      ]),
    );
    await readies(c, 4);
    c.close();
    await f.gw.settled();
    const records = JSON.stringify((await f.gw.ctx.store.readAudit(0, 1_000_000)).slice(before));
    expect(records).toContain('postgres.query');
    expect(records).not.toContain(CANARY);
    expect(records).not.toContain(aws);
    expect(f.gw.logs()).not.toContain(CANARY);
  });
});

describe('a client that does not read', () => {
  it('is owed a bounded amount: refusals are answered through the server, under backpressure', async () => {
    await f.gw.settled();
    const before = (await f.gw.ctx.store.readAudit(0, 1_000_000)).length;
    const c = await login(f, 'ro');
    c.socket.pause();
    const n = 100_000;
    c.write(Buffer.concat(Array.from({ length: n }, () => Q('INSERT INTO sink VALUES (1)'))));
    // What the gateway holds for a client that does not read stays near its bound (1 MiB),
    // however many refusals the client has pipelined; once it reads, every one is answered.
    const relay = [...f.gw.frontend.engine.live].at(-1) as unknown as { owedBytes: number };
    let most = 0;
    for (const until = Date.now() + 5000; Date.now() < until; ) {
      most = Math.max(most, relay.owedBytes);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(most).toBeLessThan(2 * 1024 * 1024);
    c.socket.resume();
    const got = await readies(c, n);
    expect(got.filter((m) => m.type === 'ErrorResponse')).toHaveLength(n);
    c.close();
    // And the burst was audited in a few batched records, not one record per refusal.
    await f.gw.settled();
    const records = (await f.gw.ctx.store.readAudit(0, 1_000_000)).slice(before);
    expect(records.filter((r) => r.type === 'postgres.query').length).toBeLessThan(n / 100);
  }, 120_000);
});

describe('with real clients', () => {
  it('psql: a padded multi-statement -c and lower-case SQL do not pass the forbid', async () => {
    const conninfo = `postgresql://bot:${f.key}@127.0.0.1:${f.gw.port}/main?sslmode=disable`;
    const padded = await f.gw.psql(conninfo, ['-c', `SELECT 1 /*${'x'.repeat(9000)}*/; delete from users`]);
    expect(padded.stderr).toContain('forbidden by policy no-delete-users');
    const piped = await f.gw.psql(conninfo, ['-f', '-'], 'SELECT 1;\ndelete\n  from users;\nSELECT 2;\n');
    expect(piped.stderr).toContain('forbidden by policy no-delete-users');
    expect(await scalar(f, 'SELECT count(*)::int FROM users')).toBe(2);
  });

  it('node-postgres: a named prepared statement run with new values is masked each time, and policy sees each run', async () => {
    const client = f.gw.client('bot', f.key, 'main');
    await client.connect();
    try {
      const q = { name: 'by-id', text: 'SELECT id, secret, ssn FROM people WHERE id >= $1 ORDER BY id' };
      for (const v of [1, 5, 8]) {
        const r = await client.query({ ...q, values: [v] });
        expect(r.rows.length).toBeLessThanOrEqual(3);
        for (const row of r.rows) expect([row.secret, row.ssn]).toEqual(['***', '***']);
      }
      const del = { name: 'del', text: 'delete from users where id = $1' };
      await expect(client.query({ ...del, values: [1] })).rejects.toMatchObject({
        detail: 'CC_ERR_POLICY_DENIED',
        message: 'coatcheck: forbidden by policy no-delete-users',
      });
    } finally {
      await client.end();
    }
  });
});
