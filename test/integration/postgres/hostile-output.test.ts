import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeFrontend } from '../../../src/frontends/postgres/protocol/encode.js';
import type { BackendMessage } from '../../../src/frontends/postgres/protocol/messages.js';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';
import { RawClient } from './raw-client.js';

/**
 * Output inspection and masking by lineage through the real gateway, against a
 * password-protected throwaway PostgreSQL: a vault secret or a masked value must not
 * reach the client in any server message (rows, errors, notices, parameter statuses,
 * notifications, COPY, column names), whichever route the agent makes the server take.
 */

const VAULT = 'pgwireVaultCanary7Qm2Lx9PzK4';
/** Not in the vault: the detector must find them. */
const GHP = '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';
const AKIA = 'AKIAQ3RZ7XK2M5VWN4TJ';
/** Masked values (column ssn) all start with this. */
const SSN = 'SSN-';
const SSNS = ['SSN-111-22-3333', 'SSN-444-55-6666'];
const POLICY = `@id("sessions") permit(principal, action == Action::"sql:session", resource);
@id("everything") permit(principal, action, resource);
`;

function forms(value: string): string[] {
  const b = Buffer.from(value);
  return [value, b.toString('hex'), b.toString('hex').toUpperCase(), b.toString('base64').slice(0, 20)];
}

/** Every byte the client received holds none of the values, in any common encoding. */
function expectClean(c: RawClient, extra: readonly string[] = []): void {
  const text = Buffer.concat(c.received).toString('latin1');
  for (const v of [VAULT, GHP, AKIA, ...SSNS, ...extra])
    for (const f of forms(v)) expect(text).not.toContain(f);
  expect(text).not.toContain(SSN);
}

function errors(messages: readonly BackendMessage[]): Array<Map<string, string>> {
  return messages.flatMap((m) => (m.type === 'ErrorResponse' ? [new Map(m.fields)] : []));
}

function rows(messages: readonly BackendMessage[]): string[] {
  const out: string[] = [];
  for (const m of messages)
    if (m.type === 'DataRow') for (const v of m.values) out.push(v === null ? 'NULL' : v.toString('utf8'));
  return out;
}

let db: ThrowawayPostgres;
let gw: PgGateway;
let key: string;
let dir: string;

async function login(database: 'plain' | 'masked'): Promise<RawClient> {
  const c = await RawClient.open(gw.port);
  const hello = await c.login('bot', key, database);
  if (hello.at(-1)?.type !== 'ReadyForQuery') throw new Error(`login failed: ${JSON.stringify(hello)}`);
  return c;
}

async function run(c: RawClient, sql: string): Promise<BackendMessage[]> {
  c.query(sql);
  return c.untilReady();
}

beforeAll(async () => {
  db = await startThrowawayPostgres();
  const admin = db.direct();
  await admin.connect();
  await admin.query(`CREATE TABLE secrets_table (id int, value text);
    INSERT INTO secrets_table VALUES (1, '${VAULT}');
    CREATE TABLE uniq (k text PRIMARY KEY);
    INSERT INTO uniq VALUES ('${VAULT}');
    CREATE TABLE findings (id int, v text);
    INSERT INTO findings VALUES (1, '${GHP}'), (2, '${AKIA}');
    CREATE TABLE users (id int PRIMARY KEY, name text, ssn text NOT NULL);
    INSERT INTO users VALUES (1, 'ann', '${SSNS[0]}'), (2, 'bob', '${SSNS[1]}');
    CREATE TABLE users_copy (id int, ssn text UNIQUE);
    INSERT INTO users_copy SELECT id, ssn FROM users;
    CREATE VIEW users_v AS SELECT id, ssn AS social FROM users;
    CREATE FUNCTION leak_notice() RETURNS int LANGUAGE plpgsql AS $$
      BEGIN RAISE NOTICE 'value: %', (SELECT value FROM secrets_table LIMIT 1); RETURN 1; END $$;
    CREATE FUNCTION leak_setting() RETURNS int LANGUAGE plpgsql AS $$
      BEGIN PERFORM set_config('application_name', (SELECT value FROM secrets_table LIMIT 1), false); RETURN 1; END $$;
    CREATE FUNCTION ssn_notice(i int) RETURNS int LANGUAGE plpgsql AS $$
      BEGIN RAISE NOTICE 'ssn: %', (SELECT ssn FROM users WHERE id = i); RETURN 1; END $$;
    CREATE FUNCTION ssn_refcursor() RETURNS refcursor LANGUAGE plpgsql AS $$
      DECLARE c refcursor := 'leaky'; BEGIN OPEN c FOR SELECT ssn AS hidden FROM users; RETURN c; END $$;`);
  await admin.end();
  dir = mkdtempSync(join(tmpdir(), 'coatcheck-pg-wire-'));
  const policyFile = join(dir, 'out.cedar');
  writeFileSync(policyFile, POLICY);
  gw = await startPgGateway({}, '127.0.0.1', `policy:\n  path: ${policyFile}\n`);
  await gw.addSecret('dbpw', db.password, ['conn:plain', 'conn:masked']);
  await gw.addSecret('vault', VAULT, ['conn:plain', 'conn:masked']);
  await gw.addConnection('plain', db.url, { credential: 'dbpw' });
  await gw.addConnection('masked', db.url, { credential: 'dbpw', rules: { maskColumns: ['ssn'] } });
  key = (await gw.createAgent('bot')).key;
}, 60_000);

afterAll(async () => {
  await gw?.close();
  db?.stop();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

const TICKET = /cct_[0-9A-Za-z]{28}/;

describe('output inspection through the gateway', () => {
  it('replaces a vault secret quoted by an ErrorResponse (a failed cast)', async () => {
    const c = await login('plain');
    const out = await run(c, 'SELECT value::int FROM secrets_table');
    const e = errors(out);
    expect(e).toHaveLength(1);
    expect(e[0]!.get('C')).toBe('22P02');
    expect(e[0]!.get('M')).toMatch(TICKET);
    expectClean(c);
    c.close();
  });

  it('replaces a vault secret in a unique-violation DETAIL', async () => {
    const c = await login('plain');
    const out = await run(c, 'INSERT INTO uniq SELECT value FROM secrets_table');
    const e = errors(out);
    expect(e[0]!.get('C')).toBe('23505');
    expect(e[0]!.get('D')).toMatch(TICKET);
    expectClean(c);
    c.close();
  });

  it('replaces a vault secret raised by a function as a NOTICE', async () => {
    const c = await login('plain');
    const out = await run(c, 'SELECT leak_notice()');
    const notice = out.find((m) => m.type === 'NoticeResponse');
    expect(notice).toBeDefined();
    expectClean(c);
    c.close();
  });

  it('replaces a vault secret in a ParameterStatus (set_config of application_name)', async () => {
    const c = await login('plain');
    const direct = await run(c, "SELECT set_config('application_name', value, false) FROM secrets_table");
    // Refused by the settings guard, or answered with the secret replaced: never the secret.
    const viaFunction = await run(c, 'SELECT leak_setting()');
    const statuses = [...direct, ...viaFunction].filter(
      (m) => m.type === 'ParameterStatus' && m.name === 'application_name',
    );
    expect(statuses.length + errors([...direct, ...viaFunction]).length).toBeGreaterThan(0);
    for (const s of statuses) if (s.type === 'ParameterStatus') expect(s.value).toMatch(TICKET);
    expectClean(c);
    c.close();
  });

  it('replaces a vault secret in a NOTIFY payload (LISTEN in the same session)', async () => {
    const c = await login('plain');
    await run(c, 'LISTEN pgwire_chan');
    const out = await run(c, "SELECT pg_notify('pgwire_chan', value) FROM secrets_table");
    const n = out.find((m) => m.type === 'NotificationResponse');
    expect(n).toBeDefined();
    if (n?.type === 'NotificationResponse') expect(n.payload).toMatch(TICKET);
    expectClean(c);
    c.close();
  });

  it('replaces the bytea (hex) output of a vault secret', async () => {
    const c = await login('plain');
    const out = await run(
      c,
      "SELECT convert_to(value, 'UTF8') AS b, encode(convert_to(value, 'UTF8'), 'hex') AS h FROM secrets_table",
    );
    expect(rows(out)).toHaveLength(2);
    expectClean(c);
    c.close();
  });

  it('replaces AKIA and ghp_ values the vault does not hold (detector)', async () => {
    const c = await login('plain');
    const out = await run(c, 'SELECT id, v FROM findings ORDER BY id');
    const r = rows(out);
    expect(r).toHaveLength(4);
    expect(r[1]).toMatch(TICKET);
    expect(r[3]).toMatch(TICKET);
    expectClean(c);
    c.close();
  });

  it('replaces a vault secret used as a column alias (RowDescription)', async () => {
    const c = await login('plain');
    const alias = await run(c, `SELECT 1 AS "${VAULT}"`);
    const desc = alias.find((m) => m.type === 'RowDescription');
    if (desc?.type === 'RowDescription') expect(desc.fields[0]!.name).toMatch(TICKET);
    else expect.unreachable('no RowDescription');
    // Built by the server from data: a dynamic alias inside query_to_xml's output.
    const out = await run(
      c,
      "SELECT query_to_xml(format('SELECT 1 AS %I', value), false, false, '') FROM secrets_table",
    );
    expect(out.some((m) => m.type === 'ReadyForQuery')).toBe(true);
    expectClean(c);
    c.close();
  });

  it('replaces a vault secret in binary COPY TO output, with field lengths re-encoded', async () => {
    const c = await login('plain');
    const out = await run(c, 'COPY (SELECT id, value FROM secrets_table) TO STDOUT (FORMAT binary)');
    expect(out.some((m) => m.type === 'CopyOutResponse')).toBe(true);
    expect(errors(out)).toHaveLength(0);
    // The stream must still parse: header, tuples with correct field lengths, trailer.
    const data = Buffer.concat(out.flatMap((m) => (m.type === 'CopyData' ? [m.data] : [])));
    expect(data.subarray(0, 11).toString('latin1')).toBe('PGCOPY\n\xff\r\n\0');
    let at = 19 + data.readInt32BE(15);
    const fields: string[] = [];
    for (;;) {
      const n = data.readInt16BE(at);
      at += 2;
      if (n === -1) break;
      for (let i = 0; i < n; i++) {
        const len = data.readInt32BE(at);
        at += 4;
        fields.push(data.toString('utf8', at, at + len));
        at += len;
      }
    }
    expect(at).toBe(data.length);
    expect(fields[1]).toMatch(TICKET);
    expectClean(c);
    c.close();
  });

  it('variant: a vault secret in an error CONTEXT / hint raised by RAISE EXCEPTION', async () => {
    const c = await login('plain');
    const out = await run(c, 'SELECT value::date FROM secrets_table');
    expect(errors(out)).toHaveLength(1);
    expectClean(c);
    c.close();
  });

  it('variant: a vault secret in text and CSV COPY TO output', async () => {
    const c = await login('plain');
    await run(c, 'COPY secrets_table TO STDOUT');
    await run(c, 'COPY (SELECT upper(value), value FROM secrets_table) TO STDOUT (FORMAT csv, HEADER)');
    expectClean(c);
    c.close();
  });

  it('variant: a secret added to the vault mid-session is replaced, and the session goes on', async () => {
    const late = 'pgwireLateCanary3Vn8Qw1Rt6Yk';
    const c = await login('plain');
    // A scan is started for the first replacement; the late secret is not in it.
    expect(rows(await run(c, 'SELECT value FROM secrets_table'))[0]).toMatch(TICKET);
    await gw.addSecret('late', late, ['conn:plain']);
    let value = '';
    for (let i = 0; i < 40; i++) {
      const out = await run(c, `SELECT 'pre-' || reverse('${[...late].reverse().join('')}') AS v`);
      expect(errors(out)).toHaveLength(0);
      value = rows(out)[0] ?? '';
      if (TICKET.test(value)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(value).toMatch(TICKET);
    c.close();
  });

  it('variant: a vault secret in a row fetched through the extended protocol (node-postgres)', async () => {
    const client = gw.client('bot', key, 'plain');
    await client.connect();
    const r = await client.query('SELECT value, $1::text AS t FROM secrets_table', ['x']);
    expect(String(r.rows[0].value)).toMatch(TICKET);
    await client.end();
  });
});

describe('masking by lineage through the gateway', () => {
  const masked = [
    'SELECT ssn AS x FROM users',
    'SELECT upper(ssn) FROM users',
    'SELECT row_to_json(u) FROM users u',
    'SELECT u FROM users u',
    'SELECT * FROM users_v',
    'SELECT json_agg(ssn) FROM users',
    // variants not named in the issue
    "SELECT name || ':' || ssn AS label FROM users",
    'WITH t AS (SELECT ssn AS a FROM users) SELECT a FROM t',
    'SELECT (SELECT max(ssn) FROM users) AS m',
    'SELECT x.s FROM (SELECT ssn AS s FROM users) x',
  ];
  for (const sql of masked) {
    it(`masks ${sql}`, async () => {
      const c = await login('masked');
      const out = await run(c, sql);
      expect(errors(out).map((e) => e.get('D'))).toEqual([]);
      expect(rows(out).length).toBeGreaterThan(0);
      expectClean(c);
      c.close();
    });
  }

  it('leaves unmasked columns readable', async () => {
    const c = await login('masked');
    const out = await run(c, 'SELECT id, name FROM users ORDER BY id');
    expect(rows(out)).toEqual(['1', 'ann', '2', 'bob']);
    c.close();
  });

  it('masks RETURNING ssn AS s2', async () => {
    const c = await login('masked');
    const out = await run(c, 'UPDATE users SET name = name WHERE id = 1 RETURNING ssn AS s2');
    expect(errors(out)).toHaveLength(0);
    expect(rows(out)).toEqual(['***']);
    expectClean(c);
    c.close();
  });

  it('masks rows FETCHed from a cursor', async () => {
    const c = await login('masked');
    const out = await run(
      c,
      'BEGIN; DECLARE cur CURSOR FOR SELECT ssn AS q FROM users; FETCH ALL FROM cur; COMMIT',
    );
    expect(errors(out)).toHaveLength(0);
    expect(rows(out)).toEqual(['***', '***']);
    expectClean(c);
    c.close();
  });

  it('withholds the error of ssn::int (it quotes the value)', async () => {
    const c = await login('masked');
    const out = await run(c, 'SELECT ssn::int FROM users');
    const e = errors(out);
    expect(e).toHaveLength(1);
    expect(e[0]!.get('C')).toBe('22P02');
    expect(e[0]!.get('D')).toBe('CC_ERR_PG_MASKED_ERROR');
    expectClean(c);
    // The session stays usable.
    expect(rows(await run(c, 'SELECT 1'))).toEqual(['1']);
    c.close();
  });

  it('variant: withholds a unique violation on a masked column, and a filter on it', async () => {
    const c = await login('masked');
    const out = await run(c, 'INSERT INTO users_copy SELECT 9, ssn FROM users WHERE id = 1');
    expect(errors(out)[0]!.get('D')).toBe('CC_ERR_PG_MASKED_ERROR');
    const where = await run(c, 'SELECT id FROM users WHERE ssn::int > 0');
    expect(errors(where)[0]!.get('D')).toBe('CC_ERR_PG_MASKED_ERROR');
    expectClean(c);
    c.close();
  });

  it('variant: withholds a NOTICE raised by a user function reading ssn', async () => {
    const c = await login('masked');
    const out = await run(c, 'SELECT ssn_notice(1)');
    const notices = out.filter((m) => m.type === 'NoticeResponse');
    expect(notices.length).toBeGreaterThan(0);
    for (const n of notices)
      if (n.type === 'NoticeResponse') expect(new Map(n.fields).get('D')).toBe('CC_ERR_PG_MASKED_ERROR');
    expectClean(c);
    c.close();
  });

  it('variant: masks a refcursor opened by a function (FETCH of an unknown cursor)', async () => {
    const c = await login('masked');
    const out = await run(c, 'BEGIN; SELECT ssn_refcursor(); FETCH ALL FROM leaky; COMMIT');
    expectClean(c);
    expect(out.some((m) => m.type === 'ReadyForQuery')).toBe(true);
    c.close();
  });

  it('variant: a view created through the gateway is traced (the catalog is invalidated after DDL)', async () => {
    const c = await login('masked');
    // Warm the catalog cache first, then add a view over ssn.
    await run(c, 'SELECT id FROM users');
    const ddl = await run(c, 'CREATE VIEW pgwire_v2 AS SELECT ssn AS harmless FROM users');
    expect(errors(ddl)).toHaveLength(0);
    const out = await run(c, 'SELECT harmless FROM pgwire_v2');
    expect(rows(out)).toEqual(['***', '***']);
    expectClean(c);
    await run(c, 'DROP VIEW pgwire_v2');
    c.close();
  });

  it('variant: masks a protocol Parse/Bind/Execute of ssn under an alias (node-postgres)', async () => {
    const client = gw.client('bot', key, 'masked');
    await client.connect();
    const r = await client.query('SELECT ssn AS nothing_here FROM users WHERE id = $1', [1]);
    expect(r.rows).toEqual([{ nothing_here: '***' }]);
    await client.end();
  });

  it('refuses what lineage cannot establish (a DO block), and the session stays usable', async () => {
    const c = await login('masked');
    const out = await run(c, "DO $$ BEGIN RAISE NOTICE '%', (SELECT ssn FROM users LIMIT 1); END $$");
    expect(errors(out)[0]!.get('D')).toBe('CC_ERR_PG_MASK_LINEAGE');
    expect(errors(out)[0]!.get('C')).toBe('42501');
    expectClean(c);
    expect(rows(await run(c, 'SELECT 2'))).toEqual(['2']);
    c.close();
  });

  it('a failed extended message while later statements are still being traced: their answers are skipped as the server skips them', async () => {
    const c = await login('masked');
    const enc = (m: Parameters<typeof encodeFrontend>[0]) => encodeFrontend(m);
    c.write(
      Buffer.concat([
        enc({ type: 'Describe', kind: 'P', name: 'no_such_portal' }),
        enc({ type: 'Query', sql: 'PREPARE pw1 AS SELECT ssn FROM users' }),
        enc({ type: 'Parse', name: 'pw2', sql: 'SELECT ssn AS z FROM users', parameterTypes: [] }),
        enc({ type: 'Sync' }),
        enc({ type: 'Query', sql: 'SELECT ssn AS after FROM users ORDER BY id' }),
      ]),
    );
    const first = await c.untilReady();
    expect(errors(first)[0]!.get('C')).toBe('34000');
    const second = await c.untilReady();
    expect(errors(second)).toHaveLength(0);
    expect(rows(second)).toEqual(['***', '***']);
    expectClean(c);
    c.close();
  });

  it('psql: masks a computed ssn', async () => {
    const r = await gw.psql(
      `host=127.0.0.1 port=${gw.port} user=bot password=${key} dbname=masked sslmode=disable`,
      ['-At', '-c', "SELECT lower(ssn) || '!' FROM users ORDER BY id"],
    );
    expect(r.stdout).not.toContain(SSN);
    expect(r.stdout.toLowerCase()).not.toContain('ssn-');
    expect(r.stdout.trim().split('\n')).toEqual(['***', '***']);
  });
});
