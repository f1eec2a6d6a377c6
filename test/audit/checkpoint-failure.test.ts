import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/audit-log.js';
import { systemClock } from '../../src/core/clock.js';
import type { Context } from '../../src/server/context.js';
import { untypedEvent } from '../helpers/audit.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/**
 * A checkpoint names a replica chain's head on the main chain; until one is written, the
 * chain's latest records are not anchored. A checkpoint that cannot be written is not an
 * operation's refusal (none waits on it), but it must not go unnoticed: it is counted,
 * reported (the server logs it, scrubbed, and serves the count as a metric), and retried.
 */
describe('audit checkpoints that fail', () => {
  let t: TestHome;
  let ctx: Context;
  beforeEach(async () => {
    t = await makeTestHome();
    ctx = await t.open();
  });
  afterEach(async () => {
    await ctx.close();
    t.remove();
  });

  it('are counted and reported, on the timer and at close; the next tick after repair anchors the chain', async () => {
    const log = new AuditLog(ctx.store, randomBytes(32), systemClock, { ownChain: true, checkpointMs: 30 });
    const reported: unknown[] = [];
    log.onCheckpointFailure = (error) => reported.push(error);
    const db = new Database(join(t.home.dir, 'coatcheck.db'));
    db.exec(
      `CREATE TRIGGER checkpoints_down BEFORE INSERT ON audit WHEN NEW.type = 'audit.checkpoint' BEGIN SELECT RAISE(ABORT, 'disk full'); END`,
    );
    const checkpoints = async () =>
      (await ctx.store.readAudit(0, 10_000)).filter((r) => r.type === 'audit.checkpoint').length;
    try {
      await log.append(untypedEvent({ type: 'test.event', actor: 'test', data: { n: 1 } }));
      for (let i = 0; i < 200 && log.checkpointFailures < 2; i++) await new Promise((r) => setTimeout(r, 15));
      expect(log.checkpointFailures).toBeGreaterThanOrEqual(2);
      expect(reported.length).toBe(log.checkpointFailures);
      expect(await checkpoints()).toBe(0);
    } finally {
      db.exec('DROP TRIGGER checkpoints_down');
    }
    for (let i = 0; i < 200 && (await checkpoints()) === 0; i++) await new Promise((r) => setTimeout(r, 15));
    expect(await checkpoints()).toBeGreaterThan(0);
    // A failure at close is counted as well.
    await log.append(untypedEvent({ type: 'test.event', actor: 'test', data: { n: 2 } }));
    db.exec(
      `CREATE TRIGGER checkpoints_down BEFORE INSERT ON audit WHEN NEW.type = 'audit.checkpoint' BEGIN SELECT RAISE(ABORT, 'disk full'); END`,
    );
    const before = log.checkpointFailures;
    await log.close();
    db.exec('DROP TRIGGER checkpoints_down');
    db.close();
    expect(log.checkpointFailures).toBeGreaterThan(before);
  });

  it("the server's metrics registry serves the count", async () => {
    ctx.audit.checkpointFailures = 3;
    expect(await ctx.metrics.metrics()).toMatch(/^coatcheck_audit_checkpoint_failures_total 3$/m);
  });
});
