import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PgGateway, startPgGateway, startThrowawayPostgres, type ThrowawayPostgres } from './harness.js';

// A statement's record is made after the statement was forwarded, and may be made after its
// answer went out (statement audit is batched). What must hold however that is arranged:
// the text is scrubbed with the secrets known when the statement was forwarded (a secret
// erased while the statement runs must not leave its value in the record: scrubbing at
// record time with the set of that moment does), records keep the order statements finished
// in, and a session that ends at once loses none of them.

const VALUE = 'sk_live_RecordAfterAnswer_0123456789abcdef';

let db: ThrowawayPostgres;
let gw: PgGateway;
let bot: { key: string; ref: string };
let ticket: string;

beforeAll(async () => {
  db = await startThrowawayPostgres();
  gw = await startPgGateway();
  bot = await gw.createAgent('bot');
  await gw.addSecret('dbpw', db.password, ['conn:main']);
  await gw.addConnection('main', db.url, { credential: 'dbpw' });
  ticket = await gw.issue('dbpw', bot.ref, ['conn:main']);
});

afterAll(async () => {
  await gw?.close();
  await db?.stop();
});

async function connect(): Promise<pg.Client> {
  const c = gw.client('bot', ticket, 'main');
  c.on('error', () => undefined);
  await c.connect();
  return c;
}

/** The statements of every `postgres.query` record so far, in the order they were recorded. */
async function recordedStatements(): Promise<Array<{ sql: string; rows: number; outcome: string }>> {
  await gw.settled();
  const out: Array<{ sql: string; rows: number; outcome: string }> = [];
  let after = 0;
  for (;;) {
    const page = await gw.ctx.store.readAudit(after, 1000);
    if (page.length === 0) break;
    for (const r of page)
      if (r.type === 'postgres.query')
        out.push(...(r.data.statements as Array<{ sql: string; rows: number; outcome: string }>));
    after = page.at(-1)!.seq;
  }
  return out;
}

describe('a statement record', () => {
  it('is scrubbed with the secrets known when it was forwarded, even if one is erased while it runs', async () => {
    await gw.addSecret('planted', VALUE, ['conn:main']);
    const c = await connect();
    const running = c.query(`SELECT pg_sleep(0.4), '${VALUE}' AS v`);
    await new Promise((r) => setTimeout(r, 100));
    await gw.ctx.vault.removeSecret('planted', 'admin:test', { force: true });
    await running.catch(() => undefined);
    await c.end();
    const texts = (await recordedStatements()).map((s) => s.sql);
    const mine = texts.find((t) => t.includes('pg_sleep(0.4)'));
    expect(mine).toBeDefined();
    expect(mine).not.toContain(VALUE);
    expect(mine).toMatch(/\[secret:sec_[A-Za-z0-9]+\]/);
    for (const t of texts) expect(t).not.toContain(VALUE);
  });

  it('keeps the order statements finished in, across one query and a pipeline of many', async () => {
    const c = await connect();
    await c.query(Array.from({ length: 12 }, (_, i) => `SELECT ${i} AS order_probe_${i}`).join('; '));
    await Promise.all(
      Array.from({ length: 12 }, (_, i) => c.query(`SELECT ${i + 12} AS order_probe_${i + 12}`)),
    );
    await c.end();
    const order = (await recordedStatements())
      .map((s) => /order_probe_(\d+)/.exec(s.sql)?.[1])
      .filter((n): n is string => n !== undefined)
      .map(Number);
    expect(order).toEqual(Array.from({ length: 24 }, (_, i) => i));
  });

  it('is not lost when the session ends right after the answer', async () => {
    for (let round = 0; round < 5; round++) {
      const c = await connect();
      const marker = `lost_probe_${round}`;
      const result = await c.query(`SELECT 1 AS ${marker} FROM generate_series(1, 3)`);
      expect(result.rows).toHaveLength(3);
      await c.end(); // Terminate follows the answer at once
      const found = (await recordedStatements()).filter((s) => s.sql.includes(marker));
      expect(found).toEqual([expect.objectContaining({ rows: 3, outcome: 'ok' })]);
    }
  });
});
