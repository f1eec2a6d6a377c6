import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PgGateway, startPgGateway } from './harness.js';

/**
 * PostgreSQL sessions count into the process's one metrics registry (the one the admin API
 * serves at /metrics), told apart by frontend="postgres": ticket exchanges, and statements
 * by class and outcome — refused ones included. Real PostgreSQL, real `pg` client.
 */
const UPSTREAM = 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable';

let gw: PgGateway;
let bot: { key: string; ref: string };

beforeAll(async () => {
  gw = await startPgGateway();
  bot = await gw.createAgent('bot');
  await gw.addSecret('dbpw', 'pg-metrics-unused-password', ['conn:ro']);
  await gw.addConnection('ro', UPSTREAM, { credential: 'dbpw', rules: { readOnly: true } });
}, 120_000);

afterAll(async () => {
  await gw?.close();
});

function counter(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

describe('PostgreSQL metrics', () => {
  it('exchanges and statements appear in the served registry with frontend="postgres"', async () => {
    const before = await gw.ctx.metrics.metrics();
    const client = gw.client('bot', await gw.issue('dbpw', bot.ref, ['conn:ro']), 'ro');
    await client.connect();
    try {
      await client.query('SELECT 1');
      await client.query('SELECT 2');
      await expect(client.query('DELETE FROM pg_class')).rejects.toThrow(/read-only|refused/);
    } finally {
      await client.end();
    }
    await gw.settled();
    const after = await gw.ctx.metrics.metrics();
    const delta = (name: string, labels: string) =>
      counter(after, name, labels) - counter(before, name, labels);
    expect(delta('coatcheck_statements_total', 'frontend="postgres",class="read",outcome="ok"')).toBe(2);
    expect(delta('coatcheck_statements_total', 'frontend="postgres",class="write",outcome="refused"')).toBe(
      1,
    );
    // The login ticket's exchange (the connection's credential) is counted like an HTTP one.
    expect(
      delta('coatcheck_http_exchanges_total', 'frontend="postgres",outcome="released"'),
    ).toBeGreaterThanOrEqual(1);
  });
});
