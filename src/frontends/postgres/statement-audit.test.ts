import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { AuditDraft } from '../../audit/audit-log.js';
import type { StatementEvent } from './relay/relay-services.js';
import { StatementAudit, StatementAuditTick } from './statement-audit.js';

function event(i: number, decision: 'allow' | 'deny' = 'allow'): StatementEvent {
  return {
    sql: `SELECT ${i}`,
    class: 'read',
    decision,
    rule: null,
    code: decision === 'deny' ? 'CC_ERR_PG_STATEMENT_DENIED' : null,
    durationMs: 0,
    rows: 1,
    outcome: decision === 'deny' ? 'refused' : 'ok',
    tickets: [],
  };
}

/** An audit log that records which turn of the timer each append came in. */
function fakeLog(fail = false) {
  const appends: Array<{ session: string; sql: string[]; turn: number }> = [];
  let turn = 0;
  return {
    appends,
    nextTurn: () => turn++,
    append: vi.fn((draft: AuditDraft) => {
      const data = draft.data as unknown as { session: string; statements: StatementEvent[] };
      appends.push({ session: data.session, sql: data.statements.map((s) => s.sql), turn });
      return fail ? Promise.reject(new Error('disk full')) : Promise.resolve({} as never);
    }),
  };
}

const base = (session: string) => ({ session, connection: 'main' });

describe('statement audit batching', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('writes every session due in one window in the same turn, at most BATCH_MS after its first statement', async () => {
    const log = fakeLog();
    const tick = new StatementAuditTick(StatementAudit.BATCH_MS);
    const a = new StatementAudit(log, 'agent:a', base('s_a'), tick);
    const b = new StatementAudit(log, 'agent:b', base('s_b'), tick);
    await a.add(event(1));
    vi.advanceTimersByTime(StatementAudit.BATCH_MS - 10);
    await b.add(event(2));
    await a.add(event(3));
    expect(log.append).not.toHaveBeenCalled();
    vi.advanceTimersByTime(10);
    expect(log.appends).toEqual([
      { session: 's_a', sql: ['SELECT 1', 'SELECT 3'], turn: 0 },
      { session: 's_b', sql: ['SELECT 2'], turn: 0 },
    ]);
    // The next window starts with the next statement, not before.
    log.nextTurn();
    vi.advanceTimersByTime(10 * StatementAudit.BATCH_MS);
    expect(log.append).toHaveBeenCalledTimes(2);
    await b.add(event(4));
    vi.advanceTimersByTime(StatementAudit.BATCH_MS);
    expect(log.appends.at(-1)).toEqual({ session: 's_b', sql: ['SELECT 4'], turn: 1 });
  });

  it('splits what is pending into records of at most MAX_BATCH statements, in order', async () => {
    const log = fakeLog();
    const a = new StatementAudit(
      log,
      'agent:a',
      base('s_a'),
      new StatementAuditTick(StatementAudit.BATCH_MS),
    );
    const n = 2 * StatementAudit.MAX_BATCH + 5;
    for (let i = 0; i < n; i++) await a.add(event(i));
    vi.advanceTimersByTime(StatementAudit.BATCH_MS);
    expect(log.appends.map((r) => r.sql.length)).toEqual([
      StatementAudit.MAX_BATCH,
      StatementAudit.MAX_BATCH,
      5,
    ]);
    expect(log.appends.flatMap((r) => r.sql)).toEqual(Array.from({ length: n }, (_, i) => `SELECT ${i}`));
  });

  it('writes at once (without the timer) on a refusal, on MAX_PENDING statements and on flush', async () => {
    const log = fakeLog();
    const tick = new StatementAuditTick(StatementAudit.BATCH_MS);
    const a = new StatementAudit(log, 'agent:a', base('s_a'), tick);
    await a.add(event(1));
    await a.add(event(2, 'deny'));
    expect(log.appends.map((r) => r.sql)).toEqual([['SELECT 1', 'SELECT 2']]);
    for (let i = 0; i < StatementAudit.MAX_PENDING; i++) await a.add(event(i));
    expect(log.appends.flatMap((r) => r.sql)).toHaveLength(2 + StatementAudit.MAX_PENDING);
    await a.add(event(7));
    await a.flush();
    expect(log.appends.at(-1)?.sql).toEqual(['SELECT 7']);
    // Nothing is left for the timer: it writes no empty record.
    const calls = log.append.mock.calls.length;
    vi.advanceTimersByTime(10 * StatementAudit.BATCH_MS);
    expect(log.append).toHaveBeenCalledTimes(calls);
  });

  it('a failed timed write is reported (the session ends), and every later flush rejects', async () => {
    const log = fakeLog(true);
    const a = new StatementAudit(
      log,
      'agent:a',
      base('s_a'),
      new StatementAuditTick(StatementAudit.BATCH_MS),
    );
    const failed = new Promise<unknown>((resolve) => {
      a.onFailure = resolve;
    });
    await a.add(event(1));
    vi.advanceTimersByTime(StatementAudit.BATCH_MS);
    expect(((await failed) as Error).message).toBe('disk full');
    await expect(a.flush()).rejects.toThrow('disk full');
  });
});
