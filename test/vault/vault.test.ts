import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { manualClock } from '../../src/core/clock.js';
import type { Principal } from '../../src/core/principal.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-ghp-9f8e7d6c5b4a39281706';

describe('vault: tickets and exchange', () => {
  let t: TestHome;
  let ctx: Context;
  const clock = manualClock(Date.parse('2026-01-01T00:00:00Z'));
  let builder: Principal;
  let other: Principal;

  beforeEach(async () => {
    clock.set(Date.parse('2026-01-01T00:00:00Z'));
    t = await makeTestHome();
    ctx = await t.open({ clock });
    await ctx.vault.addSecret(
      { name: 'github', value: Buffer.from(CANARY), allow: ['github', '*.github.com'] },
      'admin:test',
    );
    const a = await ctx.agents.create({ name: 'builder', groups: ['ci'] }, 'admin:test');
    const b = await ctx.agents.create({ name: 'other' }, 'admin:test');
    builder = await ctx.agents.authenticate(a.key);
    other = await ctx.agents.authenticate(b.key);
  });

  afterEach(async () => {
    await ctx.close();
    t.remove();
  });

  const toGithub = { connection: 'github', host: 'api.github.com', port: 443 };

  it('exchanges a valid ticket for the secret, after a durable audit record', async () => {
    const { ticket, view } = await ctx.vault.issueTicket(
      { secret: 'github', principal: builder.ref },
      'admin:test',
    );
    expect(ticket).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    expect(view.destinations).toEqual(['conn:github', 'host:*.github.com']);
    const exchange = await ctx.vault.exchange(ticket, {
      principal: builder,
      target: toGithub,
      operation: 'GET /user',
    });
    expect(exchange.value.revealText()).toBe(CANARY);
    const [record] = await ctx.store.readAudit(exchange.auditSeq - 1, 1);
    expect(record).toMatchObject({
      type: 'token.exchange',
      actor: builder.ref,
      data: { ticket: view.id, operation: 'GET /user' },
    });
    // By host pattern alone, too.
    await expect(
      ctx.vault.exchange(ticket, {
        principal: builder,
        target: { scheme: 'https', host: 'uploads.github.com', port: 443 },
      }),
    ).resolves.toBeDefined();
  });

  it('refuses every failure with its own code, and audits each refusal', async () => {
    const { ticket, view } = await ctx.vault.issueTicket(
      { secret: 'github', principal: builder.ref, ttlMs: 60_000, maxUses: 1 },
      'admin:test',
    );
    const code = (p: Promise<unknown>) =>
      p.then(
        () => 'resolved',
        (e: { code: string }) => e.code,
      );

    expect(await code(ctx.vault.exchange('cct_nope', { principal: builder, target: toGithub }))).toBe(
      'CC_ERR_TICKET_MALFORMED',
    );
    const mistyped = ticket.slice(0, 10) + (ticket[10] === 'x' ? 'y' : 'x') + ticket.slice(11);
    expect(await code(ctx.vault.exchange(mistyped, { principal: builder, target: toGithub }))).toBe(
      'CC_ERR_TICKET_CHECKSUM',
    );
    const { mintTicket } = await import('../../src/core/ticket-format.js');
    expect(await code(ctx.vault.exchange(mintTicket(), { principal: builder, target: toGithub }))).toBe(
      'CC_ERR_TICKET_UNKNOWN',
    );
    expect(await code(ctx.vault.exchange(ticket, { principal: other, target: toGithub }))).toBe(
      'CC_ERR_TICKET_WRONG_PRINCIPAL',
    );
    expect(
      await code(ctx.vault.exchange(ticket, { principal: builder, target: { host: 'evil.example.com' } })),
    ).toBe('CC_ERR_TICKET_WRONG_DESTINATION');
    expect(
      await code(
        ctx.vault.exchange(ticket, {
          principal: builder,
          target: { connection: 'gitlab', host: 'gitlab.com' },
        }),
      ),
    ).toBe('CC_ERR_TICKET_WRONG_DESTINATION');
    // The one use is still there after all those refusals.
    expect(await code(ctx.vault.exchange(ticket, { principal: builder, target: toGithub }))).toBe('resolved');
    expect(await code(ctx.vault.exchange(ticket, { principal: builder, target: toGithub }))).toBe(
      'CC_ERR_TICKET_EXHAUSTED',
    );

    const second = await ctx.vault.issueTicket(
      { secret: 'github', principal: builder.ref, ttlMs: 60_000 },
      'admin:test',
    );
    clock.advance(60_001);
    expect(await code(ctx.vault.exchange(second.ticket, { principal: builder, target: toGithub }))).toBe(
      'CC_ERR_TICKET_EXPIRED',
    );

    const third = await ctx.vault.issueTicket({ secret: 'github', principal: builder.ref }, 'admin:test');
    await ctx.vault.revokeTicket(third.ticket, 'admin:test');
    expect(await code(ctx.vault.exchange(third.ticket, { principal: builder, target: toGithub }))).toBe(
      'CC_ERR_TICKET_REVOKED',
    );

    await ctx.audit.flush();
    const records = await ctx.store.readAudit(0, 1000);
    const refusals = records.filter((r) => r.type === 'token.refused').map((r) => r.data.code);
    expect(refusals).toEqual([
      'CC_ERR_TICKET_MALFORMED',
      'CC_ERR_TICKET_CHECKSUM',
      'CC_ERR_TICKET_UNKNOWN',
      'CC_ERR_TICKET_WRONG_PRINCIPAL',
      'CC_ERR_TICKET_WRONG_DESTINATION',
      'CC_ERR_TICKET_WRONG_DESTINATION',
      'CC_ERR_TICKET_EXHAUSTED',
      'CC_ERR_TICKET_EXPIRED',
      'CC_ERR_TICKET_REVOKED',
    ]);
    const text = JSON.stringify(records);
    expect(text).not.toContain(CANARY);
    expect(text).not.toContain(ticket);
    expect(
      records.find((r) => r.type === 'token.refused' && r.data.code === 'CC_ERR_TICKET_WRONG_PRINCIPAL')?.data
        .ticket,
    ).toBe(view.id);
  });

  it('narrows only: destinations, expiry and uses within the parent; uses count against the parent', async () => {
    const parent = await ctx.vault.issueTicket(
      { secret: 'github', principal: builder.ref, ttlMs: 3_600_000, maxUses: 3 },
      'admin:test',
    );
    const code = (p: Promise<unknown>) =>
      p.then(
        () => 'resolved',
        (e: { code: string }) => e.code,
      );
    expect(
      await code(ctx.vault.narrowTicket(parent.ticket, { destinations: ['gitlab'] }, 'admin:test')),
    ).toBe('CC_ERR_TICKET_WIDENING');
    expect(await code(ctx.vault.narrowTicket(parent.ticket, { destinations: ['*.com'] }, 'admin:test'))).toBe(
      'CC_ERR_DEST_INVALID',
    );
    expect(
      await code(ctx.vault.narrowTicket(parent.ticket, { destinations: ['*.example.com'] }, 'admin:test')),
    ).toBe('CC_ERR_TICKET_WIDENING');
    expect(await code(ctx.vault.narrowTicket(parent.ticket, { ttlMs: 7_200_000 }, 'admin:test'))).toBe(
      'CC_ERR_TICKET_WIDENING',
    );
    expect(await code(ctx.vault.narrowTicket(parent.ticket, { maxUses: 4 }, 'admin:test'))).toBe(
      'CC_ERR_TICKET_WIDENING',
    );

    const child = await ctx.vault.narrowTicket(
      parent.ticket,
      { destinations: ['api.github.com'], maxUses: 2 },
      'admin:test',
    );
    expect(child.view).toMatchObject({
      destinations: ['host:api.github.com'],
      maxUses: 2,
      parentId: parent.view.id,
    });
    expect(child.view.expiresAt).toBe(parent.view.expiresAt);
    // The child cannot reach what the parent could but it may not.
    expect(
      await code(ctx.vault.exchange(child.ticket, { principal: builder, target: { connection: 'github' } })),
    ).toBe('CC_ERR_TICKET_WRONG_DESTINATION');
    const api = { scheme: 'https' as const, host: 'api.github.com', port: 443 };
    await ctx.vault.exchange(child.ticket, { principal: builder, target: api });
    await ctx.vault.exchange(parent.ticket, { principal: builder, target: api });
    // Parent had 3; child used 1, parent used 1: one left, the child may take it.
    await ctx.vault.exchange(child.ticket, { principal: builder, target: api });
    expect(await code(ctx.vault.exchange(parent.ticket, { principal: builder, target: api }))).toBe(
      'CC_ERR_TICKET_EXHAUSTED',
    );

    const grandchild = await ctx.vault.narrowTicket(
      (await ctx.vault.issueTicket({ secret: 'github', principal: builder.ref }, 'admin:test')).ticket,
      {},
      'admin:test',
    );
    expect(grandchild.view.principal).toBe(builder.ref);
  });

  it("revoking a ticket revokes all its descendants, not its siblings' parents", async () => {
    const root = await ctx.vault.issueTicket({ secret: 'github', principal: builder.ref }, 'admin:test');
    const child = await ctx.vault.narrowTicket(root.ticket, {}, 'admin:test');
    const grandchild = await ctx.vault.narrowTicket(child.ticket, {}, 'admin:test');
    const sibling = await ctx.vault.narrowTicket(root.ticket, {}, 'admin:test');
    // Warm the cache so revocation must invalidate it.
    await ctx.vault.exchange(grandchild.ticket, { principal: builder, target: toGithub });
    const result = await ctx.vault.revokeTicket(child.view.id, 'admin:test');
    expect(result.revoked.sort()).toEqual([child.view.id, grandchild.view.id].sort());
    await expect(
      ctx.vault.exchange(grandchild.ticket, { principal: builder, target: toGithub }),
    ).rejects.toMatchObject({
      code: 'CC_ERR_TICKET_REVOKED',
    });
    await expect(
      ctx.vault.exchange(sibling.ticket, { principal: builder, target: toGithub }),
    ).resolves.toBeDefined();
    await ctx.vault.revokeTicket(root.ticket, 'admin:test');
    await expect(
      ctx.vault.exchange(sibling.ticket, { principal: builder, target: toGithub }),
    ).rejects.toMatchObject({
      code: 'CC_ERR_TICKET_REVOKED',
    });
  });

  it("keeps tickets within the secret's destinations at issue", async () => {
    await expect(
      ctx.vault.issueTicket(
        { secret: 'github', principal: builder.ref, destinations: ['evil.example.com'] },
        'admin:test',
      ),
    ).rejects.toMatchObject({ code: 'CC_ERR_TICKET_WIDENING' });
    const narrow = await ctx.vault.issueTicket(
      { secret: 'github', principal: builder.ref, destinations: ['uploads.github.com'] },
      'admin:test',
    );
    expect(narrow.view.destinations).toEqual(['host:uploads.github.com']);
  });

  it('erasing a secret destroys its key: every ticket stops working, the value is gone from the file', async () => {
    const { ticket } = await ctx.vault.issueTicket(
      { secret: 'github', principal: builder.ref },
      'admin:test',
    );
    await ctx.vault.exchange(ticket, { principal: builder, target: toGithub });
    await ctx.vault.removeSecret('github', 'admin:test');
    await expect(ctx.vault.exchange(ticket, { principal: builder, target: toGithub })).rejects.toMatchObject({
      code: 'CC_ERR_TICKET_SECRET_ERASED',
    });
    const db = new Database(join(t.home.dir, 'coatcheck.db'), { readonly: true });
    const row = db.prepare('SELECT wrapped_key, ciphertext FROM secrets').get() as {
      wrapped_key: unknown;
      ciphertext: unknown;
    };
    db.close();
    expect(row).toEqual({ wrapped_key: null, ciphertext: null });
    // A new secret can take the name again.
    await ctx.vault.addSecret({ name: 'github', value: Buffer.from('v2'), allow: ['github'] }, 'admin:test');
  });

  it('refuses to erase a secret a connection uses, unless forced', async () => {
    await ctx.connections.add(
      {
        name: 'gh',
        type: 'http',
        url: 'https://api.github.com',
        injectHeaders: { Authorization: 'Bearer {{secret:github}}' },
      },
      'admin:test',
    );
    await expect(ctx.vault.removeSecret('github', 'admin:test')).rejects.toMatchObject({
      code: 'CC_ERR_SECRET_IN_USE',
    });
    await ctx.vault.removeSecret('github', 'admin:test', { force: true });
  });

  it('never stores the secret or a ticket in clear', async () => {
    const { ticket } = await ctx.vault.issueTicket(
      { secret: 'github', principal: builder.ref },
      'admin:test',
    );
    await ctx.vault.exchange(ticket, { principal: builder, target: toGithub });
    await ctx.audit.flush();
    for (const file of ['coatcheck.db', 'coatcheck.db-wal']) {
      let bytes: Buffer;
      try {
        bytes = readFileSync(join(t.home.dir, file));
      } catch {
        continue;
      }
      expect(bytes.includes(Buffer.from(CANARY))).toBe(false);
      expect(bytes.includes(Buffer.from(ticket))).toBe(false);
      expect(bytes.includes(Buffer.from(ticket.slice(4, 26)))).toBe(false);
    }
  });

  it('agent keys: authenticate, expire, revoke — each with its own code', async () => {
    const created = await ctx.agents.create({ name: 'short', ttlMs: 1000 }, 'admin:test');
    await expect(ctx.agents.authenticate(created.key)).resolves.toMatchObject({
      kind: 'agent',
      name: 'short',
    });
    clock.advance(1001);
    await expect(ctx.agents.authenticate(created.key)).rejects.toMatchObject({
      code: 'CC_ERR_AGENT_EXPIRED',
    });
    const again = await ctx.agents.create({ name: 'long' }, 'admin:test');
    await ctx.agents.revoke('long', 'admin:test');
    await expect(ctx.agents.authenticate(again.key)).rejects.toMatchObject({ code: 'CC_ERR_AGENT_REVOKED' });
    await expect(ctx.agents.authenticate('cca_x')).rejects.toMatchObject({
      code: 'CC_ERR_AGENT_KEY_MALFORMED',
    });
    const { mintAgentKey } = await import('../../src/core/ticket-format.js');
    await expect(ctx.agents.authenticate(mintAgentKey())).rejects.toMatchObject({
      code: 'CC_ERR_AGENT_UNKNOWN',
    });
    await expect(ctx.agents.create({ name: 'builder' }, 'admin:test')).rejects.toMatchObject({
      code: 'CC_ERR_ALREADY_EXISTS',
    });
  });
});

describe('vault: a tampered store', () => {
  it('refuses a value or data key that was altered or swapped between secrets, naming the secret', async () => {
    const t = await makeTestHome();
    try {
      let ctx = await t.open();
      const a = await ctx.vault.addSecret(
        { name: 'a', value: Buffer.from(CANARY), allow: ['svc'] },
        'admin:test',
      );
      await ctx.vault.addSecret({ name: 'b', value: Buffer.from('other'), allow: ['svc'] }, 'admin:test');
      const agent = await ctx.agents.create({ name: 'x' }, 'admin:test');
      const principal = await ctx.agents.authenticate(agent.key);
      const { ticket } = await ctx.vault.issueTicket({ secret: 'a', principal: principal.ref }, 'admin:test');
      await ctx.close();

      const db = new Database(join(t.home.dir, 'coatcheck.db'));
      // Swap the sealed data keys of a and b: each authenticates only for its own id.
      const rows = db.prepare('SELECT id, wrapped_key FROM secrets ORDER BY name').all() as {
        id: string;
        wrapped_key: Buffer;
      }[];
      const update = db.prepare('UPDATE secrets SET wrapped_key = ? WHERE id = ?');
      update.run(rows[1]!.wrapped_key, rows[0]!.id);
      update.run(rows[0]!.wrapped_key, rows[1]!.id);
      db.close();
      ctx = await t.open();
      const swapped = await ctx.vault
        .exchange(ticket, { principal, target: { connection: 'svc' } })
        .catch((e: unknown) => e);
      expect(swapped).toMatchObject({
        code: 'CC_ERR_STORE_CORRUPT',
        message: `the data key of secret ${a.id} does not authenticate`,
      });
      await ctx.close();

      const db2 = new Database(join(t.home.dir, 'coatcheck.db'));
      const swapBack = db2.prepare('UPDATE secrets SET wrapped_key = ? WHERE id = ?');
      swapBack.run(rows[0]!.wrapped_key, rows[0]!.id);
      swapBack.run(rows[1]!.wrapped_key, rows[1]!.id);
      const cipher = (
        db2.prepare('SELECT ciphertext FROM secrets WHERE id = ?').get(a.id) as { ciphertext: Buffer }
      ).ciphertext;
      cipher.writeUInt8(cipher.readUInt8(cipher.length - 1) ^ 1, cipher.length - 1);
      db2.prepare('UPDATE secrets SET ciphertext = ? WHERE id = ?').run(cipher, a.id);
      db2.close();
      ctx = await t.open();
      await expect(
        ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } }),
      ).rejects.toMatchObject({
        code: 'CC_ERR_STORE_CORRUPT',
        message: `the value of secret ${a.id} does not authenticate`,
      });
      await ctx.close();

      const db3 = new Database(join(t.home.dir, 'coatcheck.db'));
      db3.prepare("UPDATE meta SET value = 'AAAA' || substr(value, 5) WHERE key = 'index_key'").run();
      db3.close();
      await expect(t.open()).rejects.toMatchObject({ code: 'CC_ERR_STORE_CORRUPT' });
    } finally {
      t.remove();
    }
  });
});
