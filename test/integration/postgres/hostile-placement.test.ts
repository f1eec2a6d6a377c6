import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';

/**
 * Tickets inside SQL text hand the secret to something the agent can read back: a cast
 * error, `reverse()`, `encode()`, the server log, `pg_stat_activity`. A connection's
 * login credential is used to log in and nowhere else; any other secret is substituted
 * into SQL only when it is bound to the sql placement on that connection. Real server
 * (a throwaway one with a real password: the canary), real clients (node-postgres, psql).
 */
let db: ThrowawayPostgres;
let gw: PgGateway;
let bot: { key: string; ref: string };
let login: string;
const LOOKUP = 'placement-lookup-canary-7a6b5c4d';
const NOSQL = 'placement-nosql-canary-1f2e3d4c';
/** Every message, detail and output a client saw. */
const seen: string[] = [];

async function connectAs(database: string, password = login): Promise<pg.Client> {
  const c = gw.client('bot', password, database);
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

async function pgError(
  promise: Promise<unknown>,
): Promise<{ code: string; message: string; detail: string }> {
  try {
    const r = await promise;
    seen.push(JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? String(v) : v)));
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
  await admin.query('CREATE TABLE http_placement_sink (v text)');
  await admin.query('CREATE TABLE http_placement_keys (id int, v text)');
  await admin.query('INSERT INTO http_placement_keys VALUES (1, $1)', [LOOKUP]);
  await admin.end();
  gw = await startPgGateway();
  bot = await gw.createAgent('bot');
  await gw.addSecret('dbpw', db.password, ['conn:main', 'conn:other']);
  await gw.addConnection('main', db.url, { credential: 'dbpw' });
  await gw.addConnection('other', db.url, { credential: 'dbpw' });
  // Bound to SQL on `main` only (secret add … --allow-sql main).
  await gw.addSecret('lookup', LOOKUP, ['conn:main', 'conn:other'], { allowSql: ['main'] });
  // Allowed to the connection, but with the default placement (credential).
  await gw.addSecret('nosql', NOSQL, ['conn:main']);
  login = await gw.issue('dbpw', bot.ref, ['conn:main', 'conn:other']);
}, 120_000);

afterAll(async () => {
  await gw?.close();
  db?.stop();
});

describe('the login credential is for login only', () => {
  it('refuses the login ticket in a literal cast to int (the error would echo the password)', async () => {
    const c = await connectAs('main');
    const e = await pgError(c.query(`SELECT '${login}'::int`));
    expect(e.detail).toBe('CC_ERR_TICKET_PLACEMENT');
    expect(e.message).not.toContain(db.password);
    // The session stays usable.
    expect((await c.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
    await c.end();
  });

  it('refuses it inside reverse(), encode() and a LIKE pattern (transformations no scanner undoes)', async () => {
    const c = await connectAs('main');
    for (const sql of [
      `SELECT reverse('${login}') AS r`,
      `SELECT encode(convert_to('${login}', 'UTF8'), 'hex') AS h`,
      `SELECT 1 WHERE 'x' LIKE '${login}'`,
      `SELECT substr('${login}', 1, 5) AS s`,
    ]) {
      const e = await pgError(c.query(sql));
      expect(e.detail, sql).toBe('CC_ERR_TICKET_PLACEMENT');
    }
    await c.end();
  });

  it('refuses it as a bound parameter (extended protocol)', async () => {
    const c = await connectAs('main');
    const e = await pgError(c.query('SELECT $1::int', [login]));
    expect(e.detail).toBe('CC_ERR_TICKET_PLACEMENT');
    const e2 = await pgError(c.query('INSERT INTO http_placement_sink VALUES ($1)', [login]));
    expect(e2.detail).toBe('CC_ERR_TICKET_PLACEMENT');
    await c.end();
  });

  it('refuses it in an INSERT whose row the agent can read back, and in a server-logged statement', async () => {
    const c = await connectAs('main');
    const e = await pgError(c.query(`INSERT INTO http_placement_sink VALUES ('${login}')`));
    expect(e.detail).toBe('CC_ERR_TICKET_PLACEMENT');
    const e2 = await pgError(c.query(`DO $$ BEGIN RAISE NOTICE '%', '${login}'; END $$`));
    expect(e2.detail ?? e2.message).toMatch(/CC_ERR_TICKET_PLACEMENT|CC_ERR_PG_STATEMENT_DENIED/);
    await c.end();
  });

  it('does not put the secret into COPY data (the ticket text stays a ticket)', async () => {
    const conninfo = `postgresql://bot:${login}@127.0.0.1:${gw.port}/main?sslmode=disable`;
    const r = await gw.psql(conninfo, ['-c', 'COPY http_placement_sink (v) FROM STDIN'], `${login}\n\\.\n`);
    seen.push(r.stdout, r.stderr);
    const admin = db.direct();
    await admin.connect();
    const rows = (await admin.query('SELECT v FROM http_placement_sink')).rows as Array<{ v: string }>;
    await admin.end();
    expect(rows.map((x) => x.v)).not.toContain(db.password);
  });

  it('refuses a secret with the default placement in SQL, even on a connection it may go to', async () => {
    const nosql = await gw.issue('nosql', bot.ref, ['conn:main']);
    const c = await connectAs('main');
    const e = await pgError(c.query(`SELECT count(*) FROM http_placement_keys WHERE v = '${nosql}'`));
    expect(e.detail).toBe('CC_ERR_TICKET_PLACEMENT');
    await c.end();
  });
});

describe('a secret bound to sql on a connection', () => {
  it('is substituted there, as a literal and as a bound parameter', async () => {
    const lookup = await gw.issue('lookup', bot.ref, ['conn:main', 'conn:other']);
    const c = await connectAs('main');
    const r = await c.query(`SELECT id FROM http_placement_keys WHERE v = '${lookup}'`);
    expect(r.rows).toEqual([{ id: 1 }]);
    const p = await c.query('SELECT id FROM http_placement_keys WHERE v = $1', [lookup]);
    expect(p.rows).toEqual([{ id: 1 }]);
    await c.end();
  });

  it('is refused in SQL on another connection it may otherwise go to', async () => {
    const lookup = await gw.issue('lookup', bot.ref, ['conn:main', 'conn:other']);
    const c = await connectAs('other');
    const e = await pgError(c.query(`SELECT id FROM http_placement_keys WHERE v = '${lookup}'`));
    expect(e.detail).toBe('CC_ERR_TICKET_PLACEMENT');
    await c.end();
  });
});

describe('audit and canaries', () => {
  it('audits every placement refusal, and no canary appears in any answer, audit record or log', async () => {
    await gw.settled();
    const records = await gw.ctx.store.readAudit(0, 100_000);
    const refusals = records.filter(
      (r) => r.type === 'token.refused' && (r.data as { code?: string }).code === 'CC_ERR_TICKET_PLACEMENT',
    );
    expect(refusals.length).toBeGreaterThanOrEqual(9);
    expect(refusals.every((r) => (r.data as { placement?: string }).placement === 'sql')).toBe(true);
    const audit = JSON.stringify(records);
    for (const canary of [db.password, LOOKUP, NOSQL]) {
      expect(seen.join('\n')).not.toContain(canary);
      expect(audit).not.toContain(canary);
      expect(gw.logs()).not.toContain(canary);
    }
  });
});

describe('the login credential cannot be bound to SQL', () => {
  it('refuses --allow-sql on the connection a secret logs in to', async () => {
    await expect(
      gw.ctx.vault.updateSecret('dbpw', { allowSql: ['main'] }, 'admin:test'),
    ).rejects.toMatchObject({
      code: 'CC_ERR_PLACEMENT_INVALID',
    });
    const c = await connectAs('main');
    const e = await pgError(c.query(`SELECT '${login}'::int`));
    expect(e.detail).toBe('CC_ERR_TICKET_PLACEMENT');
    await c.end();
  });
});
