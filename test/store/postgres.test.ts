import { createHash, randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { parseChange } from '../../src/store/change-codec.js';
import { encodeChange, openPostgresStore } from '../../src/store/postgres-store.js';
import type { SecretRecord, Store, StoreChange } from '../../src/store/types.js';
import { storeContract } from './contract.js';

/** Admin URL of a server where we may create databases (trust auth locally). */
const ADMIN_URL = process.env.COATCHECK_TEST_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const created: string[] = [];

async function admin<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: ADMIN_URL });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** A fresh, empty database; returns its URL. */
async function freshDatabase(): Promise<string> {
  const name = `coatcheck_test_${randomBytes(6).toString('hex')}`;
  await admin((c) => c.query(`CREATE DATABASE ${name}`));
  created.push(name);
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

async function openFresh(): Promise<Store> {
  const store = await openPostgresStore({ url: await freshDatabase() });
  await store.migrate();
  return store;
}

afterAll(async () => {
  await admin(async (c) => {
    for (const name of created) await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });
});

storeContract('postgres', openFresh);

const secret = (overrides: Partial<SecretRecord> = {}): SecretRecord => ({
  id: `sec_${randomBytes(5).toString('hex')}`,
  name: 'github',
  kind: 'generic',
  allow: ['conn:github'],
  placements: ['credential'],
  wrappedKey: Buffer.from([1]),
  keyId: 'kid1',
  ciphertext: Buffer.from([2]),
  fingerprint: 'fp',
  createdAt: 1,
  erasedAt: null,
  ...overrides,
});

/** Two stores (two "replicas") on one fresh, migrated database. */
async function twoReplicas(): Promise<{ url: string; a: Store; b: Store; close: () => Promise<void> }> {
  const url = await freshDatabase();
  const [a, b] = await Promise.all([openPostgresStore({ url }), openPostgresStore({ url })]);
  // Both migrate at once: the advisory lock makes the second wait and find nothing to do.
  await Promise.all([a.migrate(), b.migrate()]);
  return { url, a, b, close: async () => void (await Promise.all([a.close(), b.close()])) };
}

describe('postgres store specifics', () => {
  it('delivers a change published by one replica to the subscribers of another', async () => {
    const { a, b, close } = await twoReplicas();
    try {
      const seen: StoreChange[] = [];
      b.subscribe((change) => seen.push(change));
      // b's own publish waits for its LISTEN to be in place, so after seeing it, a's change
      // cannot be missed.
      await b.publish({ type: 'keys.rotated' });
      await expect.poll(() => seen.length).toBe(1);
      await a.publish({ type: 'agent.revoked', id: 'agt_9' });
      await expect
        .poll(() => seen)
        .toEqual([{ type: 'keys.rotated' }, { type: 'agent.revoked', id: 'agt_9' }]);
    } finally {
      await close();
    }
  });

  it('appends one gapless audit chain from two replicas racing', async () => {
    const { a, b, close } = await twoReplicas();
    try {
      const append = (store: Store, actor: string) =>
        store.transaction(async (tx) => {
          const head = await tx.auditHead();
          const seq = (head?.seq ?? 0) + 1;
          const prevHash = head?.hash ?? '';
          const data = { seq, actor };
          const hash = createHash('sha256')
            .update(`${prevHash}|${seq}|${JSON.stringify(data)}`)
            .digest('hex');
          await tx.insertAuditRecords([{ seq, ts: Date.now(), type: 'test', actor, data, prevHash, hash }]);
        });
      await Promise.all(
        Array.from({ length: 50 }, (_, i) => [append(a, `a${i}`), append(b, `b${i}`)]).flat(),
      );
      const records = await a.readAudit(0, 1000);
      expect(records.map((r) => r.seq)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
      expect(records[0]!.prevHash).toBe('');
      for (let i = 1; i < records.length; i++) expect(records[i]!.prevHash).toBe(records[i - 1]!.hash);
      expect(new Set(records.map((r) => r.actor)).size).toBe(100);
    } finally {
      await close();
    }
  });

  it('serialises read-modify-write transactions across replicas', async () => {
    const { a, b, close } = await twoReplicas();
    try {
      await a.setMeta('n', '0');
      await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          (i % 2 ? a : b).transaction(async (tx) => {
            const n = Number(await tx.getMeta('n'));
            await tx.setMeta('n', String(n + 1));
          }),
        ),
      );
      expect(await b.getMeta('n')).toBe('40');
    } finally {
      await close();
    }
  });

  it('reports an unreachable server as CC_ERR_STORE_UNAVAILABLE without leaking the password', async () => {
    const url = 'postgres://u:canary-pw-123@127.0.0.1:1/x';
    const error = await (async () => {
      const store = await openPostgresStore({ url });
      await store.migrate();
    })().then(
      () => null,
      (e: unknown) => e,
    );
    expect(error).toMatchObject({ code: 'CC_ERR_STORE_UNAVAILABLE' });
    const e = error as Error & { cause?: Error; details?: unknown };
    const everything = [
      e.message,
      e.stack,
      JSON.stringify(e),
      JSON.stringify(e.details),
      e.cause?.message,
    ].join('\n');
    expect(everything).not.toContain('canary-pw-123');
  });

  it('never shows the password in its location', async () => {
    const store = await openFresh();
    try {
      expect(store.driver).toBe('postgres');
    } finally {
      await store.close();
    }
    const url = new URL(await freshDatabase());
    url.username = 'postgres';
    url.password = 'canary-pw-456'; // trust auth ignores it
    const withPassword = await openPostgresStore({ url: url.toString() });
    try {
      expect(withPassword.location).not.toContain('canary-pw-456');
      expect(withPassword.location).toContain('postgres@127.0.0.1');
    } finally {
      await withPassword.close();
    }
  });

  it('lets exactly maxUses of many concurrent takers from two replicas through', async () => {
    const { a, b, close } = await twoReplicas();
    try {
      const s = secret();
      await a.insertSecret(s);
      const base = { secretId: s.id, principal: 'agent:agt_1', destinations: ['conn:github'] };
      const common = { expiresAt: null, uses: 0, createdAt: 1, revokedAt: null };
      await a.insertTicket({ ...base, ...common, id: 't', hash: 'h_t', maxUses: 5, parentId: null });
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).consumeUses(['t'])),
      );
      expect(results.filter(Boolean).length).toBe(5);
      expect((await b.getTicketById('t'))?.uses).toBe(5);

      // A chain taken in both orders at once neither deadlocks nor over-spends the parent.
      await a.insertTicket({ ...base, ...common, id: 'p', hash: 'h_p', maxUses: 7, parentId: null });
      await a.insertTicket({ ...base, ...common, id: 'c', hash: 'h_c', maxUses: 100, parentId: 'p' });
      const chain = await Promise.all(
        Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).consumeUses(i % 3 ? ['c', 'p'] : ['p', 'c'])),
      );
      expect(chain.filter(Boolean).length).toBe(7);
      expect((await a.getTicketById('c'))?.uses).toBe(7);
    } finally {
      await close();
    }
  });

  it('splits a long revoked-id list across notifications and ignores malformed payloads', async () => {
    const { url, a, close } = await twoReplicas();
    try {
      const seen: StoreChange[] = [];
      a.subscribe((change) => seen.push(change));
      await a.publish({ type: 'keys.rotated' });
      await expect.poll(() => seen.length).toBe(1);

      // Garbage on the channel (from anyone) is dropped, and the listener keeps working.
      const raw = new Client({ connectionString: url });
      await raw.connect();
      try {
        for (const payload of [
          'not json',
          '{"type":"ticket.revoked","ids":[1]}',
          '{"type":"nope"}',
          'null',
        ]) {
          await raw.query('SELECT pg_notify($1, $2)', ['coatcheck_changes', payload]);
        }
      } finally {
        await raw.end();
      }

      const ids = Array.from({ length: 2000 }, (_, i) => `tkt_${String(i).padStart(20, '0')}`);
      expect(encodeChange({ type: 'ticket.revoked', ids }).length).toBeGreaterThan(1);
      await a.publish({ type: 'ticket.revoked', ids });
      await expect
        .poll(() => seen.flatMap((c) => (c.type === 'ticket.revoked' ? c.ids : [])).length)
        .toBe(ids.length);
      expect(seen.flatMap((c) => (c.type === 'ticket.revoked' ? c.ids : []))).toEqual(ids);
      expect(seen.every((c) => c.type === 'keys.rotated' || c.type === 'ticket.revoked')).toBe(true);
    } finally {
      await close();
    }
  });

  it('reconnects a dropped LISTEN connection and asks caches to resync', async () => {
    const url = await freshDatabase();
    const store = await openPostgresStore({ url });
    try {
      await store.migrate();
      const seen: StoreChange[] = [];
      store.subscribe((change) => seen.push(change));
      await store.publish({ type: 'keys.rotated' });
      await expect.poll(() => seen.length).toBe(1);
      const dbName = new URL(url).pathname.slice(1);
      await admin((c) =>
        c.query(
          "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'coatcheck-listen'",
          [dbName],
        ),
      );
      await expect.poll(() => seen.some((c) => c.type === 'resync'), { timeout: 10_000 }).toBe(true);
      await store.publish({ type: 'secret.erased', id: 'sec_1' });
      await expect.poll(() => seen.at(-1)).toEqual({ type: 'secret.erased', id: 'sec_1' });
    } finally {
      await store.close();
    }
  });

  it('refuses a database migrated by a newer coatcheck', async () => {
    const store = await openFresh();
    try {
      await store.transaction(async () => undefined);
      const url = new URL(ADMIN_URL);
      const dbName = created.at(-1)!;
      url.pathname = `/${dbName}`;
      const raw = new Client({ connectionString: url.toString() });
      await raw.connect();
      try {
        await raw.query(
          "INSERT INTO coatcheck_migrations (version, name, applied_at) VALUES (9999, 'future', 0)",
        );
      } finally {
        await raw.end();
      }
      await expect(store.migrate()).rejects.toMatchObject({ code: 'CC_ERR_STORE_SCHEMA_NEWER' });
    } finally {
      await store.close();
    }
  });

  it('parses only well-formed change payloads', () => {
    expect(parseChange('{"type":"secret.erased","id":"s","extra":1}')).toEqual({
      type: 'secret.erased',
      id: 's',
    });
    expect(parseChange('{"type":"resync"}')).toEqual({ type: 'resync' });
    expect(parseChange('{"type":"agent.revoked"}')).toBeNull();
    // A removed SSH key reaches every replica (its live sessions end there).
    expect(parseChange('{"type":"agent.sshkey.removed","id":"ssk_1"}')).toEqual({
      type: 'agent.sshkey.removed',
      id: 'ssk_1',
    });
    expect(parseChange('{"type":"agent.sshkey.removed","id":7}')).toBeNull();
    expect(parseChange('[]')).toBeNull();
    expect(parseChange(undefined)).toBeNull();
    // A change that cannot fit a notification degrades to "drop every cache".
    expect(encodeChange({ type: 'connection.changed', name: 'x'.repeat(9000) })).toEqual([
      '{"type":"resync"}',
    ]);
  });
});
