import { afterAll, beforeAll, expect, it } from 'vitest';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';
import { RawClient } from './raw-client.js';

let db: ThrowawayPostgres;
let gw: PgGateway;
let ticket: string;

beforeAll(async () => {
  db = await startThrowawayPostgres();
  const admin = db.direct();
  await admin.connect();
  await admin.query("CREATE TABLE vault_rows (secret_h text); INSERT INTO vault_rows VALUES ('SECRET-H')");
  await admin.end();
  gw = await startPgGateway();
  const bot = await gw.createAgent('bot');
  await gw.addSecret('dbpw', db.password, ['conn:main', 'conn:masked']);
  await gw.addConnection('main', db.url, { credential: 'dbpw' });
  await gw.addConnection('masked', db.url, { credential: 'dbpw', rules: { maskColumns: ['secret_*'] } });
  ticket = await gw.issue('dbpw', bot.ref, ['conn:main', 'conn:masked']);
}, 120_000);

afterAll(async () => {
  await gw?.close();
  db?.stop();
});

/** Stream a query's rows without keeping them; the reader pauses now and then (backpressure). */
async function streamRows(
  connection: string,
  sql: string,
): Promise<{ rows: number; tag: string; sample: string[] }> {
  const c = await RawClient.open(gw.port);
  await c.login('bot', ticket, connection);
  c.query(sql);
  let rows = 0;
  let tag = '';
  const sample: string[] = [];
  for (;;) {
    const m = await c.message();
    if (m === null) throw new Error('connection closed mid-result');
    if (m.type === 'DataRow') {
      rows++;
      if (rows <= 2) sample.push(m.values.map((v) => v?.toString() ?? 'NULL').join('|'));
      if (rows % 200_000 === 0) {
        c.socket.pause();
        await new Promise((r) => setTimeout(r, 50));
        c.socket.resume();
      }
    } else if (m.type === 'CommandComplete') tag = m.tag;
    else if (m.type === 'ErrorResponse') throw new Error(JSON.stringify(m.fields));
    else if (m.type === 'ReadyForQuery') break;
  }
  c.close();
  return { rows, tag, sample };
}

it('relays a 1,000,000-row result with backpressure, and audits the row count', async () => {
  const r = await streamRows(
    'main',
    "SELECT g, md5(g::text) AS h, 'some text' AS t FROM generate_series(1, 1000000) g",
  );
  expect(r.rows).toBe(1_000_000);
  expect(r.tag).toBe('SELECT 1000000');
  expect(r.sample[0]).toBe(`1|c4ca4238a0b923820dcc509a6f75849b|some text`);
  await gw.settled();
  const records = await gw.ctx.store.readAudit(0, 10_000);
  const statement = records
    .filter((a) => a.type === 'postgres.query')
    .flatMap((a) => a.data.statements as Array<Record<string, unknown>>)
    .find((s) => String(s.sql).includes('generate_series'));
  expect(statement).toMatchObject({ rows: 1_000_000, class: 'read', decision: 'allow', outcome: 'ok' });
}, 180_000);

it('masks one column of a 1,000,000-row result', async () => {
  // Masking follows lineage: the column derives from the masked table column vault_rows.secret_h.
  const r = await streamRows(
    'masked',
    'SELECT g, v.secret_h || md5(g::text) AS h FROM generate_series(1, 1000000) g, vault_rows v',
  );
  expect(r.rows).toBe(1_000_000);
  expect(r.sample).toEqual(['1|***', '2|***']);
}, 180_000);
