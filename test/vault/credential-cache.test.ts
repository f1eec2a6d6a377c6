import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CoatcheckError } from '../../src/core/errors.js';
import type { Principal } from '../../src/core/principal.js';
import type { Context } from '../../src/server/context.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-credential-cache-3Fq8Lm2Zx';
const CANARY2 = 'canary-credential-cache-new-9Wd4Tk7';
const target = { connection: 'api', scheme: 'https' as const, host: 'api.example.com', port: 443 };

/**
 * A connection's credential is released on every request through it, so the secret's row
 * and value are cached (5 s, dropped by any change to a secret). Nothing a change takes
 * away may be released from the cache: an erased secret, a narrowed allow list, a secret
 * replaced under the same name, a change by another process, a change during the read,
 * and an erasure no notice reported (refused where the release is audited).
 */
describe("connections' credentials released from a cache", () => {
  let t: TestHome;
  let ctx: Context;
  let principal: Principal;
  let reads: number;

  beforeEach(async () => {
    t = await makeTestHome();
    ctx = await t.open();
    await ctx.vault.addSecret({ name: 'db', value: Buffer.from(CANARY), allow: ['conn:api'] }, 'admin:test');
    await ctx.connections.add(
      { name: 'api', type: 'http', url: 'https://api.example.com', credential: 'db' },
      'admin:test',
    );
    principal = await ctx.agents.authenticate((await ctx.agents.create({ name: 'a' }, 'admin:test')).key);
    reads = 0;
    const read = ctx.store.getSecretByName.bind(ctx.store);
    ctx.store.getSecretByName = (name) => {
      reads++;
      return read(name);
    };
  });
  afterEach(async () => {
    await ctx.close();
    t.remove();
  });

  const release = (c: Context = ctx) => c.vault.releaseCredential('db', { principal, target });
  async function outcome(promise: Promise<{ value: { revealText(): string } }>) {
    try {
      return { released: (await promise).value.revealText() };
    } catch (error) {
      if (!(error instanceof CoatcheckError)) throw error;
      expect(JSON.stringify(error)).not.toContain(CANARY);
      return { code: error.code, atCommit: error.details?.checkedAt === 'commit' };
    }
  }

  it('the control: released again without reading the store, and every release audited', async () => {
    for (let i = 0; i < 5; i++) expect(await outcome(release())).toEqual({ released: CANARY });
    expect(reads).toBe(1);
    const injected = (await ctx.audit.tail(20)).filter((r) => r.type === 'credential.inject');
    expect(injected.length).toBe(5);
    expect(JSON.stringify(injected)).not.toContain(CANARY);
  });

  it('erased: refused at the very next request', async () => {
    await release();
    await ctx.vault.removeSecret('db', 'admin:test', { force: true });
    expect(await outcome(release())).toMatchObject({ code: 'CC_ERR_NOT_FOUND' });
  });

  it('its allow list narrowed: refused at the very next request', async () => {
    await release();
    await ctx.vault.updateSecret('db', { allow: ['conn:other'] }, 'admin:test');
    expect(await outcome(release())).toMatchObject({ code: 'CC_ERR_CREDENTIAL_DESTINATION' });
  });

  it('erased and added again under the same name: the new value, never the old', async () => {
    await release();
    await ctx.vault.removeSecret('db', 'admin:test', { force: true });
    await ctx.vault.addSecret({ name: 'db', value: Buffer.from(CANARY2), allow: ['conn:api'] }, 'admin:test');
    expect(await outcome(release())).toEqual({ released: CANARY2 });
  });

  it('erased or narrowed by another process (the CLI on the same store): refused at the next request', async () => {
    const other = await t.open();
    try {
      await release();
      await other.vault.updateSecret('db', { allow: ['conn:other'] }, 'admin:cli');
      expect(await outcome(release())).toMatchObject({ code: 'CC_ERR_CREDENTIAL_DESTINATION' });
      await other.vault.updateSecret('db', { allow: ['conn:api'] }, 'admin:cli');
      expect(await outcome(release())).toEqual({ released: CANARY });
      await other.vault.removeSecret('db', 'admin:cli', { force: true });
      expect(await outcome(release())).toMatchObject({ code: 'CC_ERR_NOT_FOUND' });
    } finally {
      await other.close();
    }
  });

  it('narrowed while the row is being read: that read is not kept, the next request is refused', async () => {
    const read = ctx.store.getSecretByName;
    let raced = false;
    ctx.store.getSecretByName = async (name) => {
      const row = await read(name);
      if (!raced) {
        raced = true;
        await ctx.vault.updateSecret('db', { allow: ['conn:other'] }, 'admin:test');
      }
      return row;
    };
    await release(); // read before the change: released (the change came after its read)
    expect(await outcome(release())).toMatchObject({ code: 'CC_ERR_CREDENTIAL_DESTINATION' });
  });

  it('erased with no notice (a missed change): the cached value is refused where the release is audited', async () => {
    await release();
    const record = (await ctx.store.getSecretByName('db'))!;
    // On the server's own connection, with no change notice: the cache still holds the value.
    await ctx.store.eraseSecret(record.id, Date.now());
    const before = reads;
    expect(await outcome(release())).toEqual({ code: 'CC_ERR_TICKET_SECRET_ERASED', atCommit: true });
    expect(reads).toBe(before); // it was the cache that answered, and the audit's check that refused
    const injected = (await ctx.audit.tail(20)).filter((r) => r.type === 'credential.inject');
    expect(injected.length).toBe(1);
  });
});
