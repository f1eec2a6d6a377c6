import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { AuditLog, type AuditOptions } from '../../src/audit/audit-log.js';
import { systemClock } from '../../src/core/clock.js';
import { openSqliteStore } from '../../src/store/sqlite-store.js';
import { untypedEvent } from '../helpers/audit.js';

// The audit log's group commit with `groupCommitMs` 0: a batch starts at the next turn of the
// event loop, unless the loop is saturated; then it waits a little so that batches carry
// more appends (each batch is a transaction and a flush: the per-batch cost is shared).

const dir = mkdtempSync(join(tmpdir(), 'coatcheck-group-commit-'));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Two appends a millisecond apart (the second while the first may still wait or flush), through a log made with `options`. */
async function twoAppendsApart(options: AuditOptions): Promise<{ transactions: number; batches: number }> {
  const store = await openSqliteStore({ path: join(dir, `audit-${n++}.db`) });
  await store.migrate();
  let transactions = 0;
  const transaction = store.transaction.bind(store);
  store.transaction = ((fn, txOptions) => {
    transactions += 1;
    return transaction(fn, txOptions);
  }) as typeof store.transaction;
  const log = new AuditLog(store, randomBytes(32), systemClock, options);
  try {
    const first = log.append(draft(1));
    await new Promise((resolve) => setTimeout(resolve, 1));
    const second = log.append(draft(2));
    const [a, b] = await Promise.all([first, second]);
    expect(b!.seq).toBe(a!.seq + 1);
    expect(await log.verify()).toMatchObject({ ok: true });
    return { transactions, batches: log.batchesCommitted };
  } finally {
    await log.close();
    await store.close();
  }
}

const draft = (i: number) => untypedEvent({ type: 'test.event', actor: 'agent:test', data: { i } });

it.each([
  {
    name: 'a saturated event loop: appends a millisecond apart share one batch (one transaction, one flush)',
    options: { loopUtilization: () => 0.95 },
    batches: 1,
  },
  {
    name: 'a loop with time to spare: the first append is not held back; the second goes in a batch of its own',
    options: { loopUtilization: () => 0.3 },
    batches: 2,
  },
  {
    name: 'a configured window (groupCommitMs) applies whatever the load',
    options: { groupCommitMs: 20, loopUtilization: () => 0 },
    batches: 1,
  },
])('$name', async ({ options, batches }) => {
  expect(await twoAppendsApart(options)).toEqual({ transactions: batches, batches });
});
