import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../src/core/errors.js';
import { type Context, sqlitePath } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-revoke-sqlite-Hq7Zt3Wd';

// Issue 20, item 3, on the embedded store: a server and another process (the CLI writing
// directly) share one SQLite file. See ADR 0013.
describe('revocation on SQLite is never late', () => {
  let t: TestHome;
  let server: Context;
  let other: Context;
  beforeEach(async () => {
    t = await makeTestHome();
    server = await t.open();
    other = await t.open();
  });
  afterEach(async () => {
    await server.close();
    await other.close();
    t.remove();
  });

  async function setUp() {
    await server.vault.addSecret({ name: 's', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
    const agent = await server.agents.create({ name: 'a' }, 'admin:test');
    const principal = await server.agents.authenticate(agent.key);
    const issued = await server.vault.issueTicket({ secret: 's', principal: principal.ref }, 'admin:test');
    const child = await server.vault.narrowTicket(issued.ticket, { maxUses: 100 }, 'admin:test');
    // Warm the server's caches.
    for (const ticket of [issued.ticket, child.ticket])
      await server.vault.exchange(ticket, { principal, target: { connection: 'svc' } });
    return { agent, principal, ...issued, child };
  }

  const refusal = async (promise: Promise<unknown>) => {
    try {
      await promise;
    } catch (error) {
      if (!(error instanceof CoatcheckError)) throw error;
      return { code: error.code, atCommit: error.details?.checkedAt === 'commit' };
    }
    return { code: 'released', atCommit: false };
  };

  it('a ticket revoked by another process is refused at the very next exchange, not from a stale cache', async () => {
    const { ticket, view, principal } = await setUp();
    await other.vault.revokeTicket(view.id, 'admin:cli');
    // No wait: the cache hit itself notices the foreign commit.
    expect(
      await refusal(server.vault.exchange(ticket, { principal, target: { connection: 'svc' } })),
    ).toEqual({
      code: 'CC_ERR_TICKET_REVOKED',
      atCommit: false,
    });
  });

  // The server looks for foreign commits at most once a millisecond and a revocation is
  // reported done only after that window (ADR 0033): a server kept busy with the very
  // ticket being revoked (its last look always a moment old) must still refuse it next.
  it('a ticket revoked by another process while the server keeps exchanging it is refused at the next exchange', async () => {
    const { principal } = await setUp();
    for (let round = 0; round < 8; round++) {
      const issued = await server.vault.issueTicket({ secret: 's', principal: principal.ref }, 'admin:test');
      const exchange = () =>
        server.vault.exchange(issued.ticket, { principal, target: { connection: 'svc' } });
      await exchange();
      let stop = false;
      const busy = (async () => {
        while (!stop) await exchange().catch(() => undefined);
      })();
      try {
        await other.vault.revokeTicket(issued.view.id, 'admin:cli');
        expect(await refusal(exchange())).toEqual({ code: 'CC_ERR_TICKET_REVOKED', atCommit: false });
      } finally {
        stop = true;
        await busy;
      }
    }
  });

  it('an agent revoked by another process cannot authenticate at the very next request', async () => {
    const { agent } = await setUp();
    await other.agents.revoke('a', 'admin:cli');
    expect(await refusal(server.agents.authenticate(agent.key))).toEqual({
      code: 'CC_ERR_AGENT_REVOKED',
      atCommit: false,
    });
  });

  it('an exchange served from a cache that missed a revocation is still refused in its audit transaction', async () => {
    const { ticket, view, principal } = await setUp();
    // A revocation no change feed reports (written on the server's own connection, with no
    // notice): the cache still holds the live row, and only the check in the audit
    // transaction can stop the release.
    await server.store.revokeTicketTree(view.id, Date.now());
    expect(
      await refusal(server.vault.exchange(ticket, { principal, target: { connection: 'svc' } })),
    ).toEqual({
      code: 'CC_ERR_TICKET_REVOKED',
      atCommit: true,
    });
    const exchanges = (await server.audit.tail(20)).filter(
      (r) => r.type === 'token.exchange' && r.data.ticket === view.id,
    );
    expect(exchanges.length).toBe(1); // the warm-up only
  });

  it('a revoke whose audit write fails commits nothing and leaves no cache serving a revoked ticket', async () => {
    const { ticket, view, child, principal } = await setUp();
    const db = new Database(sqlitePath(t.home, server.config));
    try {
      db.exec(`CREATE TRIGGER cc_fail_audit BEFORE INSERT ON audit WHEN NEW.type = 'token.revoke.tree'
               BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END`);
    } finally {
      db.close();
    }
    await expect(server.vault.revokeTicket(view.id, 'admin:test')).rejects.toMatchObject({
      code: 'CC_ERR_AUDIT_UNAVAILABLE',
    });
    // All or nothing: the tree is not revoked (so releasing it is right), and no record claims it was.
    for (const id of [view.id, child.view.id])
      expect((await server.store.getTicketById(id))?.revokedAt).toBeNull();
    for (const tk of [ticket, child.ticket]) {
      const ex = await server.vault.exchange(tk, { principal, target: { connection: 'svc' } });
      expect(ex.value.revealText()).toBe(CANARY);
    }
    const records = (await server.audit.tail(50)).filter((r) => r.type.startsWith('token.revoke'));
    expect(records).toEqual([]);
  });
});
