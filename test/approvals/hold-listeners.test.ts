import { getEventListeners } from 'node:events';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Approvals, type Operation } from '../../src/approvals/approvals.js';
import { systemClock } from '../../src/core/clock.js';
import type { Principal } from '../../src/core/principal.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const op = (statement: string): Operation => ({
  kind: 'sql',
  connection: 'orders',
  action: 'sql:write',
  summary: statement,
  detail: { statement },
});

/**
 * Issue 19, item 13: an approval held longer than 10 s logged MaxListenersExceededWarning,
 * because every 1 s poll added an abort listener to the request's signal. A short poll
 * (10 ms) makes 40 polls in 400 ms, as a 40 s hold would with the default.
 */
describe('a long-held approval does not leak listeners', () => {
  let t: TestHome;
  let ctx: Context;
  let agent: Principal;
  let approvals: Approvals;
  const warnings: Error[] = [];
  const onWarning = (w: Error) => warnings.push(w);

  beforeEach(async () => {
    t = await makeTestHome();
    writeFileSync(join(t.home.dir, 'policy.cedar'), '');
    ctx = await t.open();
    const created = await ctx.agents.create({ name: 'writer' }, 'admin:test');
    agent = await ctx.agents.authenticate(created.key);
    approvals = new Approvals(ctx.store, ctx.audit, systemClock, {
      pendingTtlMs: 60_000,
      useWindowMs: 60_000,
      pollMs: 10,
    });
    warnings.length = 0;
    process.on('warning', onWarning);
  });
  afterEach(async () => {
    process.off('warning', onWarning);
    await ctx.close().catch(() => undefined);
    t.remove();
  });

  it('keeps one abort listener and one change-feed listener through 40 polls, and none after', async () => {
    const signal = new AbortController().signal;
    const pending = await approvals.request(agent, op('DELETE FROM orders WHERE id = 1'), {
      approvers: [],
      quorum: 1,
    });
    const held = approvals.waitForDecision(pending.id, 10_000, signal);
    const counts: number[] = [];
    for (let i = 0; i < 8; i++) {
      await new Promise((r) => setTimeout(r, 50));
      counts.push(getEventListeners(signal, 'abort').length);
    }
    expect(Math.max(...counts)).toBe(1);
    expect(approvals.waiting()).toEqual({ requests: 1, subscribed: true });
    await approvals.decide(
      pending.id,
      { approver: { ref: 'user:ada', name: 'ada', groups: [] }, decision: 'approve' },
      'admin:test',
    );
    expect((await held).status).toBe('approved');
    expect(getEventListeners(signal, 'abort')).toHaveLength(0);
    expect(approvals.waiting()).toEqual({ requests: 0, subscribed: false });
    await new Promise((r) => setImmediate(r));
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
  });

  it('twenty operations held at once share one subscription to the change feed; each wakes on its own decision', async () => {
    const pendings = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        approvals.request(agent, op(`DELETE FROM orders WHERE id = ${i + 10}`), { approvers: [], quorum: 1 }),
      ),
    );
    const controllers = pendings.map(() => new AbortController());
    const holds = pendings.map((p, i) => approvals.waitForDecision(p.id, 10_000, controllers[i]!.signal));
    await new Promise((r) => setTimeout(r, 200));
    expect(approvals.waiting()).toEqual({ requests: 20, subscribed: true });
    for (const [i, p] of pendings.entries()) {
      if (i % 2 === 0)
        await approvals.decide(
          p.id,
          { approver: { ref: 'user:ada', name: 'ada', groups: [] }, decision: 'deny' },
          'admin:test',
        );
      else controllers[i]!.abort();
    }
    const outcomes = await Promise.all(holds);
    expect(outcomes.map((o) => o.status)).toEqual(
      pendings.map((_, i) => (i % 2 === 0 ? 'denied' : 'pending')),
    );
    expect(approvals.waiting()).toEqual({ requests: 0, subscribed: false });
    await new Promise((r) => setImmediate(r));
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
  });
});
