import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/audit-log.js';
import { systemClock } from '../../src/core/clock.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import { WalSync } from '../../src/store/wal-sync.js';
import { untypedEvent } from '../helpers/audit.js';

// Commits are durable before they are reported, with the WAL flushed off the event loop
// (ADR 0032). A power cut cannot be staged here; what can: the flush is coalesced and
// ordered, and a flush that fails refuses the write that waited for it, and every later one.

const dir = mkdtempSync(join(tmpdir(), 'coatcheck-walsync-'));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function walFile(): { db: string; wal: string } {
  const db = join(dir, `db-${n++}.db`);
  writeFileSync(`${db}-wal`, randomBytes(4096));
  return { db, wal: `${db}-wal` };
}

describe('WalSync', () => {
  it('coalesces: syncs asked for while one flush runs share the next one', async () => {
    const sync = new WalSync(walFile().db);
    await Promise.all(Array.from({ length: 50 }, () => sync.sync()));
    expect(sync.requests).toBe(50);
    // The first starts a flush; the 49 asked while it ran wait for exactly one more.
    expect(sync.flushes).toBe(2);
  });

  it('never answers a sync with a flush that started before it was asked', async () => {
    const sync = new WalSync(walFile().db);
    const first = sync.sync();
    const flushesWhenAsked = sync.flushes;
    let secondFlushes = -1;
    const second = sync.sync().then(() => {
      secondFlushes = sync.flushes;
    });
    await Promise.all([first, second]);
    expect(secondFlushes).toBeGreaterThan(flushesWhenAsked);
  });

  it('fails closed and stays failed: a flush that fails refuses its waiters and every later sync', async () => {
    const { db, wal } = walFile();
    const sync = new WalSync(db);
    await sync.sync();
    rmSync(wal);
    await sync.checkName(); // the timer's check, now
    await expect(sync.sync()).rejects.toMatchObject({ code: 'CC_ERR_STORE_UNAVAILABLE' });
    writeFileSync(wal, randomBytes(16)); // the file is back: still refused, until restart
    await expect(sync.sync()).rejects.toMatchObject({ code: 'CC_ERR_STORE_UNAVAILABLE' });
    const waiting = [sync.sync(), sync.sync()];
    for (const w of waiting) await expect(w).rejects.toMatchObject({ code: 'CC_ERR_STORE_UNAVAILABLE' });
  });
  it('refuses a flush when the WAL was replaced by another file under its name', async () => {
    const { db, wal } = walFile();
    const sync = new WalSync(db);
    await sync.sync();
    rmSync(wal);
    writeFileSync(wal, randomBytes(4096)); // a new file: the kept descriptor flushes the old one
    await sync.checkName();
    await expect(sync.sync()).rejects.toMatchObject({
      code: 'CC_ERR_STORE_UNAVAILABLE',
      cause: { code: 'EWALREPLACED' },
    });
    sync.close();
  });
});

describe('the SQLite store reports a write only once its WAL is flushed', () => {
  async function storeWithLostWal() {
    const path = join(dir, `store-${n++}.db`);
    const store = await openSqliteStore({ path });
    await store.migrate();
    await store.setMeta('before', 'ok');
    // The WAL's name is removed from the directory: SQLite keeps writing to its open file,
    // but the flush can no longer vouch for it, as with a failing disk. The store finds out
    // within its 250 ms check.
    rmSync(`${path}-wal`);
    await new Promise((resolve) => setTimeout(resolve, 400));
    return store;
  }

  it('a transaction whose flush failed is refused (CC_ERR_STORE_UNAVAILABLE), and so is every later one', async () => {
    const store = await storeWithLostWal();
    await expect(store.transaction(async (tx) => tx.setMeta('k', 'v'))).rejects.toMatchObject({
      code: 'CC_ERR_STORE_UNAVAILABLE',
    });
    await expect(store.transaction(async (tx) => tx.setMeta('k2', 'v'))).rejects.toMatchObject({
      code: 'CC_ERR_STORE_UNAVAILABLE',
    });
    // Reads still answer (nothing about them waits for a flush).
    expect(await store.getMeta('before')).toBe('ok');
    await store.close();
  });

  it('a write outside a transaction waits for the flush too', async () => {
    const store = await storeWithLostWal();
    await expect(store.setMeta('k', 'v')).rejects.toMatchObject({ code: 'CC_ERR_STORE_UNAVAILABLE' });
    await store.close();
  });

  it('an audited operation whose flush failed is refused, not released', async () => {
    const store = await storeWithLostWal();
    const audit = new AuditLog(store, randomBytes(32), systemClock);
    let mutated = false;
    await expect(
      audit.append(untypedEvent({ type: 'test.release', actor: 'agent:a', data: {} }), async (tx) => {
        mutated = true;
        await tx.setMeta('released', 'yes');
      }),
    ).rejects.toMatchObject({ code: 'CC_ERR_AUDIT_UNAVAILABLE' });
    expect(mutated).toBe(true); // it ran, and committed, but was never reported durable
    await audit.close().catch(() => undefined);
    await store.close();
  });

  it('keeps flushing the file SQLite writes through its checkpoints and WAL restarts', async () => {
    const path = join(dir, `store-${n++}.db`);
    const store = await openSqliteStore({ path });
    await store.migrate();
    await store.setMeta('first', 'x');
    const inode = statSync(`${path}-wal`).ino;
    // About 9 MB of frames: past SQLite's automatic checkpoint (1,000 pages) several times.
    for (let i = 0; i < 3000; i++)
      await store.transaction(async (tx) => tx.setMeta(`k${i % 50}`, 'x'.repeat(3000)));
    await new Promise((resolve) => setTimeout(resolve, 400)); // the name check ran
    expect(statSync(`${path}-wal`).ino).toBe(inode);
    await store.setMeta('last', 'y'); // not refused: the kept descriptor is still the WAL
    expect(statSync(`${path}-wal`).size).toBeLessThan(9_000_000); // it was restarted, not grown
    await store.close();
  });

  it('a published change (the change log, outside a transaction) waits for the flush', async () => {
    const store = await storeWithLostWal();
    await expect(store.publish({ type: 'resync' })).rejects.toMatchObject({
      code: 'CC_ERR_STORE_UNAVAILABLE',
    });
    await store.close();
  });
});
