import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Operation } from '../../src/approvals/approvals.js';
import { gate } from '../../src/approvals/gate.js';
import type { Principal } from '../../src/core/principal.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const POLICY = `@id("writes-need-approval") @approval("required")
permit(principal, action == Action::"sql:write", resource == Connection::"orders");
@id("ddl-needs-two-dbas") @approval("required") @approvers("dba") @quorum("2")
permit(principal, action == Action::"sql:ddl", resource == Connection::"orders");
`;

const sql = (statement: string, action = 'sql:write'): Operation => ({
  kind: 'sql',
  connection: 'orders',
  action,
  summary: statement,
  detail: { statement },
});

/**
 * Item 6: an approval whose use cannot be recorded is neither spent nor granted. The
 * store really fails: a trigger makes SQLite abort every `approval.use` audit insert, as
 * a full disk or a lost database would, after the spend already ran in the transaction.
 */
describe('approvals fail closed when the use cannot be recorded', () => {
  let t: TestHome;
  let ctx: Context;
  let agent: Principal;
  const ada = { ref: 'user:ada', name: 'ada', groups: ['dba'] };
  const bob = { ref: 'user:bob', name: 'bob', groups: ['dba'] };

  const sqlite = (statement: string) => {
    const db = new Database(join(t.home.dir, 'coatcheck.db'));
    db.exec(statement);
    db.close();
  };
  const breakUseRecords = () =>
    sqlite(
      `CREATE TRIGGER approval_use_down BEFORE INSERT ON audit WHEN NEW.type = 'approval.use'
       BEGIN SELECT RAISE(ABORT, 'disk full'); END`,
    );
  const repair = () => sqlite('DROP TRIGGER approval_use_down');
  const stored = async (id: string) => (await ctx.store.getApproval(id))!.status;
  const useRecords = async () => {
    await ctx.audit.flush();
    return (await ctx.store.readAudit(0, 10_000)).filter((r) => r.type === 'approval.use');
  };

  beforeEach(async () => {
    t = await makeTestHome();
    writeFileSync(join(t.home.dir, 'policy.cedar'), POLICY);
    writeFileSync(t.home.configFile, 'policy:\n  path: policy.cedar\napprovals:\n  holdTimeout: 10s\n');
    ctx = await t.open();
    const created = await ctx.agents.create({ name: 'writer' }, 'admin:test');
    agent = await ctx.agents.authenticate(created.key);
  });
  afterEach(async () => {
    await ctx.close().catch(() => undefined);
    t.remove();
  });

  it('a single-use approval stays unspent and grants nothing, then works exactly once after repair', async () => {
    const op = sql('DELETE FROM orders WHERE id = 7');
    const pending = await ctx.approvals.request(agent, op, { approvers: [], quorum: 1 });
    await ctx.approvals.decide(pending.id, { approver: ada, decision: 'approve' }, 'admin:test');
    breakUseRecords();
    await expect(ctx.approvals.use(agent, op)).rejects.toMatchObject({ code: 'CC_ERR_AUDIT_UNAVAILABLE' });
    // Again: still refused, still not spent (the rollback did not leave it half-used).
    await expect(ctx.approvals.use(agent, op)).rejects.toMatchObject({ code: 'CC_ERR_AUDIT_UNAVAILABLE' });
    expect(await stored(pending.id)).toBe('approved');
    expect(await useRecords()).toEqual([]);
    repair();
    await expect(ctx.approvals.use(agent, op)).resolves.toMatchObject({ id: pending.id, status: 'used' });
    await expect(ctx.approvals.use(agent, op)).resolves.toBeNull();
    expect(await useRecords()).toHaveLength(1);
  });

  it('the held operation is refused when its approval arrives but its use cannot be recorded', async () => {
    const op = sql('UPDATE orders SET total = 0');
    let held = '';
    const outcome = gate(ctx.gate, {
      principal: agent,
      action: op.action,
      resource: { type: 'Connection', id: 'orders' },
      context: { statement: String(op.detail.statement) },
      operation: op,
      onHold: (a) => {
        held = a.id;
      },
    }).then(
      (granted) => ({ granted: granted.approval?.id ?? null }),
      (error: { code: string }) => ({ refused: error.code }),
    );
    await expect.poll(() => held, { timeout: 10_000 }).not.toBe('');
    breakUseRecords();
    await ctx.approvals.decide(held, { approver: ada, decision: 'approve' }, 'admin:test');
    expect(await outcome).toEqual({ refused: 'CC_ERR_AUDIT_UNAVAILABLE' });
    expect(await stored(held)).toBe('approved');
    expect(await useRecords()).toEqual([]);
  });

  it('a quorum approval (two approvers) is not granted by a failed use either', async () => {
    const op = sql('ALTER TABLE orders ADD COLUMN note text', 'sql:ddl');
    const pending = await ctx.approvals.request(agent, op, { approvers: ['dba'], quorum: 2 });
    await ctx.approvals.decide(pending.id, { approver: ada, decision: 'approve' }, 'admin:test');
    await ctx.approvals.decide(pending.id, { approver: bob, decision: 'approve' }, 'admin:test');
    expect(await stored(pending.id)).toBe('approved');
    breakUseRecords();
    await expect(
      gate(ctx.gate, {
        principal: agent,
        action: op.action,
        resource: { type: 'Connection', id: 'orders' },
        context: { statement: String(op.detail.statement) },
        operation: op,
      }),
    ).rejects.toMatchObject({ code: 'CC_ERR_AUDIT_UNAVAILABLE' });
    expect(await stored(pending.id)).toBe('approved');
    expect(await useRecords()).toEqual([]);
  });

  it('concurrent uses during the failure: none is granted; after repair exactly one is', async () => {
    const op = sql('DELETE FROM orders WHERE id = 9');
    const pending = await ctx.approvals.request(agent, op, { approvers: [], quorum: 1 });
    await ctx.approvals.decide(pending.id, { approver: ada, decision: 'approve' }, 'admin:test');
    breakUseRecords();
    const during = await Promise.allSettled(Array.from({ length: 5 }, () => ctx.approvals.use(agent, op)));
    expect(during.filter((r) => r.status === 'fulfilled' && r.value !== null)).toEqual([]);
    repair();
    const after = await Promise.allSettled(Array.from({ length: 5 }, () => ctx.approvals.use(agent, op)));
    expect(after.filter((r) => r.status === 'fulfilled' && r.value !== null)).toHaveLength(1);
    expect(await useRecords()).toHaveLength(1);
  });
});
