import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/audit-log.js';
import { systemClock } from '../../src/core/clock.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store } from '../../src/store/types.js';
import { untypedEvent } from '../helpers/audit.js';

// The audit log's group commit with `groupCommitMs` 0: a batch starts at the next turn of the
// event loop, unless the loop is saturated; then it waits a little so that batches carry
// more appends (each batch is a transaction and a flush: the per-batch cost is shared).

const dir = mkdtempSync(join(tmpdir(), 'coatcheck-group-commit-'));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function logWith(
  utilization: number,
): Promise<{ store: Store; log: AuditLog; transactions: () => number }> {
  const store = await openSqliteStore({ path: join(dir, `audit-${n++}.db`) });
  await store.migrate();
  let transactions = 0;
  const transaction = store.transaction.bind(store);
  store.transaction = ((fn, options) => {
    transactions += 1;
    return transaction(fn, options);
  }) as typeof store.transaction;
  const log = new AuditLog(store, randomBytes(32), systemClock, { loopUtilization: () => utilization });
  return { store, log, transactions: () => transactions };
}

const draft = (i: number) => untypedEvent({ type: 'test.event', actor: 'agent:test', data: { i } });

/** Two appends a millisecond apart (the second while the first may still wait or flush). */
async function twoAppendsApart(log: AuditLog): Promise<number[]> {
  const first = log.append(draft(1));
  await new Promise((resolve) => setTimeout(resolve, 1));
  const second = log.append(draft(2));
  return (await Promise.all([first, second])).map((record) => record.seq);
}

it('a saturated event loop: appends a millisecond apart share one batch (one transaction, one flush)', async () => {
  const { store, log, transactions } = await logWith(0.95);
  try {
    const seqs = await twoAppendsApart(log);
    expect(seqs[1]).toBe(seqs[0]! + 1);
    expect(transactions()).toBe(1);
    expect(log.batchesCommitted).toBe(1);
    expect(await log.verify()).toMatchObject({ ok: true });
  } finally {
    await log.close();
    await store.close();
  }
});

it('a loop with time to spare: the first append is not held back; the second goes in a batch of its own', async () => {
  const { store, log, transactions } = await logWith(0.3);
  try {
    const seqs = await twoAppendsApart(log);
    expect(seqs[1]).toBe(seqs[0]! + 1);
    expect(transactions()).toBe(2);
    expect(log.batchesCommitted).toBe(2);
    expect(await log.verify()).toMatchObject({ ok: true });
  } finally {
    await log.close();
    await store.close();
  }
});

it('a configured window (groupCommitMs) applies whatever the load', async () => {
  const store = await openSqliteStore({ path: join(dir, `audit-${n++}.db`) });
  await store.migrate();
  const log = new AuditLog(store, randomBytes(32), systemClock, {
    groupCommitMs: 20,
    loopUtilization: () => 0,
  });
  try {
    await twoAppendsApart(log);
    expect(log.batchesCommitted).toBe(1);
  } finally {
    await log.close();
    await store.close();
  }
});
