import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { AuditLog, type AuditVerifyResult, chainHash } from '../../src/audit/audit-log.js';
import { systemClock } from '../../src/core/clock.js';
import { POSTGRES_MIGRATIONS } from '../../src/store/migrations.js';
import { openPostgresStore } from '../../src/store/postgres-store.js';
import type { AuditRecord, Store } from '../../src/store/types.js';
import { untypedEvent } from '../helpers/audit.js';
import { startTcpProxy } from '../helpers/tcp-proxy.js';

// Issue 20, item 5 (ADR 0015): every replica appends to a chain of its own without the
// database-wide lock; `audit verify` still proves one complete, ordered history, and an
// exchange is still never recorded after the revocation that forbids it.

const ADMIN_URL = process.env.COATCHECK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const LOCK_NAMESPACE = 0x636f6174;
const LOCK_TRANSACTIONS = 2;
const created: string[] = [];
const key = randomBytes(32);

async function sql<T = Record<string, unknown>>(
  url: string,
  text: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(text, params)).rows as T[];
  } finally {
    await client.end();
  }
}

async function freshDatabase(): Promise<string> {
  const name = `coatcheck_chain_${randomBytes(6).toString('hex')}`;
  await sql(ADMIN_URL, `CREATE DATABASE ${name}`);
  created.push(name);
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

afterAll(async () => {
  for (const name of created) await sql(ADMIN_URL, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
});

async function replicas(url: string, n: number): Promise<Array<{ store: Store; log: AuditLog }>> {
  const out: Array<{ store: Store; log: AuditLog }> = [];
  for (let i = 0; i < n; i++) {
    const store = await openPostgresStore({ url, poolSize: 4 });
    await store.migrate();
    out.push({ store, log: new AuditLog(store, key, systemClock, { checkpointMs: 40 }) });
  }
  return out;
}

async function closeAll(rs: ReadonlyArray<{ store: Store; log: AuditLog }>): Promise<void> {
  for (const r of rs) {
    await r.log.close();
    await r.store.close();
  }
}

const draft = (i: number, who: string) => untypedEvent({ type: 'test.event', actor: who, data: { i, who } });

describe('audit chains on PostgreSQL (ADR 0015)', () => {
  it('three stores append at once, one holding no lock, and verify sees one complete history', async () => {
    const url = await freshDatabase();
    const rs = await replicas(url, 3);
    try {
      // The global lock is held elsewhere: chain appends (the request path) must not need it.
      const holder = new Client({ connectionString: url });
      await holder.connect();
      await holder.query('SELECT pg_advisory_lock($1, $2)', [LOCK_NAMESPACE, LOCK_TRANSACTIONS]);
      // Open each replica's chain first (that one main-chain record takes the lock).
      await holder.query('SELECT pg_advisory_unlock($1, $2)', [LOCK_NAMESPACE, LOCK_TRANSACTIONS]);
      await Promise.all(rs.map((r, n) => r.log.append(draft(-1, `r${n}`))));
      await holder.query('SELECT pg_advisory_lock($1, $2)', [LOCK_NAMESPACE, LOCK_TRANSACTIONS]);
      const underLock = await Promise.race([
        Promise.all(rs.map((r, n) => r.log.append(draft(0, `r${n}`)))).then(() => 'appended'),
        new Promise((resolve) => setTimeout(() => resolve('blocked'), 3000)),
      ]);
      expect(underLock).toBe('appended');
      // A mutation that is not row-locked goes to the main chain and does wait for it.
      let mainDone = false;
      const main = rs[0]!.log
        .append(draft(0, 'main'), async (tx) => tx.setMeta('n', '1'))
        .then((r) => {
          mainDone = true;
          return r;
        });
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(mainDone).toBe(false);
      await holder.query('SELECT pg_advisory_unlock($1, $2)', [LOCK_NAMESPACE, LOCK_TRANSACTIONS]);
      await holder.end();
      await main;

      // Concurrent load: chain appends on all three, main-chain appends mixed in.
      const acked: AuditRecord[] = [];
      await Promise.all(
        rs.map(async (r, n) => {
          for (let wave = 0; wave < 10; wave++) {
            const appends = Array.from({ length: 15 }, (_, i) =>
              r.log.append(draft(wave * 100 + i, `r${n}`)),
            );
            if (wave % 3 === 0)
              appends.push(r.log.append(draft(wave, `m${n}`), async (tx) => tx.setMeta(`m${n}`, `${wave}`)));
            acked.push(...(await Promise.all(appends)));
          }
        }),
      );
      const check = await rs[1]!.log.verify();
      expect(check).toMatchObject({ ok: true });
      const all = await rs[2]!.store.readAudit(0, 100_000);
      // (Checkpoints may have been added since: the exact count is checked once all are closed.)
      expect((check as { records: number }).records).toBeGreaterThan(acked.length);
      const bySeq = new Map(all.map((r) => [r.seq, r]));
      for (const record of acked) expect(bySeq.get(record.seq)?.hash).toBe(record.hash);
      const chains = new Set(all.map((r) => r.chain ?? ''));
      expect(chains.size).toBe(4); // the main chain and one per replica
      expect(all.some((r) => r.type === 'audit.checkpoint')).toBe(true);
      // Seqs are unique and increasing along every chain.
      for (const chain of chains) {
        const seqs = all.filter((r) => (r.chain ?? '') === chain).map((r) => r.seq);
        expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
      }
    } finally {
      await closeAll(rs);
    }
    // Closed cleanly: each replica named its last head in a final checkpoint.
    const [after] = await replicas(url, 1);
    try {
      const final = await after!.log.verify();
      expect(final).toMatchObject({ ok: true });
      expect((final as { records: number }).records).toBe((await after!.store.readAudit(0, 100_000)).length);
    } finally {
      await closeAll([after!]);
    }
  }, 60_000);

  it('a revoke racing exchanges on another (slow) store: no release is recorded after it', async () => {
    const url = await freshDatabase();
    const proxy = await startTcpProxy('127.0.0.1', Number(new URL(ADMIN_URL).port || 5432));
    const [admin] = await replicas(url, 1);
    const slowStore = await openPostgresStore({ url: proxy.via(url), poolSize: 6 });
    const slow = { store: slowStore, log: new AuditLog(slowStore, key, systemClock) };
    proxy.delay('pool', 5);
    try {
      await admin!.store.insertSecret({
        id: 'sec_1',
        name: 's',
        kind: 'generic',
        allow: [],
        placements: ['credential'],
        wrappedKey: null,
        keyId: null,
        ciphertext: null,
        fingerprint: 'fp',
        createdAt: 1,
        erasedAt: null,
      });
      for (let round = 0; round < 6; round++) {
        const id = `tkt_${round}`;
        await admin!.store.insertTicket({
          id,
          hash: `h_${id}`,
          secretId: 'sec_1',
          principal: 'agent:agt_1',
          destinations: [],
          expiresAt: null,
          maxUses: round % 2 === 0 ? null : 1_000_000,
          uses: 0,
          parentId: null,
          createdAt: 1,
          revokedAt: null,
        });
        const guard = {
          ids: { tickets: [id], agents: [], workflows: [], secrets: ['sec_1'] },
          refuse: () => new Error('revoked'),
        };
        const released: Array<{ seq: number; start: number }> = [];
        let stop = false;
        const worker = async () => {
          while (!stop) {
            const start = Date.now();
            await slow.log
              .append(
                untypedEvent({ type: 'token.exchange', actor: 'agent:agt_1', data: { ticket: id } }),
                // The exchange's transaction stays open 25 ms after its liveness check (a slow
                // link would do the same): a revoke landing then must wait for it, or it for the revoke.
                async (tx) => {
                  await new Promise((resolve) => setTimeout(resolve, 25));
                  if (round % 2 === 1 && !(await tx.consumeUses([id]))) throw new Error('exhausted');
                },
                guard,
                { rowLocked: true },
              )
              .then(
                (r) => released.push({ seq: r.seq, start }),
                () => undefined,
              );
          }
        };
        const workers = Array.from({ length: 8 }, worker);
        await new Promise((resolve) => setTimeout(resolve, 300 + Math.random() * 400));
        const revoke = await admin!.log.append(
          { type: 'token.revoke', actor: 'admin:test', data: { ticket: id } },
          async (tx) => void (await tx.revokeTicketTree(id, Date.now())),
        );
        const returnedAt = Date.now();
        await new Promise((resolve) => setTimeout(resolve, 200));
        stop = true;
        await Promise.all(workers);
        expect(released.length).toBeGreaterThan(2);
        expect(released.filter((r) => r.seq > revoke.seq || r.start >= returnedAt)).toEqual([]);
      }
      expect(await admin!.log.verify()).toMatchObject({ ok: true });
    } finally {
      await slow.log.close();
      await slowStore.close();
      await closeAll([admin!]);
      await proxy.close();
    }
  }, 60_000);

  it('a record edited, removed, moved, cut from the end or inserted in any chain fails verify', async () => {
    const url = await freshDatabase();
    const rs = await replicas(url, 2);
    try {
      for (let wave = 0; wave < 4; wave++) {
        await Promise.all(
          rs.flatMap((r, n) =>
            Array.from({ length: 10 }, (_, i) => r.log.append(draft(wave * 10 + i, `r${n}`))),
          ),
        );
      }
      const anchor = await rs[0]!.log.anchor(); // a checkpoint naming both chains' heads
      await Promise.all(rs.map((r, n) => r.log.append(draft(99, `r${n}`))));
      expect(await rs[0]!.log.verify({ anchor })).toMatchObject({ ok: true });
      const all = await rs[0]!.store.readAudit(0, 10_000);
      const chain = all.find((r) => r.chain !== undefined && r.chain !== '')!.chain!;
      const mine = all.filter((r) => r.chain === chain);
      const row = async (chainSeq: number) =>
        (await sql(url, 'SELECT * FROM audit WHERE chain = $1 AND chain_seq = $2', [chain, chainSeq]))[0]!;
      const put = (r: Record<string, unknown>) =>
        sql(
          url,
          'INSERT INTO audit (seq, ts, type, actor, data, prev_hash, hash, chain, chain_seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)',
          [r.seq, r.ts, r.type, r.actor, r.data, r.prev_hash, r.hash, r.chain, r.chain_seq],
        );
      const verify = (): Promise<AuditVerifyResult> => rs[1]!.log.verify();

      // Edited.
      await sql(url, `UPDATE audit SET data = '{"i":999}' WHERE chain = $1 AND chain_seq = 5`, [chain]);
      expect(await verify()).toMatchObject({ ok: false, problem: 'edited', seq: mine[4]!.seq });
      await sql(url, 'UPDATE audit SET data = $2 WHERE seq = $1', [
        mine[4]!.seq,
        JSON.stringify(mine[4]!.data),
      ]);
      expect(await verify()).toMatchObject({ ok: true });

      // Removed from the middle.
      const seventh = await row(7);
      await sql(url, 'DELETE FROM audit WHERE seq = $1', [seventh.seq]);
      expect(await verify()).toMatchObject({ ok: false, problem: 'removed' });
      await put(seventh);
      expect(await verify()).toMatchObject({ ok: true });

      // Moved to another place in the log (its seq changed).
      await sql(url, 'UPDATE audit SET seq = 1000000 WHERE seq = $1', [seventh.seq]);
      expect((await verify()).ok).toBe(false);
      await sql(url, 'UPDATE audit SET seq = $1 WHERE seq = 1000000', [seventh.seq]);

      // Cut from the end, with and without the committed head fixed up to match.
      const last = mine.length;
      const keep = last - 3;
      const cut = await sql(
        url,
        'SELECT * FROM audit WHERE chain = $1 AND chain_seq > $2 ORDER BY chain_seq',
        [chain, keep],
      );
      const head = (await sql(url, 'SELECT * FROM audit_chains WHERE chain = $1', [chain]))[0]!;
      await sql(url, 'DELETE FROM audit WHERE chain = $1 AND chain_seq > $2', [chain, last - 2]);
      expect(await verify()).toMatchObject({ ok: false, problem: 'truncated' });
      await sql(url, 'DELETE FROM audit WHERE chain = $1 AND chain_seq > $2', [chain, keep]);
      const kept = await row(keep);
      await sql(url, 'UPDATE audit_chains SET chain_seq = $2, hash = $3 WHERE chain = $1', [
        chain,
        kept.chain_seq,
        kept.hash,
      ]);
      // The anchor's checkpoint named a later head of this chain.
      expect(await verify()).toMatchObject({ ok: false, problem: 'truncated' });
      expect(await rs[1]!.log.verify({ anchor })).toMatchObject({ ok: false });
      for (const r of cut) await put(r);
      await sql(url, 'UPDATE audit_chains SET chain_seq = $2, hash = $3 WHERE chain = $1', [
        chain,
        head.chain_seq,
        head.hash,
      ]);
      expect(await verify()).toMatchObject({ ok: true });

      // A whole chain gone (records and head): its opening on the main chain still names it.
      const saved = await sql(url, 'SELECT * FROM audit WHERE chain = $1 ORDER BY chain_seq', [chain]);
      await sql(url, 'DELETE FROM audit WHERE chain = $1', [chain]);
      await sql(url, 'DELETE FROM audit_chains WHERE chain = $1', [chain]);
      expect(await verify()).toMatchObject({ ok: false, problem: 'truncated' });
      for (const r of saved) await put(r);
      await sql(url, 'INSERT INTO audit_chains (chain, chain_seq, hash) VALUES ($1, $2, $3)', [
        chain,
        head.chain_seq,
        head.hash,
      ]);
      expect(await verify()).toMatchObject({ ok: true });

      // A record in a chain nobody opened, even one hashed correctly.
      const forged = {
        seq: 999_999,
        chain: 'r_forged',
        chainSeq: 1,
        ts: 1,
        type: 'token.exchange',
        actor: 'x',
        data: {},
      };
      await put({
        ...forged,
        data: '{}',
        prev_hash: '',
        hash: chainHash(key, '', forged),
        chain_seq: 1,
      });
      expect(await verify()).toMatchObject({ ok: false, problem: 'chain-broken' });
      await sql(url, 'DELETE FROM audit WHERE seq = 999999');
      expect(await verify()).toMatchObject({ ok: true });
    } finally {
      await closeAll(rs);
    }
  }, 60_000);

  it('batches of large records are cut into slices on every chain, and still verify as one history', async () => {
    // A PostgreSQL session's statement records (64 statements each): a batch of them is
    // sealed and inserted in slices, one INSERT a slice, in one transaction (on PostgreSQL
    // the loop runs during any transaction's round trips anyway: what is checked here is
    // the chains). Two replicas at once, each on its own chain; main-chain records mixed in.
    const url = await freshDatabase();
    const rs = await replicas(url, 2);
    const large = (i: number, who: string) =>
      untypedEvent({
        type: 'test.event',
        actor: who,
        data: {
          i,
          statements: Array.from({ length: 64 }, (_, n) => ({ sql: `SELECT ${n} WHERE ${i}`, rows: n })),
        },
      });
    try {
      const acked = (
        await Promise.all(
          rs.map(async (r, n) => [
            ...(await Promise.all(Array.from({ length: 40 }, (_, i) => r.log.append(large(i, `r${n}`))))),
            await r.log.append(draft(n, `m${n}`), async (tx) => tx.setMeta(`m${n}`, '1')),
          ]),
        )
      ).flat();
      const result = await rs[0]!.log.verify();
      expect(result).toMatchObject({ ok: true });
      expect((result as { records: number }).records).toBeGreaterThanOrEqual(acked.length);
    } finally {
      await closeAll(rs);
    }
  });

  it('a database written with the one chain of earlier versions migrates and still verifies', async () => {
    const url = await freshDatabase();
    // Schema 6 and a log written the way earlier versions wrote it.
    await sql(
      url,
      'CREATE TABLE coatcheck_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)',
    );
    for (const m of POSTGRES_MIGRATIONS.filter((m) => m.version <= 6)) {
      await sql(url, m.sql);
      await sql(url, 'INSERT INTO coatcheck_migrations VALUES ($1, $2, 0)', [m.version, m.name]);
    }
    let prevHash = '';
    for (let seq = 1; seq <= 30; seq++) {
      const base = { seq, ts: 1000 + seq, type: 'old.event', actor: 'admin:old', data: { seq } };
      const hash = chainHash(key, prevHash, base);
      await sql(
        url,
        'INSERT INTO audit (seq, ts, type, actor, data, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)',
        [seq, base.ts, base.type, base.actor, JSON.stringify(base.data), prevHash, hash],
      );
      prevHash = hash;
    }
    await sql(url, "INSERT INTO meta (key, value) VALUES ('audit_head', $1)", [`30:${prevHash}`]);

    const rs = await replicas(url, 2);
    try {
      expect(await rs[0]!.log.verify()).toEqual({ ok: true, records: 30, headSeq: 30 });
      const old = await rs[0]!.store.readAudit(0, 30);
      expect(old.every((r) => r.chain === undefined && r.chainSeq === undefined)).toBe(true);
      await Promise.all(
        rs.flatMap((r, n) => Array.from({ length: 20 }, (_, i) => r.log.append(draft(i, `r${n}`)))),
      );
      await rs[0]!.log.append(draft(0, 'main'), async (tx) => tx.setMeta('x', '1'));
      const check = await rs[1]!.log.verify();
      expect(check).toMatchObject({ ok: true });
      expect((check as { headSeq: number }).headSeq).toBeGreaterThan(70);
      await sql(url, `UPDATE audit SET actor = 'someone' WHERE seq = 12`);
      expect(await rs[1]!.log.verify()).toMatchObject({ ok: false, seq: 12, problem: 'edited' });
    } finally {
      await closeAll(rs);
    }
  }, 60_000);
});
