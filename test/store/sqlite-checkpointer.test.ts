import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, expect, it } from 'vitest';
import { BackgroundCheckpointer } from '../../src/store/sqlite-checkpointer.js';
import { sqliteAddon } from '../../src/store/sqlite-store.js';

// The WAL checkpointed from a thread with its own connection (ADR 0032): the store's
// connection stops checkpointing inside its COMMITs while the thread runs, and takes it
// back when the thread is gone.

const dir = mkdtempSync(join(tmpdir(), 'coatcheck-checkpointer-'));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function database() {
  const path = join(dir, `db-${n++}.db`);
  const db = new Database(path, sqliteAddon());
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, data TEXT)');
  return { db, path };
}

const autocheckpoint = (db: Database.Database) => db.pragma('wal_autocheckpoint', { simple: true });

it('takes checkpoints over: the WAL stays bounded while the store connection never checkpoints', async () => {
  const { db, path } = database();
  const checkpointer = new BackgroundCheckpointer(db, path, sqliteAddon());
  checkpointer.start();
  await expect.poll(() => checkpointer.running, { timeout: 5000 }).toBe(true);
  expect(autocheckpoint(db)).toBe(0);
  const insert = db.prepare('INSERT INTO t (data) VALUES (?)');
  // About 24 MB of frames, written in pauses the thread can use.
  for (let round = 0; round < 60; round++) {
    db.transaction(() => {
      for (let i = 0; i < 100; i++) insert.run('x'.repeat(4000));
    })();
    await new Promise((resolve) => setTimeout(resolve, 40));
  }
  await expect.poll(() => checkpointer.passes, { timeout: 5000 }).toBeGreaterThan(2);
  // Without checkpoints the WAL would hold every frame (over 24 MB): it was copied and restarted.
  expect(statSync(`${path}-wal`).size).toBeLessThan(12_000_000);
  expect((db.prepare('SELECT COUNT(*) AS c FROM t').get() as { c: number }).c).toBe(6000);
  await checkpointer.close();
  // The thread is gone: the store's connection checkpoints for itself again.
  expect(checkpointer.running).toBe(false);
  expect(autocheckpoint(db)).toBe(1000);
  db.close();
});

it('starts only after 64 writes: a short command never starts a thread', async () => {
  const { db, path } = database();
  const checkpointer = new BackgroundCheckpointer(db, path, sqliteAddon());
  for (let i = 0; i < 63; i++) checkpointer.noteWrite();
  await new Promise((resolve) => setTimeout(resolve, 300));
  expect(checkpointer.running).toBe(false);
  expect(autocheckpoint(db)).toBe(1000);
  checkpointer.noteWrite();
  await expect.poll(() => checkpointer.running, { timeout: 5000 }).toBe(true);
  expect(autocheckpoint(db)).toBe(0);
  await checkpointer.close();
  db.close();
});

it('a thread that cannot open the database leaves the store connection checkpointing', async () => {
  const { db } = database();
  const checkpointer = new BackgroundCheckpointer(db, join(dir, 'missing', 'none.db'), sqliteAddon());
  checkpointer.start();
  await new Promise((resolve) => setTimeout(resolve, 500));
  expect(checkpointer.running).toBe(false);
  expect(autocheckpoint(db)).toBe(1000);
  await checkpointer.close();
  db.close();
});
