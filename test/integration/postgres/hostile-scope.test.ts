import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PgGateway, startPgGateway } from './harness.js';

/**
 * Item 2 on the PostgreSQL relay: `SELECT '<ticket>'` makes the server echo the secret the
 * gateway put in the literal. The ticket handed back for it must be a child of the ticket
 * that was exchanged — never wider, revoked with it — on a session logged in with an agent
 * key as well as with a ticket. Real PostgreSQL (the local server, trust auth: the
 * credential is never checked, only carried), real `pg` client.
 */
const UPSTREAM = 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable';
const CANARY = 'pg-scope-canary-M4nB7vC1xZ9lK3jH';
const TICKET_RE = /cct_[0-9A-Za-z]{28}/;

let gw: PgGateway;
let bot: { key: string; ref: string };
const seen: string[] = [];

beforeAll(async () => {
  gw = await startPgGateway();
  bot = await gw.createAgent('bot');
  await gw.addSecret('dbpw', 'http-bounds-unused-password', ['conn:main']);
  // Tickets in SQL text need the sql placement for this connection (docs/vault.md).
  await gw.addSecret('echoed', CANARY, ['conn:main', 'host:127.0.0.1'], { allowSql: ['main'] });
  await gw.addConnection('main', UPSTREAM, { credential: 'dbpw' });
}, 120_000);

afterAll(async () => {
  await gw?.close();
});

async function echo(password: string, ticket: string): Promise<string> {
  const client = gw.client('bot', password, 'main');
  await client.connect();
  try {
    const result = await client.query(`SELECT '${ticket}' AS v`);
    const value = String(result.rows[0].v);
    seen.push(value);
    expect(value).not.toContain(CANARY);
    return value.match(TICKET_RE)![0];
  } finally {
    await client.end();
  }
}

describe('PostgreSQL: tickets for echoed secrets stay within the exchanged ticket', () => {
  it('the echo is a child of the statement ticket (uses, expiry, destination), revoked with it', async () => {
    // (An agent key alone no longer opens a session under the built-in policy: log in with a ticket.)
    const login = await gw.issue('dbpw', bot.ref, ['conn:main']);
    const root = await gw.issue('echoed', bot.ref, ['conn:main']);
    const parent = await gw.ctx.vault.narrowTicket(root, { ttlMs: 60_000, maxUses: 3 }, 'admin:test');
    const child = await echo(login, parent.ticket);
    expect(child).not.toBe(parent.ticket);
    const view = await gw.ctx.vault.inspectTicket(child);
    expect(view).toMatchObject({
      parentId: parent.view.id,
      principal: bot.ref,
      maxUses: 2,
      destinations: ['conn:main'],
    });
    expect(Date.parse(view.expiresAt!)).toBeLessThanOrEqual(Date.parse(parent.view.expiresAt!));
    await gw.ctx.vault.revokeTicket(parent.view.id, 'admin:test');
    expect((await gw.ctx.vault.inspectTicket(child)).status).toBe('revoked');
  });

  it('ticket-login session: the echo of a statement ticket is still that ticket’s child, not the login’s', async () => {
    const login = await gw.issue('dbpw', bot.ref, ['conn:main']);
    const root = await gw.issue('echoed', bot.ref, ['conn:main']);
    const parent = await gw.ctx.vault.narrowTicket(root, { maxUses: 1 }, 'admin:test');
    const child = await echo(login, parent.ticket);
    const view = await gw.ctx.vault.inspectTicket(child);
    expect(view).toMatchObject({ parentId: parent.view.id, maxUses: 0, status: 'exhausted' });
  });

  it('no canary in logs or audit', async () => {
    await gw.settled();
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    for (const place of [seen.join('\n'), gw.logs(), audit]) expect(place).not.toContain(CANARY);
  });
});
