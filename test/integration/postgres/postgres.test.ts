import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeStartup } from '../../../src/frontends/postgres/protocol/encode.js';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';

/** Values that must never appear in logs, audit, recordings or client-visible output. */
const CANARY = 'sk_live_CANARY_pg_7f3a9c1e5b2d4a6f';
const LOOKUP = 'alice.lookup@example.com';

let db: ThrowawayPostgres;
let gw: PgGateway;
let bot: { key: string; ref: string };
let other: { key: string; ref: string };
let ticket: string;
const seen: string[] = [];

function conninfo(user: string, password: string, database: string, sslmode = 'require'): string {
  return `postgresql://${user}:${password}@127.0.0.1:${gw.port}/${database}?sslmode=${sslmode}`;
}

async function connectAs(database: string, password = ticket, user = 'bot'): Promise<pg.Client> {
  const c = gw.client(user, password, database);
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

async function pgError(
  promise: Promise<unknown>,
): Promise<{ code: string; message: string; detail: string }> {
  try {
    await promise;
  } catch (error) {
    const e = error as { code: string; message: string; detail: string };
    seen.push(e.message, e.detail ?? '');
    return { code: e.code, message: e.message, detail: e.detail };
  }
  throw new Error('expected the statement to be refused');
}

beforeAll(async () => {
  db = await startThrowawayPostgres();
  const admin = db.direct();
  await admin.connect();
  await admin.query(`CREATE TABLE people (id int PRIMARY KEY, name text, email text, ssn text, note text)`);
  await admin.query(
    `INSERT INTO people SELECT g, 'name' || g, 'user' || g || '@example.com', '000-00-' || g, 'plain' FROM generate_series(1, 10) g`,
  );
  await admin.query(`UPDATE people SET email = $1, note = $2 WHERE id = 1`, [LOOKUP, `key=${CANARY};`]);
  await admin.query('CREATE TABLE items (id int, label text)');
  await admin.end();
  gw = await startPgGateway();
  bot = await gw.createAgent('bot');
  other = await gw.createAgent('other');
  const all = ['conn:main', 'conn:multi', 'conn:ro', 'conn:noddl', 'conn:approve', 'conn:masked'];
  await gw.addSecret('dbpw', db.password, all);
  await gw.addSecret('api-key', CANARY, ['conn:main', 'conn:masked']);
  await gw.addSecret('lookup', LOOKUP, ['conn:main'], { allowSql: ['main'] });
  await gw.addConnection('main', db.url, { credential: 'dbpw' });
  await gw.addConnection('multi', db.url, { credential: 'dbpw', rules: { databases: ['template1'] } });
  await gw.addConnection('ro', db.url, { credential: 'dbpw', rules: { readOnly: true } });
  await gw.addConnection('noddl', db.url, { credential: 'dbpw', rules: { blockDdl: true } });
  await gw.addConnection('approve', db.url, {
    credential: 'dbpw',
    rules: { requireApprovalForWrites: true },
  });
  await gw.addConnection('masked', db.url, {
    credential: 'dbpw',
    rules: { maskColumns: ['*email*', 'SSN'], rowLimit: 5 },
  });
  ticket = await gw.issue('dbpw', bot.ref, all);
}, 120_000);

afterAll(async () => {
  await gw?.close();
  db?.stop();
});

describe('login', () => {
  it('logs in with a ticket over TLS with psql and runs a simple query', async () => {
    const r = await gw.psql(conninfo('bot', ticket, 'main'), ['-At', '-c', 'SELECT count(*) FROM people']);
    seen.push(r.stdout, r.stderr);
    expect(r).toMatchObject({ code: 0, stdout: '10\n' });
  });

  it('refuses the agent key under the built-in policy: a key is bound to no connection, a ticket is needed', async () => {
    const r = await gw.psql(conninfo('bot', bot.key, 'main'), ['-At', '-c', 'SELECT current_user']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('an agent key does not open connection main under the built-in policy');
    expect(r.stderr).toContain('CC_ERR_PG_LOGIN_FAILED');
  });

  it('verifies the gateway certificate (verify-full) with node-postgres', async () => {
    const c = gw.client('bot', ticket, 'main', {
      ca: readFileSync(gw.frontend.tls.cert, 'utf8'),
      rejectUnauthorized: true,
    });
    await c.connect();
    expect((await c.query('SELECT 41 + 1 AS n')).rows).toEqual([{ n: 42 }]);
    await c.end();
  });

  it('refuses a ticket presented by another agent (principal binding)', async () => {
    const e = await pgError(connectAs('main', ticket, 'other'));
    expect(e.code).toBe('28P01');
    expect(e.detail).toBe('CC_ERR_PG_LOGIN_FAILED');
    expect(e.message).toContain('CC_ERR_TICKET_WRONG_PRINCIPAL');
  });

  it('refuses a ticket for another connection', async () => {
    const narrow = await gw.issue('dbpw', bot.ref, ['conn:ro']);
    const e = await pgError(connectAs('main', narrow));
    expect(e.code).toBe('28P01');
    expect(e.message).toContain('CC_ERR_TICKET_WRONG_DESTINATION');
  });

  it('refuses an agent key presented under another agent name', async () => {
    const e = await pgError(connectAs('main', other.key, 'bot'));
    expect(e.code).toBe('28P01');
  });

  it('refuses a password that is neither a ticket nor an agent key, and an unknown connection', async () => {
    expect((await pgError(connectAs('main', 'hunter2'))).code).toBe('28P01');
    const e = await pgError(connectAs('nope'));
    expect(e.code).toBe('3D000');
    expect(e.detail).toBe('CC_ERR_PG_DATABASE_INVALID');
  });

  it('lets a client pick another database as <connection>/<database> only when the connection lists it', async () => {
    const picked = await connectAs('multi/template1');
    expect((await picked.query('SELECT current_database() AS db')).rows).toEqual([{ db: 'template1' }]);
    await picked.end();
    const plain = await connectAs('multi');
    expect((await plain.query('SELECT current_database() AS db')).rows).toEqual([{ db: 'postgres' }]);
    await plain.end();
    const notListed = await pgError(connectAs('multi/other'));
    expect(notListed).toMatchObject({ code: '3D000', detail: 'CC_ERR_PG_DATABASE_INVALID' });
    expect(notListed.message).toBe('coatcheck: connection multi does not allow database other');
    const noChoice = await pgError(connectAs('main/template1'));
    expect(noChoice).toMatchObject({
      code: '3D000',
      message: 'coatcheck: connection main does not allow database template1',
    });
  });

  it('requires TLS for the password on a non-loopback listener', async () => {
    const open = await startPgGateway({}, '0.0.0.0');
    try {
      const agent = await open.createAgent('bot');
      await open.addSecret('dbpw', db.password, ['conn:main']);
      await open.addConnection('main', db.url, { credential: 'dbpw' });
      const t = await open.issue('dbpw', agent.ref, ['conn:main']);
      const plain = open.client('bot', t, 'main');
      plain.on('error', () => undefined);
      const e = await pgError(plain.connect());
      expect(e.code).toBe('28000');
      expect(e.detail).toBe('CC_ERR_PG_TLS_REQUIRED');
      const secure = open.client('bot', t, 'main', { rejectUnauthorized: false });
      await secure.connect();
      expect((await secure.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
      await secure.end();
    } finally {
      await open.close();
    }
  });
});

describe('relay', () => {
  it('runs prepared statements repeatedly', async () => {
    const c = await connectAs('main');
    for (const id of [1, 2, 3]) {
      const r = await c.query({ name: 'by-id', text: 'SELECT name FROM people WHERE id = $1', values: [id] });
      expect(r.rows).toEqual([{ name: `name${id}` }]);
    }
    await c.end();
  });

  it('keeps transactions: rollback discards, commit keeps', async () => {
    const c = await connectAs('main');
    await c.query('BEGIN');
    await c.query("INSERT INTO items VALUES (1, 'rolled back')");
    await c.query('ROLLBACK');
    await c.query('BEGIN');
    await c.query('INSERT INTO items VALUES ($1, $2)', [2, 'kept']);
    await c.query('COMMIT');
    expect((await c.query('SELECT id, label FROM items ORDER BY id')).rows).toEqual([
      { id: 2, label: 'kept' },
    ]);
    await c.end();
  });

  it('carries COPY in and out with psql', async () => {
    const info = conninfo('bot', ticket, 'main');
    const copyIn = await gw.psql(info, ['-c', 'COPY items FROM STDIN'], '10\tten\n11\televen\n\\.\n');
    expect(copyIn).toMatchObject({ code: 0, stdout: 'COPY 2\n' });
    const copyOut = await gw.psql(info, [
      '-c',
      'COPY (SELECT id, label FROM items WHERE id >= 10 ORDER BY id) TO STDOUT',
    ]);
    expect(copyOut).toMatchObject({ code: 0, stdout: '10\tten\n11\televen\n' });
  });

  it('forwards a cancel request to the right upstream backend', async () => {
    const c = await connectAs('main');
    const { processID, secretKey } = c as unknown as { processID: number; secretKey: number };
    const running = c.query('SELECT pg_sleep(30)');
    await new Promise((r) => setTimeout(r, 300));
    const cancel = connect({ host: '127.0.0.1', port: gw.port });
    await new Promise<void>((resolve) => cancel.once('connect', () => resolve()));
    cancel.end(encodeStartup({ type: 'CancelRequest', processId: processID, secretKey }));
    const e = await pgError(running);
    expect(e.code).toBe('57014');
    expect((await c.query('SELECT 1 AS after')).rows).toEqual([{ after: 1 }]);
    await c.end();
  });

  it('relays notifications', async () => {
    const listener = await connectAs('main');
    const notified = new Promise<pg.Notification>((resolve) => listener.once('notification', resolve));
    await listener.query('LISTEN jobs');
    const sender = await connectAs('main');
    await sender.query("NOTIFY jobs, 'hello'");
    expect(await notified).toMatchObject({ channel: 'jobs', payload: 'hello' });
    await listener.end();
    await sender.end();
  });
});

describe('rules', () => {
  it('read-only: refuses writes (also in a CTE and via functions) with 42501, the session stays usable', async () => {
    const c = await connectAs('ro');
    let e = await pgError(c.query("INSERT INTO items VALUES (99, 'x')"));
    expect(e).toMatchObject({ code: '42501', detail: 'CC_ERR_PG_STATEMENT_DENIED' });
    expect(e.message).toContain('read-only');
    e = await pgError(c.query('WITH d AS (DELETE FROM items RETURNING *) SELECT count(*) FROM d'));
    expect(e.code).toBe('42501');
    e = await pgError(c.query("SELECT set_config('default_transaction_read_only', 'off', false)"));
    expect(e.message).toContain('read-only (privilege READ WRITE)');
    e = await pgError(c.query('UPDATE items SET label = $1', ['y']));
    expect(e.code).toBe('42501');
    expect((await c.query('SELECT count(*)::int AS n FROM people')).rows).toEqual([{ n: 10 }]);
    await c.end();
  });

  it('block-ddl: refuses DDL and privilege changes', async () => {
    const c = await connectAs('noddl');
    let e = await pgError(c.query('CREATE TABLE x (a int)'));
    expect(e.code).toBe('42501');
    expect(e.message).toContain('block-ddl');
    e = await pgError(c.query('GRANT SELECT ON people TO PUBLIC'));
    expect(e.message).toContain('block-ddl (privilege)');
    await c.query("INSERT INTO items VALUES (50, 'writes are fine')");
    await c.end();
  });

  it('require-approval-for-writes: refuses with a clear message; a refusal aborts the transaction block', async () => {
    const c = await connectAs('approve');
    await c.query('BEGIN');
    await c.query('SELECT 1');
    const e = await pgError(c.query("INSERT INTO items VALUES (60, 'x')"));
    expect(e).toMatchObject({ code: '42501', detail: 'CC_ERR_PG_APPROVAL_REQUIRED' });
    expect(e.message).toContain('require-approval-for-writes');
    expect((await pgError(c.query('SELECT 2'))).code).toBe('25P02');
    const commit = await c.query('COMMIT');
    expect(commit.command).toBe('ROLLBACK');
    expect((await c.query('SELECT 3 AS n')).rows).toEqual([{ n: 3 }]);
    await c.end();
  });

  it('refuses a statement that does not parse (42601)', async () => {
    const c = await connectAs('main');
    const e = await pgError(c.query('SELEC 1'));
    expect(e).toMatchObject({ code: '42601', detail: 'CC_ERR_PG_STATEMENT_UNPARSABLE' });
    await c.end();
  });

  it('refuses the most dangerous statement of a multi-statement query with psql', async () => {
    const r = await gw.psql(conninfo('bot', ticket, 'ro'), ['-c', 'SELECT 1; DROP TABLE items; SELECT 2']);
    seen.push(r.stdout, r.stderr);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('read-only (ddl)');
  });
});

describe('masking', () => {
  it('masks columns by name pattern, applies the row limit, and turns known secrets into tickets', async () => {
    const c = await connectAs('masked');
    const r = await c.query('SELECT id, email, ssn, note FROM people ORDER BY id');
    expect(r.rows).toHaveLength(5);
    expect(r.rows[1]).toEqual({ id: 2, email: '***', ssn: '***', note: 'plain' });
    const note = r.rows[0].note as string;
    seen.push(note);
    expect(note).not.toContain(CANARY);
    expect(note).toMatch(/^key=cct_[0-9A-Za-z]{28};$/);
    // Prepared (extended protocol) results are masked the same way.
    const p = await c.query({ name: 'p', text: 'SELECT email, note FROM people WHERE id = $1', values: [1] });
    expect(p.rows[0].email).toBe('***');
    expect(p.rows[0].note).toMatch(/^key=cct_/);
    await c.end();
  });

  it('refuses COPY TO on a connection with mask rules', async () => {
    const c = await connectAs('masked');
    const e = await pgError(c.query('COPY people TO STDOUT'));
    expect(e.message).toContain('mask-columns');
    await c.end();
  });
});

describe('tickets in SQL', () => {
  it('exchanges a ticket in a WHERE literal and as a bound parameter, audited', async () => {
    const lookup = await gw.issue('lookup', bot.ref, ['conn:main']);
    const c = await connectAs('main');
    const r = await c.query(`SELECT id FROM people WHERE email = '${lookup}'`);
    expect(r.rows).toEqual([{ id: 1 }]);
    const p = await c.query('SELECT id FROM people WHERE email = $1', [lookup]);
    expect(p.rows).toEqual([{ id: 1 }]);
    await c.end();
    const records = await auditRecords();
    const exchanges = records.filter(
      (a) =>
        a.type === 'token.exchange' && a.actor === bot.ref && a.data.operation === 'postgres read on main',
    );
    expect(exchanges.length).toBe(2);
    const statements = records
      .filter((a) => a.type === 'postgres.query')
      .flatMap((a) => a.data.statements as Array<Record<string, unknown>>);
    const withTicket = statements.find((s) => String(s.sql).includes("email = 'tkt_"));
    expect(withTicket).toMatchObject({ class: 'read', decision: 'allow', outcome: 'ok', rows: 1 });
    expect(withTicket?.tickets).toHaveLength(1);
  });

  it('refuses a ticket bound to another agent, and the session stays usable', async () => {
    const foreign = await gw.issue('lookup', other.ref, ['conn:main']);
    const c = await connectAs('main');
    const e = await pgError(c.query(`SELECT id FROM people WHERE email = '${foreign}'`));
    expect(e.code).toBe('42501');
    expect(e.detail).toBe('CC_ERR_TICKET_WRONG_PRINCIPAL');
    expect((await c.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
    await c.end();
  });

  it('refuses a ticket outside a string literal', async () => {
    const lookup = await gw.issue('lookup', bot.ref, ['conn:main']);
    const c = await connectAs('main');
    const e = await pgError(c.query(`SELECT 1 -- ${lookup}`));
    expect(e.message).toContain('ticket-placement');
    await c.end();
  });
});

async function auditRecords(): Promise<
  Array<{ type: string; actor: string; data: Record<string, unknown> }>
> {
  const rows: Array<{ type: string; actor: string; data: Record<string, unknown> }> = [];
  await gw.settled();
  let after = 0;
  for (;;) {
    const page = await gw.ctx.store.readAudit(after, 500);
    if (page.length === 0) return rows;
    for (const r of page)
      rows.push({ type: r.type, actor: r.actor, data: r.data as Record<string, unknown> });
    after = page.at(-1)!.seq;
  }
}

describe('revocation', () => {
  it('ends a live session when its login ticket is revoked (57P01)', async () => {
    const own = await gw.issue('dbpw', bot.ref, ['conn:main']);
    const c = await connectAs('main', own);
    expect((await c.query('SELECT 1 AS n')).rows).toEqual([{ n: 1 }]);
    const ended = new Promise<{ code: string }>((resolve) => c.once('error', (e) => resolve(e as never)));
    await gw.ctx.vault.revokeTicket(own, 'admin:test');
    const e = await ended;
    seen.push(String((e as unknown as Error).message));
    expect(e.code).toBe('57P01');
  });
});

describe('canary', () => {
  it('never shows the database password, the canary secret or a ticket in logs, audit, recordings or errors', async () => {
    await gw.frontend.recorder.flush();
    const records = JSON.stringify(await auditRecords());
    const sessions = JSON.stringify(await gw.ctx.store.listSessions({ limit: 1000 }));
    const logs = gw.logs();
    const errors = seen.join('\n');
    expect(sessions).toContain('postgres');
    // Recordings replay each statement: class, decision, duration and rows, with tickets as ids.
    const recorded = (await gw.ctx.store.listSessions({ limit: 1000 })).flatMap(
      (s) => (s.summary.events as Array<{ type: string; data: Record<string, unknown> }>) ?? [],
    );
    const statement = recorded.find(
      (e) => e.type === 'statement' && e.data.sql === 'SELECT count(*) FROM people',
    );
    expect(statement?.data).toMatchObject({ class: 'read', decision: 'allow', outcome: 'ok', rows: 1 });
    expect(recorded.some((e) => e.type === 'statement' && String(e.data.sql).includes("email = 'tkt_"))).toBe(
      true,
    );
    for (const text of [records, sessions, logs, errors]) {
      expect(text).not.toContain(CANARY);
      expect(text).not.toContain(db.password);
      expect(text).not.toContain(ticket);
      expect(text).not.toContain(bot.key);
    }
    expect(records).not.toContain(LOOKUP);
  });
});
