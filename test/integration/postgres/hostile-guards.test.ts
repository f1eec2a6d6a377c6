import { connect as netConnect, type Socket } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend, encodeStartup } from '../../../src/frontends/postgres/protocol/encode.js';
import type { BackendMessage } from '../../../src/frontends/postgres/protocol/messages.js';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';
import { errorCode, errorField, RawClient } from './raw-client.js';

/**
 * Side doors around the read-only and role guards (issue item 8), identity and lifetime
 * of a session (item 9) and bounded resources before and after login (item 10).
 */

let db: ThrowawayPostgres;
let gw: PgGateway;
let bot: { key: string; ref: string };
let ticket: string;
const CANARY = 'pgguards-guards-Canary-41d2e8';

async function rows(): Promise<number> {
  const admin = db.direct();
  await admin.connect();
  try {
    return (await admin.query('SELECT count(*)::int AS n FROM victim')).rows[0].n as number;
  } finally {
    await admin.end();
  }
}

async function connect(database: string, password = ticket): Promise<pg.Client> {
  const c = new pg.Client({ host: '127.0.0.1', port: gw.port, user: 'bot', password, database });
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

async function refusal(
  promise: Promise<unknown>,
): Promise<{ code: string; detail: string; message: string }> {
  try {
    await promise;
  } catch (error) {
    const e = error as { code: string; detail: string; message: string };
    return { code: e.code, detail: e.detail, message: e.message };
  }
  throw new Error('expected a refusal');
}

function fatal(messages: readonly BackendMessage[]): { code: string | null; detail: string | null } {
  return { code: errorCode(messages), detail: errorField(messages, 'D') };
}

beforeAll(async () => {
  db = await startThrowawayPostgres();
  const admin = db.direct();
  await admin.connect();
  await admin.query('CREATE TABLE victim (id int, note text)');
  await admin.query(`INSERT INTO victim SELECT g, '${CANARY}' FROM generate_series(1, 5) g`);
  await admin.query(
    'CREATE FUNCTION public.wipe() RETURNS int LANGUAGE plpgsql AS $$ BEGIN DELETE FROM victim; RETURN 1; END $$',
  );
  // A user overload of an allowlisted name: lower(int) resolves here, not to pg_catalog.lower(text).
  await admin.query(
    'CREATE FUNCTION public.lower(int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN DELETE FROM victim; RETURN 1; END $$',
  );
  await admin.query(
    'CREATE FUNCTION public.wipe_op(int, int) RETURNS bool LANGUAGE plpgsql AS $$ BEGIN DELETE FROM victim; RETURN true; END $$',
  );
  await admin.query('CREATE OPERATOR === (leftarg = int, rightarg = int, procedure = public.wipe_op)');
  await admin.query('CREATE VIEW innocent AS SELECT public.wipe() AS x');
  // An extension's own functions and operators (citext's strpos, its =) are vetted code, not shadows.
  await admin.query('CREATE EXTENSION citext');
  await admin.end();
  gw = await startPgGateway({ maxStatementBytes: 8192, maxStatementsPerQuery: 20 });
  bot = await gw.createAgent('bot');
  await gw.addSecret('dbpw', db.password, ['conn:ro', 'conn:rw']);
  await gw.addConnection('ro', db.url, { credential: 'dbpw', rules: { readOnly: true } });
  await gw.addConnection('rw', db.url, { credential: 'dbpw', rules: { searchPath: 'public' } });
  ticket = await gw.issue('dbpw', bot.ref, ['conn:ro', 'conn:rw']);
}, 120_000);

afterAll(async () => {
  await gw?.close();
  db?.stop();
});

describe('read-only cannot be lifted', () => {
  it.each([
    'BEGIN READ WRITE',
    'START TRANSACTION READ WRITE',
    'BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE',
    'BEGIN TRANSACTION READ ONLY, READ WRITE',
    'SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE',
    'SET default_transaction_read_only = off',
    "SET LOCAL transaction_read_only = 'false'",
    'SET transaction_read_only TO 0',
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT pg_catalog.set_config('transaction_read_only', 'off', true)",
    "SELECT set_config('role', 'postgres', false)",
    'SET ROLE postgres',
  ])('refuses %s on a read-only connection', async (sql) => {
    const c = await connect('ro');
    const e = await refusal(c.query(sql));
    expect(e).toMatchObject({ code: '42501', detail: 'CC_ERR_PG_STATEMENT_DENIED' });
    expect(e.message).toContain('read-only');
    // Still read-only on the server: a view over a writing function cannot write.
    const w = await refusal(c.query('SELECT * FROM innocent'));
    expect(w.code).toBe('25006');
    await c.end();
    expect(await rows()).toBe(5);
  });

  it('refuses SET TRANSACTION READ WRITE inside a block, and the server stays read-only', async () => {
    const c = await connect('ro');
    await c.query('BEGIN');
    const e = await refusal(c.query('SET TRANSACTION READ WRITE'));
    expect(e.detail).toBe('CC_ERR_PG_STATEMENT_DENIED');
    await c.query('ROLLBACK');
    await c.query('BEGIN');
    expect((await refusal(c.query('SELECT * FROM innocent'))).code).toBe('25006');
    await c.query('ROLLBACK');
    await c.end();
  });

  it('keeps the server read-only after RESET ALL and DISCARD ALL', async () => {
    const c = await connect('ro');
    for (const reset of ['RESET ALL', 'DISCARD ALL', 'DISCARD PLANS; RESET ALL']) {
      await c.query(reset);
      expect((await c.query('SHOW default_transaction_read_only')).rows).toEqual([
        { default_transaction_read_only: 'on' },
      ]);
      expect((await refusal(c.query('SELECT x FROM innocent'))).code).toBe('25006');
    }
    await c.end();
    expect(await rows()).toBe(5);
  });

  it('keeps the server read-only when the role default says otherwise (set out of band)', async () => {
    const admin = db.direct();
    await admin.connect();
    await admin.query('ALTER ROLE postgres SET default_transaction_read_only = off');
    try {
      const c = await connect('ro');
      expect(
        (await c.query('SHOW default_transaction_read_only')).rows[0].default_transaction_read_only,
      ).toBe('on');
      await c.end();
    } finally {
      await admin.query('ALTER ROLE postgres RESET ALL');
      await admin.end();
    }
  });
});

describe('names resolved by the server, not the parser', () => {
  it('counts lower(2) as a call of an unknown function when the upstream has a lower() of its own', async () => {
    const ro = await connect('ro');
    const e = await refusal(ro.query('SELECT lower(2)'));
    expect(e).toMatchObject({ code: '42501', detail: 'CC_ERR_PG_STATEMENT_DENIED' });
    expect(e.message).toContain('function-call: lower');
    // The catalog's own lower stays a read everywhere.
    expect((await ro.query("SELECT pg_catalog.lower('A') AS v")).rows).toEqual([{ v: 'a' }]);
    expect((await ro.query("SELECT upper('a') AS v")).rows).toEqual([{ v: 'A' }]);
    await ro.end();
    expect(await rows()).toBe(5);
  });

  it('counts a user-defined operator, explicit or schema-qualified, as an unknown call', async () => {
    const ro = await connect('ro');
    for (const sql of [
      'SELECT 1 === 2',
      'SELECT 1 OPERATOR(public.===) 2',
      'SELECT 1 OPERATOR(public.+) 2',
    ]) {
      const e = await refusal(ro.query(sql));
      expect(e, sql).toMatchObject({ code: '42501', detail: 'CC_ERR_PG_STATEMENT_DENIED' });
      expect(e.message, sql).toContain('function-call: operator(');
    }
    expect((await ro.query('SELECT 1 + 2 AS v')).rows).toEqual([{ v: 3 }]);
    await ro.end();
    expect(await rows()).toBe(5);
  });

  it("does not count an installed extension's functions and operators as unknown calls", async () => {
    const ro = await connect('ro');
    const r = await ro.query("SELECT strpos('abc'::citext, 'B') AS p, 'a'::citext = 'A'::citext AS eq");
    expect(r.rows).toEqual([{ p: 2, eq: true }]);
    await ro.end();
  });

  it('audits lower(2) on a writable connection as the call it is, not a read', async () => {
    const rw = await connect('rw');
    await rw.query('BEGIN');
    await rw.query('SELECT lower(2)');
    await rw.query('ROLLBACK');
    // A function this session defines under an allowlisted name is no longer the catalog's either.
    await rw.query('CREATE FUNCTION pg_temp.nothing() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$');
    await rw.end();
    await gw.settled();
    const text = JSON.stringify(await gw.ctx.store.readAudit(0, 5000));
    expect(text).toMatch(/"sql":"SELECT lower\(2\)","class":"function-call"/);
    expect(await rows()).toBe(5);
  });

  it('pins the search path to the connection rule and refuses changing it', async () => {
    const rw = await connect('rw');
    expect((await rw.query('SHOW search_path')).rows).toEqual([{ search_path: 'public' }]);
    for (const sql of [
      'SET search_path = pg_temp, public',
      "SET SCHEMA 'pg_temp'",
      "SELECT set_config('search_path', 'evil', false)",
    ]) {
      expect((await refusal(rw.query(sql))).detail, sql).toBe('CC_ERR_PG_SETTING_PINNED');
    }
    await rw.end();
  });
});

describe('identity and lifetime', () => {
  it("refuses an agent's own key under the built-in policy (no ticket for the connection)", async () => {
    const e = await refusal(connect('rw', bot.key));
    expect(e).toMatchObject({ code: '28P01', detail: 'CC_ERR_PG_LOGIN_FAILED' });
    expect(e.message).toContain('an agent key does not open connection rw under the built-in policy');
    await gw.settled();
    const refused = (await gw.ctx.store.readAudit(0, 5000)).filter(
      (r) => r.type === 'postgres.login.refused',
    );
    expect(
      refused.some((r) => (r.data as { reason?: string }).reason === 'CC_ERR_PG_KEY_LOGIN_NOT_PERMITTED'),
    ).toBe(true);
  });

  it('ends the session when its login ticket expires (FATAL, as at revocation)', async () => {
    const short = (
      await gw.ctx.vault.issueTicket(
        { secret: 'dbpw', principal: bot.ref, destinations: ['conn:rw'], ttlMs: 1500 },
        'admin:test',
      )
    ).ticket;
    const c = await RawClient.open(gw.port);
    const hello = await c.login('bot', short, 'rw');
    expect(hello.at(-1)).toEqual({ type: 'ReadyForQuery', status: 'I' });
    c.query('SELECT 1');
    expect(fatal(await c.untilReady())).toEqual({ code: null, detail: null });
    const started = Date.now();
    const end = await c.untilClosed();
    expect(fatal(end).detail).toBe('CC_ERR_TICKET_EXPIRED');
    expect(errorField(end, 'S')).toBe('FATAL');
    expect(Date.now() - started).toBeLessThan(5000);
  });
});

describe('bounded resources', () => {
  it('refuses a query text over the size limit and one with too many statements, before parsing', async () => {
    const c = await connect('rw');
    let e = await refusal(c.query(`SELECT '${'x'.repeat(9000)}'`));
    expect(e).toMatchObject({ code: '54000', detail: 'CC_ERR_PG_STATEMENT_TOO_LARGE' });
    e = await refusal(c.query('SELECT 1;'.repeat(21)));
    expect(e).toMatchObject({ code: '54000', detail: 'CC_ERR_PG_STATEMENT_TOO_LARGE' });
    e = await refusal(c.query(`DELETE FROM victim WHERE note = $1${';'.repeat(30)}`, ['x']));
    expect(e.detail).toBe('CC_ERR_PG_STATEMENT_TOO_LARGE');
    expect(await c.query('SELECT 1;'.repeat(20))).toHaveLength(20);
    await c.end();
    expect(await rows()).toBe(5);
  });

  it('refuses a large password message before login (a few KiB at most)', async () => {
    const c = await RawClient.open(gw.port);
    c.write(
      encodeStartup({
        type: 'StartupMessage',
        major: 3,
        minor: 0,
        parameters: [
          ['user', 'bot'],
          ['database', 'rw'],
        ],
      }),
    );
    await c.message();
    const header = Buffer.alloc(5);
    header[0] = 0x70;
    header.writeInt32BE(60 * 1024 * 1024 + 4, 1);
    c.write(Buffer.concat([header, Buffer.alloc(16 * 1024, 0x61)]));
    expect(fatal(await c.untilClosed())).toEqual({ code: '08P01', detail: 'CC_ERR_PG_MESSAGE_TOO_LARGE' });
    // A message of 9 KiB is refused too; after login the configured limit applies.
    const d = await RawClient.open(gw.port);
    d.write(encodeStartup({ type: 'StartupMessage', major: 3, minor: 0, parameters: [['user', 'bot']] }));
    await d.message();
    d.write(encodeFrontend({ type: 'PasswordMessage', data: Buffer.alloc(9 * 1024, 0x61) }));
    expect(fatal(await d.untilClosed()).detail).toBe('CC_ERR_PG_MESSAGE_TOO_LARGE');
  });
});

describe('logins in progress', () => {
  it('refuses more pending logins per source, closes the oldest beyond the total, and times out idle ones', async () => {
    const small = await startPgGateway({
      maxPendingLoginsPerSource: 3,
      maxPendingLogins: 1000,
      loginTimeoutMs: 1500,
    });
    const idle: Socket[] = [];
    const closed = new Set<Socket>();
    const open = () =>
      new Promise<Socket>((resolve) => {
        const s = netConnect({ host: '127.0.0.1', port: small.port }, () => resolve(s));
        s.on('error', () => undefined);
        s.on('close', () => closed.add(s));
        s.resume();
        idle.push(s);
      });
    try {
      for (let i = 0; i < 3; i++) await open();
      const fourth = await RawClient.open(small.port);
      expect(fatal(await fourth.untilClosed())).toEqual({
        code: '53300',
        detail: 'CC_ERR_PG_LOGIN_PENDING_LIMIT',
      });
      // The idle ones are closed by the login timeout; then the source may log in again.
      await new Promise((r) => setTimeout(r, 2000));
      expect(closed.size).toBe(3);
      const again = await RawClient.open(small.port);
      again.write(encodeStartup({ type: 'StartupMessage', major: 3, minor: 0, parameters: [['user', 'x']] }));
      expect((await again.message())?.type).toBe('Authentication');
      again.close();
    } finally {
      for (const s of idle) s.destroy();
      await small.close();
    }
    const total = await startPgGateway({ maxPendingLoginsPerSource: 100, maxPendingLogins: 4 });
    try {
      const agent = await total.createAgent('bot');
      await total.addSecret('dbpw', db.password, ['conn:rw']);
      await total.addConnection('rw', db.url, { credential: 'dbpw' });
      const t = await total.issue('dbpw', agent.ref, ['conn:rw']);
      const hogs: RawClient[] = [];
      for (let i = 0; i < 8; i++) hogs.push(await RawClient.open(total.port));
      // A real client still gets in: the oldest idle login made room for it.
      const c = await RawClient.open(total.port);
      const hello = await c.login('bot', t, 'rw');
      expect(hello.at(-1)).toEqual({ type: 'ReadyForQuery', status: 'I' });
      await new Promise((r) => setTimeout(r, 50));
      expect(hogs.filter((h) => h.closed).length).toBeGreaterThanOrEqual(5);
      c.close();
      for (const h of hogs) h.close();
      const started = Date.now();
      const busy = await RawClient.open(total.port);
      await total.close();
      expect(Date.now() - started).toBeLessThan(3000);
      busy.close();
    } catch (error) {
      await total.close();
      throw error;
    }
  });
});
