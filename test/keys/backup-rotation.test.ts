import { renameSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backupStore, restoreStore } from '../../src/admin/backup.js';
import { rotateMasterKey } from '../../src/admin/rotate.js';
import type { Context } from '../../src/server/context.js';
import { readKeyringState } from '../../src/vault/keyring.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-backup-rotation-Wd4Pk8';

// A backup taken before (or during) a rotation needs the keys that were in force then:
// rotation keeps retired keys, and restore names any key id it lacks before touching anything.
describe('backups across key rotations', () => {
  let t: TestHome;
  let ctx: Context;
  beforeEach(async () => {
    t = await makeTestHome();
    ctx = await t.open();
    await ctx.vault.addSecret({ name: 's', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
  });
  afterEach(async () => {
    await ctx.close().catch(() => undefined);
    t.remove();
  });
  const db = () => join(t.home.dir, 'coatcheck.db');

  async function restoreAndOpen(backup: string) {
    await ctx.close();
    renameSync(db(), join(t.dir, `live-${Date.now()}.db`));
    const restored = await restoreStore(t.home, backup, {});
    expect(restored).toMatchObject({ anchored: true, verify: { ok: true } });
    ctx = await t.open();
    const agent = await ctx.agents.create({ name: `a${Date.now()}` }, 'admin:test');
    const principal = await ctx.agents.authenticate(agent.key);
    const { ticket } = await ctx.vault.issueTicket({ secret: 's', principal: principal.ref }, 'admin:test');
    return (
      await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } })
    ).value.revealText();
  }

  it('a backup from before two rotations restores and opens (the retired keys were kept)', async () => {
    const oldKid = (await readKeyringState(ctx.store)).active;
    const backup = join(t.dir, 'before.db');
    const anchor = await backupStore(ctx, backup);
    expect(anchor).toMatchObject({ masterKey: oldKid, keyIds: [oldKid] });
    await rotateMasterKey(ctx, 'admin:test');
    await rotateMasterKey(ctx, 'admin:test');
    expect((await readKeyringState(ctx.store)).retired).toHaveLength(2);
    expect(await restoreAndOpen(backup)).toBe(CANARY);
  });

  it('a backup taken mid-rotation lists both key ids and restores; the rotation then completes', async () => {
    const stopped = await rotateMasterKey(ctx, 'admin:test', { until: 'activated' });
    // A secret sealed under the new key beside one still under the old.
    await ctx.vault.addSecret({ name: 'new', value: Buffer.from('value-new'), allow: ['svc'] }, 'admin:test');
    const backup = join(t.dir, 'mid.db');
    const anchor = await backupStore(ctx, backup);
    expect([...anchor.keyIds].sort()).toEqual([stopped.previousKey, stopped.newKey].sort());
    expect(await restoreAndOpen(backup)).toBe(CANARY);
    expect(await rotateMasterKey(ctx, 'admin:test')).toMatchObject({ phase: 'retired', resumed: true });
  });

  it('restore refuses with CC_ERR_MASTER_KEY_UNAVAILABLE naming a key id the home lacks, and leaves no store behind', async () => {
    const backup = join(t.dir, 'after.db');
    const rotated = await rotateMasterKey(ctx, 'admin:test');
    await backupStore(ctx, backup);
    await ctx.close();
    renameSync(db(), join(t.dir, 'live.db'));
    // The keys directory is lost (only master.key, the retired key, is left).
    renameSync(join(t.home.dir, 'keys'), join(t.dir, 'keys-lost'));
    await expect(restoreStore(t.home, backup, {})).rejects.toMatchObject({
      code: 'CC_ERR_MASTER_KEY_UNAVAILABLE',
      details: { keyId: rotated.newKey },
      message: expect.stringContaining(rotated.newKey),
    });
    expect(await import('node:fs').then((fs) => fs.existsSync(db()))).toBe(false);
    renameSync(join(t.dir, 'keys-lost'), join(t.home.dir, 'keys'));
    renameSync(join(t.dir, 'live.db'), db());
    ctx = await t.open();
  });
});
