import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { agentRef } from '../../src/core/principal.js';
import { GatewaySession, LiveSessions } from '../../src/gateway/session.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/**
 * Agent SSH keys and the held-ticket exchange behind a key login (ADR 0023), without an
 * SSH server: removal ends sessions (notified, or found on resync), and an exchange by id
 * makes every check a presented ticket gets.
 */
const CANARY = 'canary-held-exchange-3f2e1d0c9b8a7766';
const target = { connection: 'box', host: '127.0.0.1', port: 22 };

describe('agent SSH keys and held tickets', () => {
  let t: TestHome;
  let ctx: Context;
  let pubkey: string;

  beforeEach(async () => {
    t = await makeTestHome();
    ctx = await t.open();
    const path = join(t.dir, 'agent_key');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path, '-C', 'agent']);
    pubkey = readFileSync(`${path}.pub`, 'utf8');
    await ctx.vault.addSecret(
      { name: 'box-key', value: Buffer.from(CANARY), allow: ['conn:box'] },
      'admin:test',
    );
  });

  afterEach(async () => {
    await ctx.close();
    t.remove();
  });

  it('removing a key ends the sessions that logged in with it; a missed notice is caught on resync', async () => {
    const { agent } = await ctx.agents.create({ name: 'builder' }, 'admin:test');
    const live = new LiveSessions(ctx.store, ctx.vault, ctx.log);
    try {
      const key = await ctx.agents.addSshKey('builder', pubkey, 'admin:test');
      const session = new GatewaySession('ssh', ctx.clock);
      session.principal = {
        kind: 'agent',
        ref: agentRef(agent.id),
        name: 'builder',
        groups: [],
        attributes: {},
        expiresAt: null,
      };
      session.sshKeyIds.add(key.id);
      const bystander = new GatewaySession('ssh', ctx.clock);
      bystander.principal = session.principal;
      live.add(session);
      live.add(bystander);
      await ctx.agents.removeSshKey('builder', key.fingerprint, 'admin:test');
      expect(session.terminatedBy).toBe('CC_ERR_SSH_KEY_REMOVED');
      expect(bystander.terminatedBy).toBeNull();

      // A replica that missed the notice: the key is gone from the store, then a resync.
      const again = await ctx.agents.addSshKey('builder', pubkey, 'admin:test');
      const late = new GatewaySession('ssh', ctx.clock);
      late.principal = session.principal;
      late.sshKeyIds.add(again.id);
      live.add(late);
      await ctx.store.transaction((tx) => tx.removeAgentSshKey(again.id, ctx.clock.now()));
      expect(late.terminatedBy).toBeNull();
      await ctx.store.publish({ type: 'resync' });
      await vi.waitFor(() => expect(late.terminatedBy).toBe('CC_ERR_SSH_KEY_REMOVED'), { timeout: 10_000 });
    } finally {
      live.close();
    }
  });

  it('exchangeHeld makes every check of an exchange: principal, destination, revocation; refusals audited', async () => {
    const builder = agentRef((await ctx.agents.create({ name: 'builder' }, 'admin:test')).agent.id);
    const other = agentRef((await ctx.agents.create({ name: 'other' }, 'admin:test')).agent.id);
    const principal = (ref: string) => ({
      kind: 'agent' as const,
      ref,
      name: ref,
      groups: [],
      attributes: {},
      expiresAt: null,
    });
    const issued = await ctx.vault.issueTicket(
      { secret: 'box-key', principal: builder, destinations: ['conn:box'] },
      'admin:test',
    );
    const id = issued.view.id;
    expect(await ctx.vault.heldTickets(builder, 'box-key', target)).toEqual([id]);
    // Held by the agent, not by another; not for another connection or a missing secret.
    expect(await ctx.vault.heldTickets(other, 'box-key', target)).toEqual([]);
    expect(await ctx.vault.heldTickets(builder, 'box-key', { ...target, connection: 'elsewhere' })).toEqual(
      [],
    );
    expect(await ctx.vault.heldTickets(builder, 'no-such-secret', target)).toEqual([]);

    // Another agent naming this ticket's id gets nothing: the id is not a credential.
    await expect(ctx.vault.exchangeHeld(id, { principal: principal(other), target })).rejects.toMatchObject({
      code: 'CC_ERR_TICKET_WRONG_PRINCIPAL',
    });
    await expect(
      ctx.vault.exchangeHeld(id, {
        principal: principal(builder),
        target: { ...target, connection: 'elsewhere' },
      }),
    ).rejects.toMatchObject({ code: 'CC_ERR_TICKET_WRONG_DESTINATION' });
    await expect(
      ctx.vault.exchangeHeld('tkt_doesnotexist0000', { principal: principal(builder), target }),
    ).rejects.toMatchObject({ code: 'CC_ERR_TICKET_UNKNOWN' });
    const released = await ctx.vault.exchangeHeld(id, { principal: principal(builder), target });
    expect(released.value.reveal().toString()).toBe(CANARY);
    await ctx.vault.revokeTicket(id, 'admin:test');
    await expect(ctx.vault.exchangeHeld(id, { principal: principal(builder), target })).rejects.toMatchObject(
      {
        code: 'CC_ERR_TICKET_REVOKED',
      },
    );
    expect(await ctx.vault.heldTickets(builder, 'box-key', target)).toEqual([]);
    await ctx.audit.flush();
    const audit = await ctx.store.readAudit(0, 100_000);
    const refused = audit.filter((a) => a.type === 'token.refused').map((a) => a.data.code);
    expect(refused).toEqual(
      expect.arrayContaining([
        'CC_ERR_TICKET_WRONG_PRINCIPAL',
        'CC_ERR_TICKET_WRONG_DESTINATION',
        'CC_ERR_TICKET_UNKNOWN',
        'CC_ERR_TICKET_REVOKED',
      ]),
    );
    expect(JSON.stringify(audit)).not.toContain(CANARY);
  });
});
