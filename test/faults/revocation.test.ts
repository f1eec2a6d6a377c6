import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../src/core/errors.js';
import type { Principal } from '../../src/core/principal.js';
import type { StoreChange } from '../../src/store/types.js';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.js';
import { type Gateway, startGateway } from '../integration/http/harness.js';
import { startThrowawayPostgres, type ThrowawayPostgres } from '../integration/postgres/harness.js';

// Issue 20, item 3: a revocation is never late on any replica, whatever the order of
// events. Two replicas share one throwaway PostgreSQL, each through its own TCP proxy
// that can delay, stall and cut. A "release" is an exchange that handed the secret out;
// after a revoke returned, the count of releases must be zero. See ADR 0013.

const SECRET = 'revocation-canary-7Qm2Vx9Lp4';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Attempt {
  readonly start: number;
  readonly end: number;
  readonly ok: boolean;
  readonly seq?: number;
  readonly code?: string;
  /** Refused by the check in the audit transaction: a cache still held the old row. */
  readonly atCommit?: boolean;
}

/** Exchange (and, with `agentKey`, authenticate first, as the pipeline does) in a loop. */
async function hammer(
  gw: Gateway,
  ticket: string,
  who: { principal?: Principal; agentKey?: string },
  ms: number,
): Promise<Attempt[]> {
  const out: Attempt[] = [];
  const until = Date.now() + ms;
  while (Date.now() < until) {
    const start = Date.now();
    try {
      const principal =
        who.agentKey === undefined ? who.principal! : await gw.ctx.agents.authenticate(who.agentKey);
      const ex = await gw.ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } });
      expect(ex.value.revealText()).toBe(SECRET);
      out.push({ start, end: Date.now(), ok: true, seq: ex.auditSeq });
    } catch (error) {
      if (!(error instanceof CoatcheckError)) throw error;
      out.push({
        start,
        end: Date.now(),
        ok: false,
        code: error.code,
        atCommit: error.details?.checkedAt === 'commit',
      });
      await sleep(5);
    }
  }
  return out;
}

/** Releases the revoke did not stop: recorded after its record, or begun after it returned. */
function lateReleases(attempts: readonly Attempt[], revokeSeq: number, returnedAt: number): Attempt[] {
  return attempts.filter((a) => a.ok && ((a.seq ?? 0) > revokeSeq || a.start >= returnedAt));
}

describe('revocation across replicas under faults (PostgreSQL)', () => {
  let pg: ThrowawayPostgres;
  let proxyA: TcpProxy;
  let proxyB: TcpProxy;
  let a: Gateway;
  let b: Gateway;
  let agent: { key: string; ref: string };
  let principal: Principal;
  const bChanges: StoreChange[] = [];

  beforeAll(async () => {
    pg = await startThrowawayPostgres();
    const url = `postgres://postgres:${encodeURIComponent(pg.password)}@127.0.0.1:${pg.port}/postgres?sslmode=disable`;
    proxyA = await startTcpProxy('127.0.0.1', pg.port);
    proxyB = await startTcpProxy('127.0.0.1', pg.port);
    const masterKey = randomBytes(32).toString('base64');
    a = await startGateway({ databaseUrl: proxyA.via(url), masterKey });
    b = await startGateway({ databaseUrl: proxyB.via(url), masterKey, fromHome: a.dir });
    b.ctx.store.subscribe((change) => bChanges.push(change));
    agent = await a.createAgent('hammer');
    principal = await a.ctx.agents.authenticate(agent.key);
    await a.addSecret('s', SECRET, ['svc']);
  }, 60_000);

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await proxyA?.close();
    await proxyB?.close();
    pg?.stop();
  });

  async function revokeSeq(type: string, field: string, id: string): Promise<number> {
    const tail = await a.ctx.audit.tail(20_000);
    const record = tail.find((r) => r.type === type && r.data[field] === id);
    expect(record).toBeDefined();
    return record!.seq;
  }

  /** A ticket both replicas have exchanged (and so hold in their caches). */
  async function warmTicket(bound: Principal = principal): Promise<{ ticket: string; id: string }> {
    const issued = await a.ctx.vault.issueTicket({ secret: 's', principal: bound.ref }, 'admin:test');
    for (const gw of [a, b])
      await gw.ctx.vault.exchange(issued.ticket, { principal: bound, target: { connection: 'svc' } });
    return { ticket: issued.ticket, id: issued.view.id };
  }

  it('a change notice that arrives while a replica reads the row keeps that row out of its cache', async () => {
    const issued = await a.ctx.vault.issueTicket({ secret: 's', principal: principal.ref }, 'admin:test');
    // B reads the ticket for the first time; the answer is held 300 ms on the way back.
    proxyB.delay('pool', 300);
    const running = hammer(b, issued.ticket, { principal }, 2000);
    await sleep(60);
    await a.ctx.vault.revokeTicket(issued.ticket, 'admin:test');
    const returnedAt = Date.now();
    proxyB.delay('pool', 0);
    const attempts = await running;
    const seq = await revokeSeq('token.revoke', 'ticket', issued.view.id);

    // The fault happened: an exchange on B was reading when the revoke returned.
    const inFlight = attempts.find((x) => x.start < returnedAt && x.end > returnedAt);
    expect(inFlight).toBeDefined();
    expect(lateReleases(attempts, seq, returnedAt)).toEqual([]);
    // Not only refused at the last moment: B did not cache the row it read before the notice.
    const after = attempts.filter((x) => x.start >= inFlight!.end);
    expect(after.length).toBeGreaterThan(5);
    expect(after.filter((x) => x.atCommit)).toEqual([]);
    expect(after.every((x) => x.code === 'CC_ERR_TICKET_REVOKED')).toBe(true);
  }, 30_000);

  it('a replica whose LISTEN connection stalls stops serving from cache, and resyncs when it recovers', async () => {
    const { ticket, id } = await warmTicket();
    expect(b.ctx.store.feedCurrent()).toBe(true);
    let resyncs = 0;
    proxyB.stall('listen');
    const stalledAt = Date.now();
    try {
      await a.ctx.vault.revokeTicket(ticket, 'admin:test');
      const returnedAt = Date.now();
      const attempts = await hammer(b, ticket, { principal }, 2500);
      const seq = await revokeSeq('token.revoke', 'ticket', id);
      expect(lateReleases(attempts, seq, returnedAt)).toEqual([]);
      // The stall was noticed (heartbeat 250 ms, stale after 1 s) ...
      expect(b.ctx.store.feedCurrent()).toBe(false);
      // ... and from then on B read the store instead of its cache: refused without needing the last check.
      const afterStale = attempts.filter((x) => x.start > stalledAt + 1500);
      expect(afterStale.length).toBeGreaterThan(5);
      expect(afterStale.filter((x) => x.atCommit)).toEqual([]);
    } finally {
      resyncs = bChanges.filter((c) => c.type === 'resync').length;
      proxyB.resume('listen');
    }
    await expect.poll(() => b.ctx.store.feedCurrent(), { timeout: 15_000, interval: 50 }).toBe(true);
    expect(bChanges.filter((c) => c.type === 'resync').length).toBeGreaterThan(resyncs);
  }, 40_000);

  it('a revoke whose audit write fails commits nothing, and a retry then holds on every replica', async () => {
    const parent = await warmTicket();
    const child = await a.ctx.vault.narrowTicket(parent.ticket, { maxUses: 1000 }, 'admin:test');
    for (const gw of [a, b])
      await gw.ctx.vault.exchange(child.ticket, { principal, target: { connection: 'svc' } });
    const db = pg.direct();
    await db.connect();
    try {
      // Fail the second record of a tree revoke (the descendants' record).
      await db.query(`CREATE FUNCTION cc_fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.type = 'token.revoke.tree' THEN RAISE EXCEPTION 'injected audit failure'; END IF; RETURN NEW; END $$`);
      await db.query(
        'CREATE TRIGGER cc_fail_audit BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION cc_fail_audit()',
      );
      await expect(a.ctx.vault.revokeTicket(parent.ticket, 'admin:test')).rejects.toMatchObject({
        code: 'CC_ERR_AUDIT_UNAVAILABLE',
      });
      // Nothing half-done: no ticket revoked, no record of a revoke. (Before the fix the
      // revoke committed, returned an error, and both replicas kept releasing from cache.)
      const rows = await db.query('SELECT id FROM tickets WHERE id = ANY($1) AND revoked_at IS NOT NULL', [
        [parent.id, child.view.id],
      ]);
      expect(rows.rowCount).toBe(0);
      const records = await db.query(
        "SELECT seq FROM audit WHERE type LIKE 'token.revoke%' AND data::jsonb->>'ticket' = $1",
        [parent.id],
      );
      expect(records.rowCount).toBe(0);
    } finally {
      await db.query('DROP TRIGGER IF EXISTS cc_fail_audit ON audit');
      await db.end();
    }
    await a.ctx.vault.revokeTicket(parent.ticket, 'admin:test');
    const returnedAt = Date.now();
    const seq = await revokeSeq('token.revoke', 'ticket', parent.id);
    const attempts = (
      await Promise.all([a, b].map((gw) => hammer(gw, child.ticket, { principal }, 800)))
    ).flat();
    expect(lateReleases(attempts, seq, returnedAt)).toEqual([]);
  }, 30_000);

  it('a revoke whose COMMIT answer is lost (it did commit) still holds on every replica', async () => {
    const { ticket, id } = await warmTicket();
    const cut = proxyA.cutAtCommitAfter('UPDATE tickets SET revoked_at');
    await expect(a.ctx.vault.revokeTicket(ticket, 'admin:test')).rejects.toBeInstanceOf(CoatcheckError);
    await Promise.race([cut, sleep(5000).then(() => Promise.reject(new Error('the COMMIT was never cut')))]);
    // The proxy has passed the COMMIT on; the server commits it a moment later (under load,
    // after the revoke has already failed on A). Wait for the commit and for B's notice of it:
    // from then on no replica may release, and none may need the last check to refuse.
    const heardOnB = () => bChanges.some((c) => c.type === 'ticket.revoked' && c.ids.includes(id));
    await expect.poll(heardOnB, { timeout: 10_000, interval: 20 }).toBe(true);
    const returnedAt = Date.now();
    const seq = await revokeSeq('token.revoke', 'ticket', id);
    const attempts = (await Promise.all([a, b].map((gw) => hammer(gw, ticket, { principal }, 1000)))).flat();
    expect(attempts.length).toBeGreaterThan(10);
    expect(lateReleases(attempts, seq, returnedAt)).toEqual([]);
    // Both replicas dropped the row at once: A because its revoke ended, B by the notice
    // that committed with the revoke.
    expect(attempts.filter((x) => x.atCommit)).toEqual([]);
  }, 30_000);

  it('an agent revoked while a replica reads its key is refused there at once', async () => {
    const name = `victim-${randomBytes(3).toString('hex')}`;
    const victim = await a.createAgent(name);
    const victimPrincipal = await a.ctx.agents.authenticate(victim.key);
    const { ticket } = await warmTicket(victimPrincipal);
    await b.ctx.agents.authenticate(victim.key);
    // Make B read the agent (and ticket) afresh, with its answers held 300 ms.
    const heard = bChanges.length;
    await a.ctx.store.publish({ type: 'resync' });
    await expect.poll(() => bChanges.length > heard, { timeout: 2000, interval: 5 }).toBe(true);
    proxyB.delay('pool', 300);
    const running = hammer(b, ticket, { agentKey: victim.key }, 2000);
    await sleep(60);
    await a.ctx.agents.revoke(name, 'admin:test');
    const returnedAt = Date.now();
    proxyB.delay('pool', 0);
    const attempts = await running;
    const seq = await revokeSeq('agent.revoke', 'agent', victimPrincipal.ref.slice(6));

    const inFlight = attempts.find((x) => x.start < returnedAt && x.end > returnedAt);
    expect(inFlight).toBeDefined();
    expect(lateReleases(attempts, seq, returnedAt)).toEqual([]);
    const after = attempts.filter((x) => x.start >= inFlight!.end);
    expect(after.length).toBeGreaterThan(5);
    expect(after.filter((x) => x.atCommit)).toEqual([]);
    expect(after.every((x) => x.code === 'CC_ERR_AGENT_REVOKED')).toBe(true);
  }, 30_000);
});
