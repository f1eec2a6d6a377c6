import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/audit/audit-log.js';
import { systemClock } from '../../src/core/clock.js';
import { CHANGE_SETTLE_MS, openSqliteStore } from '../../src/store/sqlite-store.js';
import type { Store, StoreChange } from '../../src/store/types.js';
import { untypedEvent } from '../helpers/audit.js';
import { sqliteStoreAtVersion } from './old-schema.js';

// Two processes on one SQLite file (serve --workers, the CLI beside a server) are two
// connections: each hears the other's changes through the change log (ADR 0031), as
// PostgreSQL replicas hear NOTIFY, and drops every cache only when it cannot know exactly.
const dir = mkdtempSync(join(tmpdir(), 'coatcheck-changelog-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const opened: Store[] = [];
afterEach(async () => {
  for (const s of opened.splice(0)) await s.close();
});

/**
 * Write to the file behind the stores' backs, as another program would; then wait out the
 * window in which a store may answer a cache hit from its last look (ADR 0033), as the
 * store's own writers of a change do.
 */
async function behindTheirBacks<T>(path: string, write: (db: Database.Database) => T): Promise<T> {
  const raw = new Database(path);
  try {
    return write(raw);
  } finally {
    raw.close();
    await new Promise((resolve) => setTimeout(resolve, CHANGE_SETTLE_MS + 1));
  }
}

async function pair(): Promise<{ path: string; writer: Store; reader: Store; heard: StoreChange[] }> {
  const path = join(dir, `store-${n++}.db`);
  const writer = await openSqliteStore({ path });
  await writer.migrate();
  const reader = await openSqliteStore({ path });
  await reader.migrate();
  opened.push(writer, reader);
  const heard: StoreChange[] = [];
  reader.subscribe((change) => heard.push(change));
  return { path, writer, reader, heard };
}

describe('the SQLite change log', () => {
  it('delivers a change committed by another connection as that change, not as resync, on the next feed check', async () => {
    const { writer, reader, heard } = await pair();
    await writer.transaction(async (t) => {
      await t.notify({ type: 'ticket.revoked', ids: ['tkt_1', 'tkt_2'] });
      await t.notify({ type: 'secret.added', id: 'sec_1' });
    });
    expect(heard).toEqual([]);
    reader.feedCurrent(); // a cache hit looks for a foreign commit synchronously
    expect(heard).toEqual([
      { type: 'ticket.revoked', ids: ['tkt_1', 'tkt_2'] },
      { type: 'secret.added', id: 'sec_1' },
    ]);
    reader.feedCurrent();
    expect(heard).toHaveLength(2); // each change once
  });

  // A cache hit looks for foreign commits at most once per FOREIGN_CHECK_WINDOW_MS; a
  // change is reported done only CHANGE_SETTLE_MS after its COMMIT (ADR 0033). An agent
  // that keeps the reader busy (hits every few microseconds, so it always looked a moment
  // ago) must still not be served from cache once a revocation has returned.
  async function hammered(reader: Store, during: () => Promise<void>): Promise<number> {
    let looks = 0;
    let stop = false;
    const loop = (async () => {
      while (!stop) {
        reader.feedCurrent();
        looks++;
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    try {
      await during();
    } finally {
      stop = true;
      await loop;
    }
    return looks;
  }

  it('a change reported done is heard at the next cache hit of a connection that looked a moment before', async () => {
    const { writer, reader, heard } = await pair();
    for (let i = 0; i < 40; i++) {
      const id = `tkt_race_${i}`;
      await hammered(reader, () =>
        writer.transaction(async (t) => {
          await t.notify({ type: 'ticket.revoked', ids: [id] });
        }),
      );
      reader.feedCurrent(); // the first hit after the revocation returned
      expect(heard).toContainEqual({ type: 'ticket.revoked', ids: [id] });
    }
  });

  it('a published change reported done is heard at the next cache hit, likewise', async () => {
    const { writer, reader, heard } = await pair();
    for (let i = 0; i < 40; i++) {
      const name = `api_${i}`;
      await hammered(reader, () => writer.publish({ type: 'connection.changed', name }));
      reader.feedCurrent();
      expect(heard).toContainEqual({ type: 'connection.changed', name });
    }
  });

  it('a revocation inside a savepoint of a larger transaction is heard likewise', async () => {
    const { writer, reader, heard } = await pair();
    for (let i = 0; i < 20; i++) {
      const id = `tkt_sp_${i}`;
      await hammered(reader, () =>
        writer.transaction(async (t) => {
          await t.savepoint(async () => t.notify({ type: 'ticket.revoked', ids: [id] }));
        }),
      );
      reader.feedCurrent();
      expect(heard).toContainEqual({ type: 'ticket.revoked', ids: [id] });
    }
  });

  it('a change written by another program (no settle wait) is heard once the window has passed', async () => {
    const { path, reader, heard } = await pair();
    reader.feedCurrent();
    await behindTheirBacks(path, (raw) =>
      raw
        .prepare('INSERT INTO store_changes (origin, at, payload) VALUES (?, ?, ?)')
        .run('other', Date.now(), '{"type":"agent.revoked","id":"agt_by_hand"}'),
    );
    reader.feedCurrent();
    expect(heard).toEqual([{ type: 'agent.revoked', id: 'agt_by_hand' }]);
  });

  it('delivers published changes (made outside a transaction) to the other connection', async () => {
    const { writer, reader, heard } = await pair();
    await writer.publish({ type: 'connection.changed', name: 'api' });
    reader.feedCurrent();
    expect(heard).toEqual([{ type: 'connection.changed', name: 'api' }]);
  });

  it('a foreign commit that carries no change (audit records) drops no cache', async () => {
    const { path, reader, heard } = await pair();
    const writer = await openSqliteStore({ path });
    opened.push(writer);
    const log = new AuditLog(writer, randomBytes(32), systemClock);
    await log.append(untypedEvent({ type: 'x.event', actor: 'a', data: {} }));
    await log.close();
    reader.feedCurrent();
    expect(heard).toEqual([]);
    // The control: a commit with a change is heard, so the check above could fail.
    await writer.transaction((t) => t.notify({ type: 'agent.revoked', id: 'agt_1' }));
    reader.feedCurrent();
    expect(heard).toEqual([{ type: 'agent.revoked', id: 'agt_1' }]);
  });

  it('a change rolled back with its transaction or savepoint is never heard', async () => {
    const { writer, reader, heard } = await pair();
    await expect(
      writer.transaction(async (t) => {
        await t.notify({ type: 'secret.erased', id: 'sec_gone' });
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    await writer.transaction(async (t) => {
      await t
        .savepoint(async () => {
          await t.notify({ type: 'secret.erased', id: 'sec_sp' });
          throw new Error('inner');
        })
        .catch(() => undefined);
      await t.notify({ type: 'secret.updated', id: 'sec_kept' });
    });
    reader.feedCurrent();
    expect(heard).toEqual([{ type: 'secret.updated', id: 'sec_kept' }]);
  });

  it('the writer hears its own changes once (locally), never again from the log', async () => {
    const { writer, reader } = await pair();
    const own: StoreChange[] = [];
    writer.subscribe((change) => own.push(change));
    await writer.transaction((t) => t.notify({ type: 'approval.changed', id: 'apr_1' }));
    // Another connection commits afterwards: the writer reads the log past its own row.
    await reader.transaction((t) => t.notify({ type: 'relay.revoked', id: 'rly_1' }));
    writer.feedCurrent();
    expect(own).toEqual([
      { type: 'approval.changed', id: 'apr_1' },
      { type: 'relay.revoked', id: 'rly_1' },
    ]);
  });

  describe('fails closed (resync) when it cannot replay exactly', () => {
    it('rows pruned before this connection read them', async () => {
      const { path, writer, reader, heard } = await pair();
      await writer.transaction((t) => t.notify({ type: 'agent.revoked', id: 'agt_pruned' }));
      await behindTheirBacks(path, (raw) => {
        const max = (raw.prepare('SELECT MAX(seq) AS seq FROM store_changes').get() as { seq: number }).seq;
        raw.prepare('DELETE FROM store_changes').run();
        raw
          .prepare("INSERT INTO meta (key, value) VALUES ('store_changes_pruned_through', ?)")
          .run(String(max));
      });
      reader.feedCurrent();
      expect(heard).toEqual([{ type: 'resync' }]);
      // After the resync it follows the log again.
      await writer.transaction((t) => t.notify({ type: 'agent.revoked', id: 'agt_next' }));
      reader.feedCurrent();
      expect(heard).toEqual([{ type: 'resync' }, { type: 'agent.revoked', id: 'agt_next' }]);
    });

    it('a row that does not parse (written by something else)', async () => {
      const { path, reader, heard } = await pair();
      await behindTheirBacks(path, (raw) =>
        raw
          .prepare('INSERT INTO store_changes (origin, at, payload) VALUES (?, ?, ?)')
          .run('other', Date.now(), '{"type":"ticket.revoked","ids":"not-a-list"}'),
      );
      reader.feedCurrent();
      expect(heard).toEqual([{ type: 'resync' }]);
    });

    it('a backlog longer than the replay bound', async () => {
      const { path, reader, heard } = await pair();
      await behindTheirBacks(path, (raw) =>
        raw.exec(`WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 10001)
          INSERT INTO store_changes (origin, at, payload)
          SELECT 'other', 0, '{"type":"agent.revoked","id":"agt_' || i || '"}' FROM k`),
      );
      reader.feedCurrent();
      expect(heard).toEqual([{ type: 'resync' }]);
    });

    it('a store opened before the log existed (migrated later by another process)', async () => {
      const path = join(dir, `old-${n++}.db`);
      sqliteStoreAtVersion(path, 12).close(); // the version before the change log
      const old = await openSqliteStore({ path }); // not migrated: no log yet
      opened.push(old);
      const heard: StoreChange[] = [];
      old.subscribe((change) => heard.push(change));
      const current = await openSqliteStore({ path });
      opened.push(current);
      await current.migrate();
      await current.transaction((t) => t.notify({ type: 'agent.revoked', id: 'agt_1' }));
      old.feedCurrent();
      expect(heard).toEqual([{ type: 'resync' }]);
      // From then on it has a baseline and replays exactly.
      await current.transaction((t) => t.notify({ type: 'agent.revoked', id: 'agt_2' }));
      old.feedCurrent();
      expect(heard).toEqual([{ type: 'resync' }, { type: 'agent.revoked', id: 'agt_2' }]);
    });
  });

  it('prunes rows older than the keep window as it appends, and records how far', async () => {
    const { path, writer } = await pair();
    const raw = new Database(path);
    raw.exec(`WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 50)
      INSERT INTO store_changes (origin, at, payload) SELECT 'old', 1, '{"type":"resync"}' FROM k`);
    const before = (raw.prepare('SELECT MAX(seq) AS seq FROM store_changes').get() as { seq: number }).seq;
    // Pruning runs once every 256 appends.
    for (let i = 0; i < 256; i++) await writer.publish({ type: 'approval.changed', id: `apr_${i}` });
    const left = raw.prepare("SELECT COUNT(*) AS c FROM store_changes WHERE origin = 'old'").get() as {
      c: number;
    };
    const mark = raw.prepare("SELECT value FROM meta WHERE key = 'store_changes_pruned_through'").get() as {
      value: string;
    };
    raw.close();
    expect(left.c).toBe(0);
    expect(Number(mark.value)).toBe(before);
  });
});
