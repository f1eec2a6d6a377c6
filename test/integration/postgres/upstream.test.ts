import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';

let tlsDb: ThrowawayPostgres;
let md5Db: ThrowawayPostgres;
let gw: PgGateway;
let bot: { key: string; ref: string };
const tickets = new Map<string, string>();

beforeAll(async () => {
  tlsDb = await startThrowawayPostgres({ ssl: true });
  md5Db = await startThrowawayPostgres({ auth: 'md5' });
  gw = await startPgGateway();
  bot = await gw.createAgent('bot');
  await gw.addSecret('tlspw', tlsDb.password, ['conn:tls', 'conn:wrongca', 'conn:required']);
  await gw.addSecret('md5pw', md5Db.password, ['conn:md5']);
  const base = `postgres://postgres@127.0.0.1:${tlsDb.port}/postgres`;
  await gw.addConnection('tls', `${base}?sslmode=verify-full&sslrootcert=${tlsDb.caFile}`, {
    credential: 'tlspw',
  });
  // Verified against a CA that did not sign the server's certificate: must fail closed.
  await gw.addConnection('wrongca', `${base}?sslmode=verify-full&sslrootcert=${gw.frontend.tls.cert}`, {
    credential: 'tlspw',
  });
  await gw.addConnection('required', `${md5Db.url.replace('sslmode=disable', 'sslmode=require')}`, {
    credential: 'tlspw',
  });
  await gw.addConnection('md5', md5Db.url, { credential: 'md5pw' });
  for (const name of ['tls', 'wrongca', 'required'])
    tickets.set(name, await gw.issue('tlspw', bot.ref, [`conn:${name}`]));
  tickets.set('md5', await gw.issue('md5pw', bot.ref, ['conn:md5']));
}, 120_000);

afterAll(async () => {
  await gw?.close();
  tlsDb?.stop();
  md5Db?.stop();
});

async function query(connection: string, sql: string): Promise<unknown> {
  const c = gw.client('bot', tickets.get(connection)!, connection);
  c.on('error', () => undefined);
  await c.connect();
  try {
    return (await c.query(sql)).rows;
  } finally {
    await c.end();
  }
}

async function refusal(connection: string): Promise<{ code: string; detail: string }> {
  try {
    await query(connection, 'SELECT 1');
  } catch (error) {
    return error as { code: string; detail: string };
  }
  throw new Error('expected the login to fail');
}

describe('upstream', () => {
  it('logs in over TLS with verify-full (SCRAM inside TLS)', async () => {
    expect(await query('tls', 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).toEqual([
      { ssl: true },
    ]);
  });

  it('fails closed when the server certificate does not verify', async () => {
    expect(await refusal('wrongca')).toMatchObject({
      code: '08001',
      detail: 'CC_ERR_PG_UPSTREAM_UNREACHABLE',
    });
  });

  it('fails closed when TLS is required and the server offers none', async () => {
    expect(await refusal('required')).toMatchObject({
      code: '08001',
      detail: 'CC_ERR_PG_UPSTREAM_UNREACHABLE',
    });
  });

  it('logs in with md5', async () => {
    expect(await query('md5', 'SELECT 7 AS n')).toEqual([{ n: 7 }]);
  });
});
