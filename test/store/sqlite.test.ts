import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { AuditLog, chainHash } from '../../src/audit/audit-log.js';
import { systemClock } from '../../src/core/clock.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import { untypedEvent } from '../helpers/audit.js';
import { storeContract } from './contract.js';
import { sqliteStoreAtVersion } from './old-schema.js';

const dir = mkdtempSync(join(tmpdir(), 'coatcheck-sqlite-'));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

storeContract('sqlite', async () => {
  const store = await openSqliteStore({ path: join(dir, `store-${n++}.db`) });
  await store.migrate();
  return store;
});

it('reports a file that is not a database as CC_ERR_STORE_CORRUPT', async () => {
  const path = join(dir, 'garbage.db');
  writeFileSync(path, Buffer.alloc(8192, 0x5a));
  await expect(
    (async () => {
      const store = await openSqliteStore({ path });
      await store.migrate();
    })(),
  ).rejects.toMatchObject({ code: 'CC_ERR_STORE_CORRUPT' });
});

it('migrates secrets stored before placements existed to credential only', async () => {
  const path = join(dir, 'before-placements.db');
  const db = sqliteStoreAtVersion(path, 5);
  db.prepare(
    "INSERT INTO secrets (id, name, kind, allow, fingerprint, created_at) VALUES ('sec_old', 'old', 'generic', '[\"conn:api\"]', 'fp', 1)",
  ).run();
  db.close();
  const store = await openSqliteStore({ path });
  await store.migrate();
  expect(await store.getSecretById('sec_old')).toMatchObject({
    allow: ['conn:api'],
    placements: ['credential'],
  });
  await store.close();
});

it('migrates an audit log written before chains existed (ADR 0015): it verifies, keeps one chain, and grows', async () => {
  const path = join(dir, 'before-chains.db');
  const key = randomBytes(32);
  const db = sqliteStoreAtVersion(path, 6);
  let prevHash = '';
  for (let seq = 1; seq <= 12; seq++) {
    const base = { seq, ts: 1000 + seq, type: 'old.event', actor: 'admin:old', data: { seq } };
    const hash = chainHash(key, prevHash, base);
    db.prepare(
      'INSERT INTO audit (seq, ts, type, actor, data, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)',
    ).run(seq, base.ts, base.type, base.actor, JSON.stringify(base.data), prevHash, hash);
    prevHash = hash;
  }
  db.prepare("INSERT INTO meta (key, value) VALUES ('audit_head', ?)").run(`12:${prevHash}`);
  db.close();
  const store = await openSqliteStore({ path });
  await store.migrate();
  const log = new AuditLog(store, key, systemClock);
  try {
    expect(await log.verify()).toEqual({ ok: true, records: 12, headSeq: 12 });
    await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        log.append(untypedEvent({ type: 'new.event', actor: 'a', data: { i } })),
      ),
    );
    expect(await log.verify()).toEqual({ ok: true, records: 20, headSeq: 20 });
    const all = await store.readAudit(0, 100);
    expect(all.map((r) => r.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect(all.every((r) => r.chain === undefined)).toBe(true);
  } finally {
    await log.close();
    await store.close();
  }
});

// Another process holding the write lock (a `serve --workers` sibling, the CLI) must not
// hold this process's event loop: the transaction waits on a timer, not in SQLite's busy
// handler (which sleeps on the thread). Two connections in one process show it: if the
// second blocked the loop, the first could never finish and the second would time out.
it('waits for a write lock held by another connection without blocking the event loop', async () => {
  const path = join(dir, 'lock-wait.db');
  const holder = await openSqliteStore({ path });
  await holder.migrate();
  const waiter = await openSqliteStore({ path });
  try {
    let release!: () => void;
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    const first = holder.transaction(async (t) => {
      await held;
      await t.notify({ type: 'agent.revoked', id: 'agt_first' });
    });
    await new Promise((resolve) => setTimeout(resolve, 20)); // the holder has BEGIN IMMEDIATE
    const order: string[] = [];
    const second = waiter.transaction(async (t) => {
      order.push('second');
      await t.notify({ type: 'agent.revoked', id: 'agt_second' });
    });
    // The loop is free while the second waits: this timer runs, and lets the first finish.
    setTimeout(() => {
      order.push('timer');
      release();
    }, 30);
    const started = Date.now();
    await Promise.all([first, second]);
    expect(order).toEqual(['timer', 'second']);
    expect(Date.now() - started).toBeLessThan(2000);
  } finally {
    await waiter.close();
    await holder.close();
  }
});

it('another process holding the write lock most of the time does not starve this one: every transaction gets in, none near the 5 s bound', async () => {
  // `serve --workers` siblings take SQLite's lock directly and retry it on a timer while it
  // is busy (ADR 0035): a waiter gets in during the holder's gaps (its WAL flush after each
  // COMMIT), however busy the holder is.
  const path = join(dir, 'lock-duty.db');
  const holder = await openSqliteStore({ path });
  await holder.migrate();
  const waiter = await openSqliteStore({ path });
  let holding = true;
  let held = 0;
  // Transactions of ~8 ms back to back: the lock is free only while each commit is flushed.
  const busy = (async () => {
    while (holding) {
      await holder.transaction(async (t) => {
        await new Promise((resolve) => setTimeout(resolve, 8));
        await t.notify({ type: 'agent.revoked', id: `agt_holder_${held++}` });
      });
    }
  })();
  try {
    const waits: number[] = [];
    for (let i = 0; i < 15; i++) {
      const started = Date.now();
      await waiter.transaction(async (t) => {
        await t.notify({ type: 'agent.revoked', id: `agt_waiter_${i}` });
      });
      waits.push(Date.now() - started);
    }
    // The holder kept the lock busy all along (it committed between the waiter's turns).
    expect(held).toBeGreaterThanOrEqual(10);
    // Each waited for some of the holder's transactions, never for the 5 s busy bound.
    expect(Math.max(...waits)).toBeLessThan(2000);
  } finally {
    holding = false;
    await busy;
    await waiter.close();
    await holder.close();
  }
});
