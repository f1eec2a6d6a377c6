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
  // About 10 MB of frames, in rounds of ~400 KB. After every third round the test waits for
  // a pass that began after it (two passes on): that pass copies every frame, so the next
  // commit starts the WAL over. Waiting on the thread, not on a fixed pause, keeps this true
  // on a loaded machine (a fixed 40 ms pause once let the WAL reach 16 MB on CI).
  for (let round = 0; round < 24; round++) {
    db.transaction(() => {
      for (let i = 0; i < 100; i++) insert.run('x'.repeat(4000));
    })();
    if (round % 3 === 2) {
      const after = checkpointer.passes + 2;
      await expect
        .poll(() => checkpointer.passes, { timeout: 5000, interval: 10 })
        .toBeGreaterThanOrEqual(after);
    }
  }
  // Without checkpoints the WAL would hold every frame (over 9.6 MB); measured: ~1.3 MB, three rounds.
  expect(statSync(`${path}-wal`).size).toBeLessThan(3_000_000);
  expect((db.prepare('SELECT COUNT(*) AS c FROM t').get() as { c: number }).c).toBe(2400);
  await checkpointer.close();
  // The thread is gone: the store's connection checkpoints for itself again.
  expect(checkpointer.running).toBe(false);
  expect(autocheckpoint(db)).toBe(1000);
  db.close();
});

it('starts the WAL over under steady writes: with no pause between commits the file stays bounded', async () => {
  // A PASSIVE pass copies the WAL while commits keep landing, so it never ends with every
  // frame copied and the WAL never starts over by itself: without the RESTART it grows by
  // every byte written (seen under load: 300 MB in 40 s of requests).
  const keep = 256 * 1024;
  const { db, path } = database();
  db.pragma(`journal_size_limit = ${keep}`);
  const checkpointer = new BackgroundCheckpointer(db, path, sqliteAddon(), { keepBytes: keep });
  checkpointer.start();
  await expect.poll(() => checkpointer.running, { timeout: 5000 }).toBe(true);
  const insert = db.prepare('INSERT INTO t (data) VALUES (?)');
  let rows = 0;
  let largest = 0;
  const until = Date.now() + 3000;
  while (Date.now() < until) {
    insert.run('x'.repeat(1000));
    rows += 1;
    largest = Math.max(largest, statSync(`${path}-wal`).size);
    // A commit a millisecond (about 4 MB/s): a busy gateway's audit rate.
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  // Each commit appends at least one frame (a 4 KiB page and its header): a WAL that never
  // started over would hold at least this much (measured: 15.8 MB for 2,550 commits).
  const unbounded = rows * 4120;
  expect(unbounded).toBeGreaterThan(16 * keep);
  expect(checkpointer.restarts).toBeGreaterThanOrEqual(3);
  // Measured: 1.1 MB, the size kept and one pass's commits.
  expect(largest).toBeLessThan(unbounded / 4);
  expect((db.prepare('SELECT COUNT(*) AS c FROM t').get() as { c: number }).c).toBe(rows);
  await checkpointer.close();
  db.close();
});

it('a reader of old frames holds the WAL, not the writer; once it ends the WAL starts over and is cut back', async () => {
  const keep = 128 * 1024;
  const { db, path } = database();
  db.pragma(`journal_size_limit = ${keep}`);
  db.pragma('busy_timeout = 5000');
  const checkpointer = new BackgroundCheckpointer(db, path, sqliteAddon(), { keepBytes: keep });
  checkpointer.start();
  await expect.poll(() => checkpointer.running, { timeout: 5000 }).toBe(true);
  const insert = db.prepare('INSERT INTO t (data) VALUES (?)');
  insert.run('first');
  // A long read (a backup's snapshot): its frames may be neither copied nor overwritten.
  const reader = new Database(path, { readonly: true, ...sqliteAddon() });
  reader.exec('BEGIN');
  expect((reader.prepare('SELECT COUNT(*) AS c FROM t').get() as { c: number }).c).toBe(1);
  let slowest = 0;
  const until = Date.now() + 1500;
  while (Date.now() < until) {
    const started = performance.now();
    insert.run('x'.repeat(1000));
    slowest = Math.max(slowest, performance.now() - started);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  // No RESTART was tried behind the reader (no pass caught up), so no commit waited on one.
  expect(checkpointer.restarts).toBe(0);
  // A commit held up by a checkpoint would wait for the busy timeout (5 s here); a loaded
  // machine's disk may stall one for tens of milliseconds, which is not that.
  expect(slowest).toBeLessThan(1000);
  const grown = statSync(`${path}-wal`).size;
  expect(grown).toBeGreaterThan(4 * keep);
  expect((reader.prepare('SELECT COUNT(*) AS c FROM t').get() as { c: number }).c).toBe(1);
  reader.exec('COMMIT');
  reader.close();
  // The reader gone, a pass catches up and starts the WAL over; the next commit writes from
  // its start and cuts the file back to the size kept.
  await expect.poll(() => checkpointer.restarts, { timeout: 5000 }).toBeGreaterThan(0);
  insert.run('after');
  expect(statSync(`${path}-wal`).size).toBeLessThanOrEqual(keep);
  await checkpointer.close();
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
