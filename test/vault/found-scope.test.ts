import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

/** The vault's rules for tickets reissued for found secrets (item 2), and the registration cap (item 7). */
describe('found-secret tickets: scope and registration cap', () => {
  let t: TestHome;
  let ctx: Context;
  const me = 'agent:me';
  const them = 'agent:them';
  const target = { connection: 'api', host: 'api.example.com', port: 443 };

  beforeEach(async () => {
    t = await makeTestHome();
    writeFileSync(t.home.configFile, 'foundSecrets:\n  maxPerPrincipal: 2\n  window: 1h\n');
    ctx = await t.open();
    await ctx.vault.addSecret(
      { name: 'a', value: Buffer.from('secret-a-0123456789'), allow: ['api', 'host:api.example.com'] },
      'admin:test',
    );
    await ctx.vault.addSecret(
      { name: 'b', value: Buffer.from('secret-b-0123456789'), allow: ['api'] },
      'admin:test',
    );
  });
  afterEach(async () => {
    await ctx.close();
    t.remove();
  });

  const secretId = async (name: string) => (await ctx.vault.listSecrets()).find((s) => s.name === name)!.id;
  const issue = (
    secret: string,
    principal: string,
    opts: { destinations?: string[]; ttlMs?: number; maxUses?: number } = {},
  ) => ctx.vault.issueTicket({ secret, principal, ...opts }, 'admin:test');

  it('prefers a parent for the same secret, then the earliest expiry; a parent of another secret still bounds the child', async () => {
    const longSame = await issue('a', me, { ttlMs: 3_600_000 });
    const shortOther = await issue('b', me, { ttlMs: 60_000, maxUses: 4 });
    const shortSame = await issue('a', me, { ttlMs: 120_000 });
    const forA = await ctx.vault.reissueForResponse(
      await secretId('a'),
      {
        principal: me,
        destinations: ['conn:api'],
        target,
        parents: [longSame.view.id, shortOther.view.id, shortSame.view.id],
      },
      'gateway:test',
    );
    expect(forA.view.parentId).toBe(shortSame.view.id);
    expect(forA.view.expiresAt).toBe(shortSame.view.expiresAt);
    // Only another secret's ticket was exchanged: it is the parent, and bounds lifetime and uses.
    const forA2 = await ctx.vault.reissueForResponse(
      await secretId('a'),
      { principal: me, destinations: ['conn:api'], target, parents: [shortOther.view.id] },
      'gateway:test',
    );
    expect(forA2.view).toMatchObject({
      parentId: shortOther.view.id,
      maxUses: 4,
      expiresAt: shortOther.view.expiresAt,
    });
    await ctx.vault.revokeTicket(shortOther.view.id, 'admin:test');
    expect((await ctx.vault.inspectTicket(forA2.view.id)).status).toBe('revoked');
  });

  it("a parent bound by host pattern admits the response's connection on that host, nothing else", async () => {
    const byHost = await issue('a', me, { destinations: ['host:api.example.com'] });
    const here = await ctx.vault.reissueForResponse(
      await secretId('a'),
      { principal: me, destinations: ['conn:api'], target, parents: [byHost.view.id] },
      'gateway:test',
    );
    expect(here.view.destinations).toEqual(['conn:api']);
    const elsewhere = await ctx.vault.reissueForResponse(
      await secretId('a'),
      {
        principal: me,
        destinations: ['conn:api'],
        target: { connection: 'api', host: 'mirror.example.net', port: 443 },
        parents: [byHost.view.id],
      },
      'gateway:test',
    );
    expect(elsewhere.view.destinations).toEqual([]);
  });

  it('ignores a candidate parent bound to someone else; no parent means the caller, the place, and the found lifetime', async () => {
    const theirs = await issue('a', them);
    const before = Date.now();
    const issued = await ctx.vault.reissueForResponse(
      await secretId('a'),
      { principal: me, destinations: ['conn:api'], target, parents: [theirs.view.id] },
      'gateway:test',
    );
    expect(issued.view).toMatchObject({
      parentId: null,
      principal: me,
      destinations: ['conn:api'],
      maxUses: null,
    });
    expect(Date.parse(issued.view.expiresAt!)).toBeLessThanOrEqual(before + 15 * 60_000 + 2_000);
  });

  it('the first refusal past the cap is audited (found.limit); a record that could not be written is written by the next refusal', async () => {
    const scope = { principal: me, destinations: ['conn:api'], target, kind: 'found', source: 'test' };
    const limits = async () =>
      (await ctx.store.readAudit(0, 10_000)).filter((r) => r.type === 'found.limit').length;
    await ctx.vault.tokenizeFound(Buffer.from('limit-value-one-abcdef'), scope, 'gateway:test');
    await ctx.vault.tokenizeFound(Buffer.from('limit-value-two-abcdef'), scope, 'gateway:test');
    const { default: Database } = await import('better-sqlite3');
    const db = new Database(join(t.home.dir, 'coatcheck.db'));
    db.exec(
      `CREATE TRIGGER limit_down BEFORE INSERT ON audit WHEN NEW.type = 'found.limit' BEGIN SELECT RAISE(ABORT, 'disk full'); END`,
    );
    try {
      await expect(
        ctx.vault.tokenizeFound(Buffer.from('limit-value-three-abcd'), scope, 'gateway:test'),
      ).rejects.toMatchObject({ code: 'CC_ERR_FOUND_SECRETS_LIMIT' });
      expect(await limits()).toBe(0);
    } finally {
      db.exec('DROP TRIGGER limit_down');
      db.close();
    }
    await expect(
      ctx.vault.tokenizeFound(Buffer.from('limit-value-four-abcde'), scope, 'gateway:test'),
    ).rejects.toMatchObject({ code: 'CC_ERR_FOUND_SECRETS_LIMIT' });
    expect(await limits()).toBe(1);
    // Written once: later refusals in the window are only counted.
    await expect(
      ctx.vault.tokenizeFound(Buffer.from('limit-value-five-abcde'), scope, 'gateway:test'),
    ).rejects.toMatchObject({ code: 'CC_ERR_FOUND_SECRETS_LIMIT' });
    expect(await limits()).toBe(1);
  });

  it('caps new registrations per principal; re-found values and operator requests are not counted', async () => {
    const scope = { principal: me, destinations: ['conn:api'], target, kind: 'found', source: 'test' };
    await ctx.vault.tokenizeFound(Buffer.from('new-value-one-abcdefgh'), scope, 'gateway:test');
    await ctx.vault.tokenizeFound(Buffer.from('new-value-two-abcdefgh'), scope, 'gateway:test');
    await expect(
      ctx.vault.tokenizeFound(Buffer.from('new-value-three-abcdef'), scope, 'gateway:test'),
    ).rejects.toMatchObject({ code: 'CC_ERR_FOUND_SECRETS_LIMIT', status: 429 });
    // Already registered: reused, not counted.
    await expect(
      ctx.vault.tokenizeFound(Buffer.from('new-value-one-abcdefgh'), scope, 'gateway:test'),
    ).resolves.toBeDefined();
    // Another principal has its own count; an operator request is not counted.
    await expect(
      ctx.vault.tokenizeFound(
        Buffer.from('new-value-four-abcdefg'),
        { ...scope, principal: them },
        'gateway:test',
      ),
    ).resolves.toBeDefined();
    const operator = await ctx.vault.tokenizeFound(
      Buffer.from('new-value-five-abcdefg'),
      { ...scope, target: undefined, operator: true },
      'admin:test',
    );
    expect(Date.parse(operator.view.expiresAt!)).toBeGreaterThan(Date.now() + 30 * 60_000);
    const names = (await ctx.vault.listSecrets()).map((s) => s.name).filter((n) => n.startsWith('found-'));
    expect(names).toHaveLength(4);
  });
});
