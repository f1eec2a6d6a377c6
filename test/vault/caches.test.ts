import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { SecretValue } from '../../src/core/secret-value.js';
import type { Context } from '../../src/server/context.js';
import type { SecretRecord, StoreChange, TicketRecord } from '../../src/store/types.js';
import type { KnownSecret } from '../../src/vault/model.js';
import { VaultCaches } from '../../src/vault/vault-caches.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/**
 * The vault's caches on their own (ADR 0013, ADR 0017), on a real store and its change
 * feed: a change notice that arrives while a row is being read keeps that row out of the
 * cache, whatever the services do around it.
 */
describe('vault caches: versioned fills', () => {
  let t: TestHome;
  let ctx: Context;
  let caches: VaultCaches;
  const row = { chain: [] as TicketRecord[], secret: {} as SecretRecord, value: null as SecretValue | null };

  beforeEach(async () => {
    t = await makeTestHome();
    ctx = await t.open();
    caches = new VaultCaches(ctx.store);
  });
  afterEach(async () => {
    caches.close();
    await ctx.close();
    t.remove();
  });

  /** Reads counted; `during` runs while the read is in flight. */
  function loader(during?: () => Promise<void>) {
    const counter = { reads: 0 };
    const load = async () => {
      counter.reads++;
      if (during !== undefined) await during();
      return row;
    };
    return { counter, load };
  }

  it('keeps a fill made with no change in flight, and serves it until it is older than maxAge', async () => {
    const { counter, load } = loader();
    await caches.ticket('h1', 1_000, 50, load);
    await caches.ticket('h1', 1_040, 50, load);
    expect(counter.reads).toBe(1);
    await caches.ticket('h1', 1_050, 50, load);
    expect(counter.reads).toBe(2);
  });

  it.each<StoreChange>([
    { type: 'ticket.revoked', ids: ['tkt_x'] },
    { type: 'secret.erased', id: 'sec_x' },
    { type: 'agent.revoked', id: 'agt_x' },
    { type: 'keys.rotated' },
  ])('a $type notice that arrives during the read keeps the row out of the ticket cache', async (change) => {
    const { counter, load } = loader(() => ctx.store.publish(change));
    const first = await caches.ticket('h1', 1_000, 60_000, load);
    expect(first.chain).toBe(row.chain); // the reader still gets its answer
    const again = loader();
    await caches.ticket('h1', 1_001, 60_000, again.load);
    expect(counter.reads + again.counter.reads).toBe(2); // read again: nothing was kept
  });

  it('approval and connection notices leave the caches alone; a new secret drops only the known list', async () => {
    const tickets = loader();
    await caches.ticket('h1', 1_000, 60_000, tickets.load);
    const known: KnownSecret[] = [];
    let knownReads = 0;
    const loadKnown = async () => {
      knownReads++;
      return known;
    };
    await caches.known(loadKnown);
    await ctx.store.publish({ type: 'approval.changed', id: 'apr_x' });
    await ctx.store.publish({ type: 'connection.changed', name: 'c' });
    await caches.ticket('h1', 1_001, 60_000, tickets.load);
    await caches.known(loadKnown);
    expect([tickets.counter.reads, knownReads]).toEqual([1, 1]);
    await ctx.store.publish({ type: 'secret.added', id: 'sec_x' });
    await caches.ticket('h1', 1_002, 60_000, tickets.load);
    await caches.known(loadKnown);
    expect([tickets.counter.reads, knownReads]).toEqual([1, 2]);
  });

  it('revocations and ended workflows drop the ticket cache and keep the known list', async () => {
    const tickets = loader();
    let knownReads = 0;
    const loadKnown = async () => {
      knownReads++;
      return [] as KnownSecret[];
    };
    await caches.ticket('h1', 1_000, 60_000, tickets.load);
    await caches.known(loadKnown);
    for (const change of [
      { type: 'ticket.revoked', ids: ['tkt_x'] },
      { type: 'agent.revoked', id: 'agt_x' },
      { type: 'workflow.ended', ids: ['wfn_x'] },
    ] as const) {
      await ctx.store.publish(change);
      await caches.ticket('h1', 1_001, 60_000, tickets.load);
      await caches.known(loadKnown);
    }
    expect([tickets.counter.reads, knownReads]).toEqual([4, 1]);
    // An erasure changes the list.
    await ctx.store.publish({ type: 'secret.erased', id: 'sec_x' });
    await caches.known(loadKnown);
    expect(knownReads).toBe(2);
  });

  it('an own change (invalidate) during a read keeps it out, for both caches', async () => {
    const { counter, load } = loader(async () => caches.invalidateTickets());
    await caches.ticket('h1', 1_000, 60_000, load);
    await caches.ticket('h1', 1_001, 60_000, load);
    expect(counter.reads).toBe(2);
    let knownReads = 0;
    const loadKnown = async () => {
      knownReads++;
      if (knownReads === 1) caches.invalidateKnown();
      return [];
    };
    await caches.known(loadKnown);
    await caches.known(loadKnown);
    await caches.known(loadKnown);
    expect(knownReads).toBe(2);
  });
});
