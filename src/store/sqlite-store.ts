import { EventEmitter } from 'node:events';
import { chmodSync, closeSync, existsSync, openSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { CoatcheckError } from '../core/errors.js';
import { SQLITE_MIGRATIONS } from './migrations.js';
import { Mutex } from './mutex.js';
import { AUDIT, nullableNumber, type Row, SQLITE_CODEC } from './schema.js';
import { operationNames, type SqlDialect, SqlOps, type SqlRunner } from './sql-ops.js';
import { SqliteChangeLog } from './sqlite-change-log.js';
import { BackgroundCheckpointer, WAL_KEEP_BYTES } from './sqlite-checkpointer.js';
import type { AuditRecord, Store, StoreChange, StoreOps, StoreTx, TransactionOptions } from './types.js';
import { flushFile, WalSync } from './wal-sync.js';

/** Map driver errors to stable codes: a damaged file is CORRUPT, unique violations are ALREADY_EXISTS. */
function translate(error: unknown): never {
  if (error instanceof CoatcheckError) throw error;
  const code = (error as { code?: string }).code ?? '';
  if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT' || code.startsWith('SQLITE_CORRUPT')) {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', 'the SQLite store file is damaged or not a database', {
      cause: error,
    });
  }
  if (code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
    throw new CoatcheckError('CC_ERR_ALREADY_EXISTS', 'a record with that name or id already exists', {
      cause: error,
    });
  }
  if (
    code === 'SQLITE_FULL' ||
    code === 'SQLITE_IOERR' ||
    code.startsWith('SQLITE_IOERR') ||
    code === 'SQLITE_READONLY' ||
    code === 'SQLITE_BUSY' ||
    code === 'SQLITE_CANTOPEN'
  ) {
    throw new CoatcheckError('CC_ERR_STORE_UNAVAILABLE', `the SQLite store cannot be written (${code})`, {
      cause: error,
    });
  }
  throw error;
}

const SQLITE_DIALECT: SqlDialect = {
  codec: SQLITE_CODEC,
  // One writer: no row locks, and text already sorts by bytes (BINARY collation).
  textOrder: '',
  lockToKill: '',
  lockToKillOrdered: '',
  lockToTake: '',
  lockToRead: '',
  jsonParam: '?',
  position: 'instr',
  idList(ids, params) {
    if (ids.length > 32) {
      // A long list as one JSON parameter (SQLite binds at most 32,766 parameters).
      params.push(JSON.stringify(ids));
      return 'IN (SELECT value FROM json_each(?))';
    }
    params.push(...ids);
    return `IN (${ids.map(() => '?').join(', ')})`;
  },
};

/**
 * Queries on one better-sqlite3 connection, prepared once per SQL text. `writes` counts the
 * statements run that may write (`UPDATE … RETURNING` through `all` included): a write
 * outside a transaction must wait for the WAL's flush.
 */
function sqliteRunner(db: Database.Database, inTransaction: boolean): SqlRunner & { writes: number } {
  /** Preparing costs more than most of our queries. */
  const statements = new Map<string, Database.Statement>();
  const prepare = (sql: string): Database.Statement => {
    let statement = statements.get(sql);
    if (statement === undefined) {
      statement = db.prepare(sql);
      // Queries are fixed strings plus placeholder lists; bound the cache all the same.
      if (statements.size > 500) statements.clear();
      statements.set(sql, statement);
    }
    return statement;
  };
  const runner: SqlRunner & { writes: number } = {
    inTransaction,
    writes: 0,
    async all(sql, params = []) {
      try {
        const statement = prepare(sql);
        if (!statement.readonly) runner.writes += 1;
        return statement.all(...params) as Row[];
      } catch (error) {
        translate(error);
      }
    },
    async run(sql, params = []) {
      try {
        const statement = prepare(sql);
        if (!statement.readonly) runner.writes += 1;
        return statement.run(...params).changes;
      } catch (error) {
        translate(error);
      }
    },
    // One writer, and every operation runs whole under the store's mutex (or inside the
    // transaction that holds it): nothing interleaves.
    atomically: (fn) => fn(runner),
  };
  return runner;
}

class SqliteOps extends SqlOps {
  /** Its runner, whose `writes` counts the statements run that may have written (an instance field: not an operation). */
  readonly counted: { readonly writes: number };
  constructor(
    protected readonly sqlite: Database.Database,
    inTransaction = false,
  ) {
    const runner = sqliteRunner(sqlite, inTransaction);
    super(runner, SQLITE_DIALECT);
    this.counted = runner;
  }

  async allocateAuditSeqs(count: number) {
    // One writer (BEGIN IMMEDIATE): the positions after the last record are free.
    const row = (await this.db.all('SELECT MAX(seq) AS seq FROM audit'))[0];
    const last = nullableNumber(row?.seq) ?? 0;
    return Array.from({ length: Math.max(0, count) }, (_, i) => last + i + 1);
  }
  async insertAuditRecords(records: readonly AuditRecord[]) {
    for (const record of records) await this.insert(AUDIT, record);
  }

  /** Statements that are not operations (savepoints): run as they are. */
  protected exec(sql: string): void {
    try {
      this.sqlite.exec(sql);
    } catch (error) {
      translate(error);
    }
  }
}

class SqliteTx extends SqliteOps implements StoreTx {
  #depth = 0;
  readonly #changeLog: SqliteChangeLog;
  constructor(db: Database.Database, changeLog: SqliteChangeLog) {
    super(db, true);
    this.#changeLog = changeLog;
  }
  /** Changes to publish once the transaction commits (dropped on rollback). */
  pending: StoreChange[] = [];
  async notify(change: StoreChange) {
    // In the change log within this transaction (other processes read it once committed;
    // a savepoint's rollback takes the row with it), and to local listeners after COMMIT.
    this.#changeLog.append(change);
    this.pending.push(change);
  }
  async savepoint<T>(fn: () => Promise<T>): Promise<T> {
    const name = `sp${++this.#depth}`;
    this.exec(`SAVEPOINT ${name}`);
    const noticesBefore = this.pending.length;
    try {
      const result = await fn();
      this.exec(`RELEASE ${name}`);
      return result;
    } catch (error) {
      this.exec(`ROLLBACK TO ${name}`);
      this.exec(`RELEASE ${name}`);
      this.pending.length = noticesBefore; // the savepoint's notices are undone with it
      throw error;
    } finally {
      this.#depth--;
    }
  }
}

type LockedOps = { [K in keyof StoreOps]: StoreOps[K] };

/**
 * Every operation under the mutex. One that wrote (outside a transaction, so it committed on
 * its own) resolves only once that write is on disk, as a transaction does.
 */
function lockOps(ops: SqliteOps, mutex: Mutex, durable: () => Promise<void>): LockedOps {
  const out: Record<string, unknown> = {};
  for (const name of operationNames(ops)) {
    const method = (ops as unknown as Record<string, unknown>)[name];
    if (typeof method !== 'function') continue;
    out[name] = async (...args: unknown[]) => {
      let wrote = false;
      const result = await mutex.run(async () => {
        const before = ops.counted.writes;
        try {
          return await (method as (...a: unknown[]) => unknown).apply(ops, args);
        } finally {
          wrote = ops.counted.writes !== before;
        }
      });
      if (wrote) await durable();
      return result;
    };
  }
  return out as unknown as LockedOps;
}

export interface SqliteStoreOptions {
  /** File path, or ':memory:' for tests. */
  readonly path: string;
}

/**
 * Embedded default store: one SQLite file in WAL mode whose commits are durable before they
 * are reported (the WAL flushed off the event loop, ADR 0032), so a committed audit batch
 * survives a crash. One connection; a mutex keeps async transactions from interleaving on it.
 */
/** How long a statement waits for another process's lock before CC_ERR_STORE_UNAVAILABLE. */
const BUSY_TIMEOUT_MS = 5000;
/** How often a foreign commit is looked for when nothing asks (a PRAGMA read, microseconds). */
const DATA_VERSION_POLL_MS = 100;
/**
 * A cache hit looks for a foreign commit at most once per window (ADR 0033): the PRAGMA
 * read takes a WAL read lock, 3-20 µs, and a request hits several caches. Sound because
 * every commit that carries a change notice is reported done only CHANGE_SETTLE_MS after
 * its COMMIT, longer than the window: whatever starts after a revocation returned looks
 * again after that revocation committed.
 */
export const FOREIGN_CHECK_WINDOW_MS = 1;
export const CHANGE_SETTLE_MS = 2;

/** Resolves once CHANGE_SETTLE_MS have passed since `committedAt` (performance.now()). */
async function settledSince(committedAt: number): Promise<void> {
  // A timer can fire a little before its delay by this clock (libuv's loop time is read
  // at the start of the turn), so the clock is read again after each wait.
  for (;;) {
    const left = committedAt + CHANGE_SETTLE_MS - performance.now();
    if (left <= 0) return;
    await new Promise((resolve) => setTimeout(resolve, Math.ceil(left)));
  }
}

/**
 * The addon's path, given to better-sqlite3 directly: its default lookup (the `bindings`
 * package) tries a dozen paths and reads a stack trace to find them, a measurable part of a
 * short command's start. Falls back to that lookup when the file is elsewhere (another build).
 */
let nativeBinding: string | undefined;
export function sqliteAddon(): { nativeBinding?: string } {
  if (nativeBinding === undefined) {
    try {
      const main = createRequire(import.meta.url).resolve('better-sqlite3');
      const candidate = join(dirname(main), '..', 'build', 'Release', 'better_sqlite3.node');
      nativeBinding = existsSync(candidate) ? candidate : '';
    } catch {
      nativeBinding = '';
    }
  }
  return nativeBinding === '' ? {} : { nativeBinding };
}

export async function openSqliteStore(options: SqliteStoreOptions): Promise<Store> {
  let db: Database.Database;
  try {
    if (options.path !== ':memory:' && !existsSync(options.path)) {
      // Owner-only from the first byte; SQLite gives the -wal and -shm files the same mode.
      closeSync(openSync(options.path, 'a', 0o600));
    }
    db = new Database(options.path, sqliteAddon());
    db.pragma('journal_mode = WAL');
    // COMMIT writes the WAL without flushing it; WalSync flushes it on the thread pool and
    // every write resolves only after that (ADR 0032): FULL's guarantee, off the event loop.
    db.pragma(`synchronous = ${options.path === ':memory:' ? 'FULL' : 'NORMAL'}`);
    db.pragma('foreign_keys = ON');
    // Overwrite deleted content, so an erased secret's sealed key does not linger in free pages.
    db.pragma('secure_delete = ON');
    db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
    // A WAL that a burst (or a long reader) grew past this is cut back when it starts over.
    db.pragma(`journal_size_limit = ${WAL_KEEP_BYTES}`);
  } catch (error) {
    translate(error);
  }
  const mutex = new Mutex();
  const changeLog = new SqliteChangeLog(db, options.path, sqliteAddon());
  try {
    changeLog.start();
  } catch (error) {
    translate(error);
  }
  const tx = new SqliteTx(db, changeLog);
  const events = new EventEmitter();
  // One listener per long-lived component (caches, registries, one per front-end's session
  // registry): a server with every front-end has more than Node's default 10. A per-request
  // subscription would still pass this bound within one burst and be reported.
  events.setMaxListeners(64);
  const walSync = options.path === ':memory:' ? null : new WalSync(options.path);
  const checkpointer =
    options.path === ':memory:' ? null : new BackgroundCheckpointer(db, options.path, sqliteAddon());
  const durable = (): Promise<void> => {
    checkpointer?.noteWrite();
    return walSync?.sync() ?? Promise.resolve();
  };
  const snapshotOps = new SqliteOps(db);
  const ops = lockOps(snapshotOps, mutex, durable);

  // Another process (another `serve --workers` process, the CLI writing to the store
  // directly) commits without telling this one: SQLite's data_version changes exactly when
  // another connection committed. Its changes are then read from the change log and heard
  // as if local; what cannot be read exactly makes every cache drop what it holds (resync).
  // Prepared once: it runs on every cache hit, and db.pragma() prepares anew each call
  // (about 70 µs a request on the HTTP path, against about 1 µs prepared).
  const dataVersionStatement = db.prepare('PRAGMA data_version').pluck();
  let dataVersion = dataVersionStatement.get() as number;
  /** When the last look began (performance.now()): it saw every commit before that. */
  let lookedAt = Number.NEGATIVE_INFINITY;
  const checkForeignCommit = () => {
    if (!db.open) return;
    lookedAt = performance.now();
    const now = dataVersionStatement.get() as number;
    if (now === dataVersion) return;
    dataVersion = now;
    let changes: StoreChange[] | 'resync';
    try {
      changes = changeLog.readForeign();
    } catch {
      changes = 'resync'; // the log could not be read: assume anything changed
    }
    if (changes === 'resync') events.emit('change', { type: 'resync' } satisfies StoreChange);
    else for (const change of changes) events.emit('change', change);
  };
  const watcher = setInterval(checkForeignCommit, DATA_VERSION_POLL_MS);
  watcher.unref();

  // Take the write lock without blocking the event loop: another process holding it (a
  // `serve --workers` sibling committing its audit batch, the CLI) would otherwise hold this
  // whole process in SQLite's busy handler, which sleeps (1, 2, 5, 10 ms ...) on the thread
  // that serves every request. Here the attempt fails at once and is retried, first after
  // the work already queued (twice), then every 1-2 ms (a timer, not a spin: on few cores a
  // spin would take the CPU from the process holding the lock), for as long as busy_timeout
  // (5 s) would have waited.
  // SQLite applies `PRAGMA busy_timeout` when the statement is prepared, not when it runs:
  // each change is a prepare (about 7 µs).
  const setBusyTimeout = (ms: number) => db.prepare(`PRAGMA busy_timeout = ${ms}`);
  const begin = db.prepare('BEGIN IMMEDIATE');
  const beginImmediate = async (): Promise<void> => {
    const deadline = Date.now() + BUSY_TIMEOUT_MS;
    for (let attempt = 0; ; attempt++) {
      setBusyTimeout(0);
      try {
        begin.run();
        return;
      } catch (error) {
        const code = (error as { code?: string }).code ?? '';
        if (!code.startsWith('SQLITE_BUSY') || Date.now() >= deadline) translate(error);
      } finally {
        setBusyTimeout(BUSY_TIMEOUT_MS);
      }
      await new Promise<void>((resolve) =>
        attempt < 2 ? setImmediate(resolve) : setTimeout(resolve, attempt < 6 ? 1 : 2),
      );
    }
  };

  /** When the running transaction's COMMIT returned, if it carried a change notice (performance.now()). */
  let changeCommittedAt = Number.NEGATIVE_INFINITY;
  /** One transaction, under the mutex. */
  const inTransaction = async <T>(fn: (t: StoreTx) => Promise<T>): Promise<T> => {
    changeCommittedAt = Number.NEGATIVE_INFINITY;
    await beginImmediate();
    tx.pending = [];
    try {
      const result = await fn(tx);
      db.exec('COMMIT');
      const notices = tx.pending;
      tx.pending = [];
      if (notices.length > 0) changeCommittedAt = performance.now();
      for (const change of notices) events.emit('change', change);
      return result;
    } catch (error) {
      tx.pending = [];
      if (db.inTransaction) db.exec('ROLLBACK');
      if (error instanceof CoatcheckError) throw error;
      translate(error);
    }
  };

  const store: Store = {
    ...ops,
    driver: 'sqlite',
    location: options.path,
    async migrate() {
      await mutex.run(() => {
        try {
          db.exec(
            'CREATE TABLE IF NOT EXISTS coatcheck_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)',
          );
          const row = db.prepare('SELECT MAX(version) AS v FROM coatcheck_migrations').get() as {
            v: number | null;
          };
          const current = row.v ?? 0;
          const latest = SQLITE_MIGRATIONS.at(-1)?.version ?? 0;
          if (current > latest) {
            throw new CoatcheckError(
              'CC_ERR_STORE_SCHEMA_NEWER',
              `store schema version ${current} is newer than this coatcheck (${latest})`,
            );
          }
          for (const migration of SQLITE_MIGRATIONS) {
            if (migration.version <= current) continue;
            db.transaction(() => {
              db.exec(migration.sql);
              db.prepare('INSERT INTO coatcheck_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(
                migration.version,
                migration.name,
                Date.now(),
              );
            }).immediate();
          }
          changeLog.start();
        } catch (error) {
          translate(error);
        }
      });
      await durable();
    },
    // One writer: the lock option changes nothing here.
    async transaction<T>(fn: (t: StoreTx) => Promise<T>, _options?: TransactionOptions): Promise<T> {
      let committedAt = Number.NEGATIVE_INFINITY;
      const result = await mutex.run(async () => {
        const value = await inTransaction(fn);
        committedAt = changeCommittedAt;
        return value;
      });
      // Outside the mutex: the next transaction runs while this one's WAL frames are flushed
      // (and, for a change, while other processes' look-ups window passes: ADR 0033).
      if (committedAt === Number.NEGATIVE_INFINITY) await durable();
      else await Promise.all([durable(), settledSince(committedAt)]);
      return result;
    },
    async readSnapshot<T>(fn: (ops: StoreOps) => Promise<T>): Promise<T> {
      if (options.path === ':memory:') {
        // No second connection can see this database: read under the mutex instead.
        return mutex.run(async () => {
          db.exec('BEGIN');
          try {
            return await fn(snapshotOps);
          } finally {
            if (db.inTransaction) db.exec('COMMIT');
          }
        });
      }
      // A read-only connection of its own in a deferred read transaction: one WAL snapshot
      // for every read, while this connection (and other processes) keep writing.
      let reader: Database.Database;
      try {
        reader = new Database(options.path, { readonly: true, fileMustExist: true, ...sqliteAddon() });
        reader.pragma('busy_timeout = 5000');
        reader.exec('BEGIN');
      } catch (error) {
        translate(error);
      }
      try {
        return await fn(new SqliteOps(reader));
      } finally {
        if (reader.inTransaction) reader.exec('COMMIT');
        reader.close();
      }
    },
    backupTo(path: string) {
      // Under the mutex no transaction interleaves, so the head read here is the copy's
      // head. VACUUM INTO reads one snapshot (WAL included) and fails if `path` exists.
      // The copy holds only what is durable here (the last commits are flushed first), and
      // is itself flushed before it is reported written.
      return mutex.run(async () => {
        await durable();
        try {
          const row = db.prepare("SELECT value FROM meta WHERE key = 'audit_head'").get() as
            | { value: string }
            | undefined;
          db.prepare('VACUUM INTO ?').run(path);
          chmodSync(path, 0o600);
          await flushFile(path);
          if (row === undefined) return { auditHead: null };
          const [seq, hash] = row.value.split(':');
          return { auditHead: { seq: Number(seq), hash: hash ?? '' } };
        } catch (error) {
          translate(error);
        }
      });
    },
    async publish(change: StoreChange) {
      // A change made outside a transaction: into the change log on its own (other
      // processes), then to local listeners.
      const committedAt = await mutex.run(() => {
        try {
          db.transaction(() => changeLog.append(change)).immediate();
          return performance.now();
        } catch (error) {
          translate(error);
        }
      });
      events.emit('change', change);
      await Promise.all([durable(), settledSince(committedAt)]);
    },
    feedCurrent() {
      // A cache hit first looks for a foreign commit (the CLI revoking directly): one
      // prepared PRAGMA read, so a revocation by another process is never served from cache
      // once it returned. At most once per window: a look begun within the window saw every
      // change reported done before this call (they wait CHANGE_SETTLE_MS, ADR 0033).
      if (performance.now() - lookedAt >= FOREIGN_CHECK_WINDOW_MS) checkForeignCommit();
      return true;
    },
    subscribe(listener) {
      events.on('change', listener);
      return () => events.off('change', listener);
    },
    async close() {
      clearInterval(watcher);
      await checkpointer?.close();
      await mutex.run(() => {
        changeLog.close();
        db.close();
        walSync?.close();
      });
    },
  };
  return store;
}
