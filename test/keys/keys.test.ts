import { chmodSync, existsSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { rotateMasterKey } from '../../src/admin/rotate.js';
import { MasterKey } from '../../src/vault/envelope.js';
import { readKeyringState } from '../../src/vault/keyring.js';
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

  it('rotation rewraps every data key; tickets and the audit chain keep working; no key file is replaced', async () => {
    const keyFile = join(t.home.dir, 'master.key');
    const oldKey = readFileSync(keyFile, 'utf8');
    let ctx = await t.open();
    await ctx.vault.addSecret({ name: 's1', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
    await ctx.vault.addSecret({ name: 's2', value: Buffer.from('two'), allow: ['svc'] }, 'admin:test');
    const agent = await ctx.agents.create({ name: 'a' }, 'admin:test');
    const { ticket } = await ctx.vault.issueTicket(
      { secret: 's1', principal: (await ctx.agents.authenticate(agent.key)).ref },
      'admin:test',
    );
    const oldKid = (await readKeyringState(ctx.store)).active;
    const result = await rotateMasterKey(ctx, 'admin:test');
    expect(result).toMatchObject({ dataKeysRewrapped: 2, phase: 'retired', previousKey: oldKid });
    expect(await readKeyringState(ctx.store)).toEqual({
      active: result.newKey,
      next: null,
      previous: null,
      retired: [oldKid],
    });
    expect((await ctx.store.listSecrets()).map((s) => s.keyId)).toEqual([result.newKey, result.newKey]);
    // Same process keeps working with the new key.
    const principal = await ctx.agents.authenticate(agent.key);
    expect(
      (await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } })).value.revealText(),
    ).toBe(CANARY);
    await ctx.close();

    // The old key file is kept as it was (backups need it); the new key is its own file.
    expect(readFileSync(keyFile, 'utf8')).toBe(oldKey);
    expect(result.keyFile).toBe(join(t.home.dir, 'keys', `${result.newKey}.key`));
    expect(statSync(result.keyFile).mode & 0o777).toBe(0o600);
    ctx = await t.open();
    expect(
      (await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } })).value.revealText(),
    ).toBe(CANARY);
    expect(await ctx.audit.verify()).toMatchObject({ ok: true });
    await ctx.close();
    // The old key alone no longer opens the store; the error names the key it needs.
    renameSync(join(t.home.dir, 'keys'), join(t.dir, 'keys-away'));
    await expect(t.open()).rejects.toMatchObject({
      code: 'CC_ERR_MASTER_KEY_WRONG',
      message: expect.stringContaining(result.newKey),
    });
  });

  it('a key left in master.key.next by an older version is part of the keyring and is never renamed or deleted', async () => {
    const nextFile = join(t.home.dir, 'master.key.next');
    let ctx = await t.open();
    await ctx.vault.addSecret({ name: 's1', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
    const { keyFile } = await rotateMasterKey(ctx, 'admin:test');
    await ctx.close();
    // The shape an interrupted rotation of the old design left: the key in force only in .next.
    renameSync(keyFile, nextFile);
    ctx = await t.open();
    expect((await ctx.vault.knownSecrets()).map((s) => s.value.revealText())).toEqual([CANARY]);
    await ctx.close();
    expect(existsSync(nextFile)).toBe(true);
  });

  it('with COATCHECK_MASTER_KEY, rotation adds the new key to the keys directory and the same environment still opens', async () => {
    const envKey = MasterKey.generate().toBase64();
    const { makeTestHome: make } = await import('../helpers/home.js');
    const home = await make({ COATCHECK_MASTER_KEY: envKey });
    try {
      expect(existsSync(join(home.home.dir, 'master.key'))).toBe(false);
      const ctx = await home.open();
      await ctx.vault.addSecret({ name: 's1', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
      const result = await rotateMasterKey(ctx, 'admin:test');
      await ctx.close();
      expect(JSON.stringify(result)).not.toContain(envKey);
      expect(existsSync(result.keyFile)).toBe(true);
      const reopened = await home.open();
      expect((await reopened.vault.knownSecrets()).map((s) => s.value.revealText())).toEqual([CANARY]);
      await reopened.close();
    } finally {
      home.remove();
    }
  });
});
