import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { AuditEvent } from '../../src/audit/events.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-events-Vq83kLp1Zx';

describe('typed audit events', () => {
  let t: TestHome;
  let ctx: Context;

  beforeEach(async () => {
    t = await makeTestHome();
    ctx = await t.open();
  });
  afterEach(async () => {
    await ctx.close().catch(() => undefined);
    t.remove();
  });

  it('a misspelt type, a missing field or a wrong field type does not compile', () => {
    // Each declaration below must be a compile error (`tsc` fails on an unused @ts-expect-error).
    const actor = 'admin:test';
    // @ts-expect-error misspelt type
    const misspelt: AuditEvent = { type: 'token.revokd', actor, data: { ticket: 'tkt_1' } };
    // @ts-expect-error missing field (`revoked`)
    const missing: AuditEvent = { type: 'token.revoke.tree', actor, data: { ticket: 'tkt_1' } };
    const unknownField: AuditEvent = {
      type: 'agent.revoke',
      actor,
      // @ts-expect-error misspelt field of a kind without caller context
      data: { agent: 'agt_1', nmae: 'a' },
    };
    const limit = '5';
    const wrongType: AuditEvent = {
      type: 'found.limit',
      actor,
      // @ts-expect-error wrong field type
      data: { principal: 'p', limit, windowSeconds: 1 },
    };
    // @ts-expect-error no actor
    const noActor: AuditEvent = { type: 'connection.remove', data: { name: 'c' } };
    expect([misspelt, missing, unknownField, wrongType, noActor]).toHaveLength(5);
  });

  it('stores a typed event exactly as before: { type, actor, data } with the given fields, and the chain verifies', async () => {
    await ctx.vault.addSecret(
      { name: 'db', value: Buffer.from(CANARY), allow: ['db.internal:5432'] },
      'admin:test',
    );
    const { ticket, view } = await ctx.vault.issueTicket(
      { secret: 'db', principal: 'agent:agt_x' },
      'admin:test',
    );
    const child = await ctx.vault.narrowTicket(ticket, {}, 'admin:test');
    await ctx.vault.revokeTicket(view.id, 'admin:test');
    await ctx.audit.flush();
    const records = await ctx.audit.tail(10);
    const revoke = records.find((r) => r.type === 'token.revoke');
    const tree = records.find((r) => r.type === 'token.revoke.tree');
    expect(revoke).toMatchObject({ actor: 'admin:test', data: { ticket: view.id } });
    expect(Object.keys(revoke!.data)).toEqual(['ticket']);
    expect(tree?.data).toEqual({
      ticket: view.id,
      revoked: expect.arrayContaining([view.id, child.view.id]),
    });
    const issue = records.find((r) => r.type === 'token.issue');
    expect(Object.keys(issue!.data).sort()).toEqual(
      ['destinations', 'expiresAt', 'maxUses', 'principal', 'secret', 'ticket'].sort(),
    );
    expect(JSON.stringify(records)).not.toContain(CANARY);
    expect(JSON.stringify(records)).not.toContain(ticket);
    expect(await ctx.audit.verify()).toMatchObject({ ok: true });
  });
});
