import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Context } from '../../src/server/context.js';
import { untypedEvent } from '../helpers/audit.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';

const CANARY = 'canary-audit-5Q7x1Lm0Zp';

describe('audit log', () => {
  let t: TestHome;
  let ctx: Context;

  beforeEach(async () => {
    t = await makeTestHome();
    ctx = await t.open();
  });
  afterEach(async () => {
    await ctx.close().catch(() => undefined);
    t.remove();
  });

  async function fill(n: number) {
    await Promise.all(
      Array.from({ length: n }, (_, i) =>
        ctx.audit.append(
          untypedEvent({ type: 'test.event', actor: 'admin:test', data: { i, nested: { b: 1, a: [i] } } }),
        ),
      ),
    );
  }

  function tamper(sql: string, ...params: unknown[]) {
    const db = new Database(join(t.home.dir, 'coatcheck.db'));
    db.prepare(sql).run(...params);
    db.close();
  }

  it('group commit: many concurrent appends share few transactions, and each resolves after its commit', async () => {
    let transactions = 0;
    const original = ctx.store.transaction.bind(ctx.store);
    (ctx.store as { transaction: typeof original }).transaction = (fn) => {
      transactions++;
      return original(fn);
    };
    const records = await Promise.all(
      Array.from({ length: 300 }, (_, i) =>
        ctx.audit.append(untypedEvent({ type: 'test.event', actor: 'admin:test', data: { i } })),
      ),
    );
    expect(transactions).toBeLessThan(30);
    expect(new Set(records.map((r) => r.seq)).size).toBe(300);
    // The counters /metrics serves (coatcheck_audit_batches_total, _operations_total).
    expect(ctx.audit.operationsCommitted).toBe(300);
    expect(ctx.audit.batchesCommitted).toBe(transactions);
    // Durable: every acknowledged record is in the store.
    const last = Math.max(...records.map((r) => r.seq));
    expect((await ctx.store.readAudit(last - 1, 1))[0]?.seq).toBe(last);
    expect(await ctx.audit.verify()).toMatchObject({ ok: true });
  });

  /** A record as large as a busy PostgreSQL session's (64 statements): ~0.1 ms to seal, as long to insert. */
  const large = (i: number) =>
    untypedEvent({
      type: 'test.event',
      actor: 'admin:test',
      data: {
        i,
        statements: Array.from({ length: 64 }, (_, n) => ({
          sql: `SELECT ${n} FROM t WHERE id = ${i}`,
          rows: n,
        })),
      },
    });

  /** Wraps the store's transactions: reports whether a macrotask ran while one was open. */
  function watchTransactions() {
    const original = ctx.store.transaction.bind(ctx.store);
    let open = false;
    let ranWhileOpen = 0;
    (ctx.store as { transaction: typeof original }).transaction = (fn, options) =>
      original(async (tx) => {
        open = true;
        try {
          return await fn(tx);
        } finally {
          open = false;
        }
      }, options);
    let probing = true;
    const probe = () => {
      if (open) ranWhileOpen++;
      if (probing) setImmediate(probe);
    };
    setImmediate(probe);
    return {
      ranWhileOpen: () => ranWhileOpen,
      stop: () => {
        probing = false;
      },
    };
  }

  it('a batch of large records lets the event loop run between slices, and commits whole, in order', async () => {
    const watch = watchTransactions();
    const records = await Promise.all(Array.from({ length: 60 }, (_, i) => ctx.audit.append(large(i))));
    watch.stop();
    // Without slices the batch is sealed and inserted in one run of the loop: nothing else
    // runs while its transaction is open (its steps resolve as microtasks).
    expect(watch.ranWhileOpen()).toBeGreaterThan(0);
    expect(records.map((r) => r.seq)).toEqual(records.map((_, i) => records[0]!.seq + i));
    expect(await ctx.audit.verify()).toMatchObject({ ok: true });
  });

  it('a batch that fails in a later slice leaves none of its records: all are refused, and the log goes on', async () => {
    const original = ctx.store.transaction.bind(ctx.store);
    let inserts = 0;
    (ctx.store as { transaction: typeof original }).transaction = (fn, options) =>
      original(
        (tx) =>
          fn(
            new Proxy(tx, {
              get(target, name, receiver) {
                if (name !== 'insertAuditRecords') return Reflect.get(target, name, receiver);
                return (batch: Parameters<typeof tx.insertAuditRecords>[0]) => {
                  // The first slice is inserted; the second fails (a full disk, say).
                  if (++inserts === 2)
                    return Promise.reject(Object.assign(new Error('disk full'), { code: 'SQLITE_FULL' }));
                  return target.insertAuditRecords(batch);
                };
              },
            }),
          ),
        options,
      );
    const before = (await ctx.audit.tail(1))[0]?.seq ?? 0;
    const outcomes = await Promise.allSettled(
      Array.from({ length: 60 }, (_, i) => ctx.audit.append(large(i))),
    );
    expect(inserts).toBeGreaterThanOrEqual(2);
    expect(outcomes.every((o) => o.status === 'rejected')).toBe(true);
    expect(await ctx.store.readAudit(before, 100)).toEqual([]);
    (ctx.store as { transaction: typeof original }).transaction = original;
    const next = await ctx.audit.append(large(99));
    expect(next.seq).toBe(before + 1);
    expect(await ctx.audit.verify()).toMatchObject({ ok: true });
  });

  it('verify accepts an intact chain', async () => {
    await fill(50);
    expect(await ctx.audit.verify()).toEqual({ ok: true, records: 51, headSeq: 51 }); // + home.init
  });

  it('detects an edited record and names it', async () => {
    await fill(20);
    tamper("UPDATE audit SET data = json_set(data, '$.i', 999) WHERE seq = 7");
    expect(await ctx.audit.verify()).toMatchObject({ ok: false, seq: 7, problem: 'edited' });
  });

  it('detects a removed record', async () => {
    await fill(20);
    tamper('DELETE FROM audit WHERE seq = 9');
    expect(await ctx.audit.verify()).toMatchObject({ ok: false, seq: 9, problem: 'removed' });
  });

  it('detects reordered records', async () => {
    await fill(20);
    // Swap the contents of 5 and 6 but keep their sequence numbers.
    const db = new Database(join(t.home.dir, 'coatcheck.db'));
    const five = db.prepare('SELECT * FROM audit WHERE seq = 5').get() as Record<string, unknown>;
    const six = db.prepare('SELECT * FROM audit WHERE seq = 6').get() as Record<string, unknown>;
    const update = db.prepare(
      'UPDATE audit SET ts = ?, type = ?, actor = ?, data = ?, prev_hash = ?, hash = ? WHERE seq = ?',
    );
    update.run(six.ts, six.type, six.actor, six.data, six.prev_hash, six.hash, 5);
    update.run(five.ts, five.type, five.actor, five.data, five.prev_hash, five.hash, 6);
    db.close();
    const result = await ctx.audit.verify();
    expect(result.ok).toBe(false);
    expect(result).toMatchObject({ seq: 5 });
  });

  it('detects records removed from the end', async () => {
    await fill(20);
    tamper('DELETE FROM audit WHERE seq > 18');
    expect(await ctx.audit.verify()).toMatchObject({ ok: false, seq: 19, problem: 'truncated' });
  });

  it('detects a re-chained forgery without the key (plain SHA-256 would not)', async () => {
    await fill(5);
    const { createHash } = await import('node:crypto');
    tamper(
      "UPDATE audit SET actor = 'someone-else', hash = ? WHERE seq = 6",
      createHash('sha256').update('forged').digest('hex'),
    );
    expect(await ctx.audit.verify()).toMatchObject({ ok: false, seq: 6, problem: 'edited' });
  });

  it('fails closed: when the audit log cannot be written, no secret is released', async () => {
    await ctx.vault.addSecret({ name: 's', value: Buffer.from(CANARY), allow: ['svc'] }, 'admin:test');
    const agent = await ctx.agents.create({ name: 'a' }, 'admin:test');
    const principal = await ctx.agents.authenticate(agent.key);
    const { ticket } = await ctx.vault.issueTicket({ secret: 's', principal: principal.ref }, 'admin:test');
    // Make every audit insert fail, as a full disk or lost database would.
    tamper(`CREATE TRIGGER audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END`);
    const failure = await ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } }).then(
      (ok) => ({ released: ok.value.revealText() }),
      (error: { code: string; message: string }) => error,
    );
    expect(failure).toMatchObject({ code: 'CC_ERR_AUDIT_UNAVAILABLE' });
    expect(JSON.stringify(failure)).not.toContain(CANARY);
    const committed = ctx.audit.operationsCommitted;
    // And nothing else slips through either.
    await expect(
      ctx.vault.issueTicket({ secret: 's', principal: principal.ref }, 'admin:test'),
    ).rejects.toMatchObject({
      code: 'CC_ERR_AUDIT_UNAVAILABLE',
    });
    // A batch that failed is not counted as committed.
    expect(ctx.audit.operationsCommitted).toBe(committed);
    tamper('DROP TRIGGER audit_down');
    await expect(
      ctx.vault.exchange(ticket, { principal, target: { connection: 'svc' } }),
    ).resolves.toBeDefined();
    expect(ctx.audit.operationsCommitted).toBe(committed + 1);
    expect(await ctx.audit.verify()).toMatchObject({ ok: true });
  });

  it('a state change and its record commit together: a failed mutation leaves neither', async () => {
    await ctx.vault.addSecret({ name: 'dup', value: Buffer.from('x'), allow: [] }, 'admin:test');
    const before = (await ctx.store.auditHead())!.seq;
    await expect(
      ctx.vault.addSecret({ name: 'dup', value: Buffer.from('y'), allow: [] }, 'admin:test'),
    ).rejects.toMatchObject({
      code: 'CC_ERR_ALREADY_EXISTS',
    });
    expect((await ctx.store.auditHead())!.seq).toBe(before);
  });
});
