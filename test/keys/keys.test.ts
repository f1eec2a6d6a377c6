import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { rotateMasterKey } from '../../src/admin/rotate.js';
import { MasterKey } from '../../src/vault/envelope.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-keys-Hq2Vb8Rr4';

describe('master key', () => {
  let t: TestHome;
  beforeEach(async () => {
    t = await makeTestHome();
  });
  afterEach(() => t.remove());

  it('is a 0600 file; a wrong key, a missing key and a loose file mode each get their own code', async () => {
    const keyFile = join(t.home.dir, 'master.key');
    expect(readFileSync(keyFile, 'utf8').trim()).toMatch(/^[A-Za-z0-9+/]{43}=$/);
    const { statSync } = await import('node:fs');
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);

    await expect(
      t.open({ env: { COATCHECK_MASTER_KEY: MasterKey.generate().toBase64() } }),
    ).rejects.toMatchObject({
      code: 'CC_ERR_MASTER_KEY_WRONG',
    });
    await expect(t.open({ env: { COATCHECK_MASTER_KEY: 'not-a-key' } })).rejects.toMatchObject({
      code: 'CC_ERR_MASTER_KEY_INVALID',
    });
    chmodSync(keyFile, 0o644);
    await expect(t.open()).rejects.toMatchObject({ code: 'CC_ERR_MASTER_KEY_INVALID' });
    chmodSync(keyFile, 0o600);
    const saved = readFileSync(keyFile);
    const { unlinkSync } = await import('node:fs');
    unlinkSync(keyFile);
    await expect(t.open()).rejects.toMatchObject({ code: 'CC_ERR_MASTER_KEY_MISSING' });
    writeFileSync(keyFile, saved, { mode: 0o600 });
    const ctx = await t.open();
    await ctx.close();
  });

  it('rotation rewraps every data key; tickets and the audit chain keep working; the old key no longer opens the store', async () => {
    const keyFile = join(t.home.dir, 'master.key');
    const oldKey = readFileSync(keyFile, 'utf8').trim();
    let ctx = await t.open();
    await ctx.vault.addSecret({ name: 's1', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
    await ctx.vault.addSecret({ name: 's2', value: Buffer.from('two'), allow: ['svc'] }, 'admin:test');
    const agent = await ctx.agents.create({ name: 'a' }, 'admin:test');
    const { ticket } = await ctx.vault.issueTicket(
      { secret: 's1', principal: (await ctx.agents.authenticate(agent.key)).ref },
      'admin:test',
    );
    const result = await rotateMasterKey(ctx, 'admin:test');
    expect(result.dataKeysRewrapped).toBe(2);
    expect(result).not.toHaveProperty('newMasterKey');
    // Same process keeps working with the new key.
    const principal = await ctx.agents.authenticate(agent.key);
    expect(
      (await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } })).value.revealText(),
    ).toBe(CANARY);
    await ctx.close();

    expect(readFileSync(keyFile, 'utf8').trim()).not.toBe(oldKey);
    expect(existsSync(join(t.home.dir, 'master.key.next'))).toBe(false);
    ctx = await t.open();
    expect(
      (await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } })).value.revealText(),
    ).toBe(CANARY);
    expect(await ctx.audit.verify()).toMatchObject({ ok: true });
    await ctx.close();
    await expect(t.open({ env: { COATCHECK_MASTER_KEY: oldKey } })).rejects.toMatchObject({
      code: 'CC_ERR_MASTER_KEY_WRONG',
    });
  });

  it('recovers a rotation interrupted after the store was rewrapped (key still in master.key.next)', async () => {
    const keyFile = join(t.home.dir, 'master.key');
    const nextFile = join(t.home.dir, 'master.key.next');
    const oldKeyText = readFileSync(keyFile);
    let ctx = await t.open();
    await ctx.vault.addSecret({ name: 's1', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
    await rotateMasterKey(ctx, 'admin:test');
    await ctx.close();
    // Simulate the crash window: new key only in .next, old key back in master.key.
    writeFileSync(nextFile, readFileSync(keyFile), { mode: 0o600 });
    writeFileSync(keyFile, oldKeyText, { mode: 0o600 });
    ctx = await t.open();
    expect(existsSync(nextFile)).toBe(false);
    await ctx.close();
    ctx = await t.open();
    await ctx.close();
  });

  it('with COATCHECK_MASTER_KEY, rotation returns the new key for the operator to set', async () => {
    const envKey = MasterKey.generate().toBase64();
    const { makeTestHome: make } = await import('../helpers/home.js');
    const home = await make({ COATCHECK_MASTER_KEY: envKey });
    try {
      expect(existsSync(join(home.home.dir, 'master.key'))).toBe(false);
      const ctx = await home.open();
      const result = await rotateMasterKey(ctx, 'admin:test');
      await ctx.close();
      expect(result.newMasterKey).toMatch(/^[A-Za-z0-9+/]{43}=$/);
      await expect(home.open()).rejects.toMatchObject({ code: 'CC_ERR_MASTER_KEY_WRONG' });
      const reopened = await home.open({ env: { COATCHECK_MASTER_KEY: result.newMasterKey } });
      await reopened.close();
    } finally {
      home.remove();
    }
  });
});
