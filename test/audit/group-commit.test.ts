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

/**
 * Two appends one turn of the event loop apart, through a log made with `options`: the
 * second is made from a `setImmediate` queued after the first append, so it comes after the
 * first batch's own `setImmediate` (a loop with time to spare starts that batch first) and
 * before any timer (a window of 2 ms or more is still open), however slow the machine. A
 * timer of 1 ms here fired after the 2 ms window on a loaded machine.
 */
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
    await new Promise((resolve) => setImmediate(resolve));
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
    name: 'a saturated event loop: appends a turn apart share one batch (one transaction, one flush)',
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
