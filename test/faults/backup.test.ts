import { copyFileSync, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backupStore, restoreStore } from '../../src/admin/backup.js';
import type { Context } from '../../src/server/context.js';
import { untypedEvent } from '../helpers/audit.js';
import { cli } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-backup-Lr5Tz9Qm3';

// A backup taken while serving must hold every committed record, and a copy that lost
// its last records must fail `audit verify` against the anchor kept outside the store.
describe('backup and restore', () => {
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

  it('a backup taken under concurrent writes holds every record up to its anchor; restore proves it', async () => {
    // Writes in flight while the backup runs (the WAL holds the newest of them).
    const writes = Array.from({ length: 200 }, (_, i) =>
      ctx.audit.append(untypedEvent({ type: 'test.load', actor: 'admin:test', data: { i } })),
    );
    const backup = join(t.dir, 'b1.db');
    const result = await backupStore(ctx, backup);
    await Promise.all(writes);
    expect(result.seq).toBeGreaterThan(1);
    expect(JSON.parse(readFileSync(`${backup}.anchor.json`, 'utf8'))).toMatchObject({
      seq: result.seq,
      hash: result.hash,
      masterKey: ctx.keys.masters.kids[0],
      keyIds: ctx.keys.masters.kids,
    });
    expect(readFileSync(backup).includes(Buffer.from(CANARY))).toBe(false);
    await ctx.close();
    renameSync(db(), join(t.dir, 'live.db'));
    const restored = await restoreStore(t.home, backup, {});
    expect(restored).toMatchObject({ anchored: true, verify: { ok: true } });
    ctx = await t.open();
    const agent = await ctx.agents.create({ name: 'a' }, 'admin:test');
    const principal = await ctx.agents.authenticate(agent.key);
    const { ticket } = await ctx.vault.issueTicket({ secret: 's', principal: principal.ref }, 'admin:test');
    expect(
      (await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } })).value.revealText(),
    ).toBe(CANARY);
  });

  it('a copy that lost its last records passes a plain verify but fails against the anchor', async () => {
    const backup = join(t.dir, 'b2.db');
    const anchorFile = `${backup}.anchor.json`;
    await backupStore(ctx, join(t.dir, 'older.db'));
    for (let i = 0; i < 5; i++)
      await ctx.audit.append(untypedEvent({ type: 'test', actor: 'admin:test', data: { i } }));
    await backupStore(ctx, backup);
    // The older copy with the newer anchor: what a file copy of a live WAL database gives.
    copyFileSync(`${backup}.anchor.json`, join(t.dir, 'newer.anchor.json'));
    await ctx.close();
    renameSync(db(), join(t.dir, 'live.db'));
    copyFileSync(join(t.dir, 'older.db'), db());
    const env = { COATCHECK_HOME: t.home.dir };
    expect((await cli(['audit', 'verify'], { env })).code).toBe(0);
    const anchored = await cli(['audit', 'verify', '--anchor', join(t.dir, 'newer.anchor.json')], { env });
    expect(anchored.code).toBe(1);
    expect(anchored.stdout).toContain('truncated');
    // A forged anchor hash for a record that exists: the chain is not the anchored one.
    const forged = JSON.parse(readFileSync(anchorFile, 'utf8')) as { seq: number; hash: string };
    writeFileSync(join(t.dir, 'forged.json'), JSON.stringify({ seq: 1, hash: 'ab'.repeat(32) }));
    const wrong = await cli(['audit', 'verify', '--anchor', join(t.dir, 'forged.json')], { env });
    expect(wrong.code).toBe(1);
    expect(wrong.stdout).toContain('chain-broken');
    expect(forged.seq).toBeGreaterThan(1);
    ctx = await t.open();
  });

  it('never overwrites: backup to an existing path, and restore over an existing store, are refused', async () => {
    const backup = join(t.dir, 'b3.db');
    await backupStore(ctx, backup);
    await expect(backupStore(ctx, backup)).rejects.toMatchObject({ code: 'CC_ERR_BACKUP_INVALID' });
    await expect(backupStore(ctx, 'relative.db')).rejects.toMatchObject({ code: 'CC_ERR_BACKUP_INVALID' });
    await expect(restoreStore(t.home, backup, {})).rejects.toMatchObject({ code: 'CC_ERR_BACKUP_INVALID' });
    expect(existsSync(db())).toBe(true);
  });

  it('a restore whose anchor does not match is undone: no store is left behind', async () => {
    const backup = join(t.dir, 'b4.db');
    await backupStore(ctx, backup);
    writeFileSync(`${backup}.anchor.json`, JSON.stringify({ seq: 10_000, hash: 'ff' }));
    await ctx.close();
    renameSync(db(), join(t.dir, 'live.db'));
    await expect(restoreStore(t.home, backup, {})).rejects.toMatchObject({ code: 'CC_ERR_BACKUP_INVALID' });
    expect(existsSync(db())).toBe(false);
    renameSync(join(t.dir, 'live.db'), db());
    ctx = await t.open();
  });

  it('the CLI backs up through the same operation and prints the key id it needs', async () => {
    await ctx.close();
    const env = { COATCHECK_HOME: t.home.dir };
    const out = await cli(['backup', join(t.dir, 'b5.db')], { env });
    expect(out.code).toBe(0);
    expect(out.stdout).toContain('master key');
    expect(existsSync(join(t.dir, 'b5.db.anchor.json'))).toBe(true);
    ctx = await t.open();
  });
});
