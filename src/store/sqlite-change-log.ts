import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import { parseChange } from './change-codec.js';
import type { StoreChange } from './types.js';

/** Rows older than this are pruned; a process that has not read them by then resyncs. */
export const CHANGE_LOG_KEEP_MS = 10 * 60_000;
/** Prune once every this many appended changes (in the appending transaction). */
const PRUNE_EVERY = 256;
/** A reader further behind than this drops every cache instead of replaying. */
const READ_LIMIT = 10_000;
const PRUNED_KEY = 'store_changes_pruned_through';

/**
 * The SQLite store's change log (ADR 0031): what PostgreSQL replicas hear through
 * LISTEN/NOTIFY, kept in a table for the other processes on the same file. Each
 * transaction appends its notices in the transaction itself, so a change is in the log
 * exactly when it committed. Another process, told by `PRAGMA data_version` that something
 * committed, reads the rows after the last one it saw through a read-only connection of
 * its own (committed rows only, one snapshot) and skips its own. A commit that wrote no
 * notice (an audit record, a session row, a ticket issued) costs it one indexed read and
 * no cache drop.
 *
 * Fail closed: rows pruned before this process read them, a backlog over the read bound,
 * a row that does not parse, or no log (a store not yet migrated) all read as `resync`.
 */
export class SqliteChangeLog {
  readonly #db: Database.Database;
  readonly #path: string;
  readonly #addon: Database.Options;
  readonly #origin = randomBytes(12).toString('base64url');
  readonly #now: () => number;
  #insert: Database.Statement | null = null;
  #reader: Database.Database | null = null;
  #readRows: Database.Statement | null = null;
  #readPruned: Database.Statement | null = null;
  /** The last row this process has accounted for; null until a baseline was taken. */
  #lastSeq: number | null = null;
  #appends = 0;

  constructor(db: Database.Database, path: string, addon: Database.Options, now: () => number = Date.now) {
    this.#db = db;
    this.#path = path;
    this.#addon = addon;
    this.#now = now;
  }

  /** Whether the store has a change log yet (migration 13). */
  #hasTable(db: Database.Database): boolean {
    return (
      db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_changes'").get() !==
      undefined
    );
  }

  /**
   * Take the baseline: changes committed from now on are replayed. Called when the store
   * opens and after migrations (before any cache fills).
   */
  start(): void {
    if (this.#path === ':memory:' || this.#lastSeq !== null || !this.#hasTable(this.#db)) return;
    const row = this.#db.prepare('SELECT COALESCE(MAX(seq), 0) AS seq FROM store_changes').get() as {
      seq: number;
    };
    this.#lastSeq = row.seq;
  }

  /** Inside the writer's open transaction: the change commits or rolls back with it. */
  append(change: StoreChange): void {
    if (this.#path === ':memory:') return;
    if (this.#insert === null) {
      if (!this.#hasTable(this.#db)) return; // not migrated: every foreign commit reads as resync
      this.#insert = this.#db.prepare('INSERT INTO store_changes (origin, at, payload) VALUES (?, ?, ?)');
    }
    this.#insert.run(this.#origin, this.#now(), JSON.stringify(change));
    if (++this.#appends % PRUNE_EVERY === 0) this.#prune();
  }

  #prune(): void {
    const cut = this.#now() - CHANGE_LOG_KEEP_MS;
    const row = this.#db.prepare('SELECT MAX(seq) AS seq FROM store_changes WHERE at < ?').get(cut) as {
      seq: number | null;
    };
    if (row.seq === null) return;
    this.#db.prepare('DELETE FROM store_changes WHERE seq <= ?').run(row.seq);
    this.#db
      .prepare(
        'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
      )
      .run(PRUNED_KEY, String(row.seq));
  }

  /**
   * What other processes committed since the last read, in commit order, or `resync`
   * when that cannot be known exactly. Call when `data_version` moved.
   */
  readForeign(): StoreChange[] | 'resync' {
    if (this.#path === ':memory:') return 'resync';
    const reader = this.#openReader();
    if (reader === null) return 'resync';
    if (this.#lastSeq === null) {
      // No baseline (the log appeared after this process opened the store): take one now
      // and drop every cache for what came before it.
      this.#lastSeq = (
        reader.prepare('SELECT COALESCE(MAX(seq), 0) AS seq FROM store_changes').get() as {
          seq: number;
        }
      ).seq;
      return 'resync';
    }
    const since = this.#lastSeq;
    let rows: Array<{ seq: number; origin: string; payload: string }>;
    let prunedThrough: number;
    reader.exec('BEGIN');
    try {
      rows = this.#readRows!.all(since, READ_LIMIT + 1) as typeof rows;
      const pruned = this.#readPruned!.get(PRUNED_KEY) as { value: string } | undefined;
      prunedThrough = pruned === undefined ? 0 : Number(pruned.value);
    } finally {
      reader.exec('COMMIT');
    }
    const last = rows.at(-1)?.seq;
    if (prunedThrough > since || rows.length > READ_LIMIT || !Number.isSafeInteger(prunedThrough)) {
      // Rows this process never read were pruned, or the backlog is too long to replay.
      this.#lastSeq = Math.max(last ?? since, prunedThrough);
      return 'resync';
    }
    const changes: StoreChange[] = [];
    let damaged = false;
    for (const row of rows) {
      if (row.origin === this.#origin) continue; // heard locally when it committed
      const change = parseChange(row.payload);
      if (change === null) damaged = true;
      else changes.push(change);
    }
    if (last !== undefined) this.#lastSeq = last;
    return damaged ? 'resync' : changes;
  }

  #openReader(): Database.Database | null {
    if (this.#reader !== null) return this.#reader;
    if (!this.#hasTable(this.#db)) return null;
    // Its own read-only connection: it sees committed rows only, never the rows of a
    // transaction this process has open (which may still roll back).
    const reader = new Database(this.#path, { readonly: true, fileMustExist: true, ...this.#addon });
    reader.pragma('busy_timeout = 5000');
    this.#readRows = reader.prepare(
      'SELECT seq, origin, payload FROM store_changes WHERE seq > ? ORDER BY seq LIMIT ?',
    );
    this.#readPruned = reader.prepare('SELECT value FROM meta WHERE key = ?');
    this.#reader = reader;
    return reader;
  }

  close(): void {
    this.#reader?.close();
    this.#reader = null;
  }
}
