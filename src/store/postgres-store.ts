import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Client, escapeIdentifier, Pool, type PoolClient, type QueryResultRow } from 'pg';
import { CoatcheckError } from '../core/errors.js';
import { parseChange } from './change-codec.js';
import { POSTGRES_MIGRATIONS } from './migrations.js';
import { Mutex } from './mutex.js';
import { AUDIT, nullableNumber, POSTGRES_CODEC } from './schema.js';
import { operationNames, type SqlDialect, SqlOps, type SqlRunner } from './sql-ops.js';
import type { AuditRecord, Store, StoreChange, StoreOps, StoreTx, TransactionOptions } from './types.js';

type Row = QueryResultRow;

/**
 * Advisory lock keys (two-int form: a coatcheck namespace and a purpose). Advisory locks
 * are scoped to the database, so stores in different databases never contend.
 */
const LOCK_NAMESPACE = 0x636f6174; // 'coat'
const LOCK_MIGRATIONS = 1;
const LOCK_TRANSACTIONS = 2;
const LOCK_AUDIT = 3;

/** PostgreSQL rejects NOTIFY payloads of 8000 bytes or more; stay a little below. */
const MAX_PAYLOAD_BYTES = 7900;
const DEFAULT_CHANNEL = 'coatcheck_changes';
const RECONNECT_MIN_MS = 100;
const HEARTBEAT_MS = 250;
const STALE_AFTER_MS = 1000;
/** A feed stale for this many `staleAfterMs` gets a new LISTEN connection. */
const RECONNECT_AFTER_STALE = 3;
const RECONNECT_MAX_MS = 5000;

// ---------------------------------------------------------------------------------------
// Credentials and errors.

/** The URL without its password (user info and `password` query parameters). */
function redactUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // Never echo the input: it may carry a password.
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', 'the PostgreSQL URL is not a valid URL', {
      details: { field: 'url' },
    });
  }
  if (parsed.password !== '') parsed.password = '';
  for (const key of [...parsed.searchParams.keys()]) {
    if (key.toLowerCase().includes('password')) parsed.searchParams.set(key, 'redacted');
  }
  return parsed.toString();
}

/** Every form the password could take in a driver message (raw and URL-encoded). */
function passwordForms(url: string): string[] {
  const forms = new Set<string>();
  try {
    const parsed = new URL(url);
    const candidates = [parsed.password];
    for (const [key, value] of parsed.searchParams) {
      if (key.toLowerCase().includes('password')) candidates.push(value);
    }
    for (const candidate of candidates) {
      if (candidate === '') continue;
      forms.add(candidate);
      try {
        forms.add(decodeURIComponent(candidate));
      } catch {
        // keep the raw form only
      }
      forms.add(encodeURIComponent(candidate));
    }
  } catch {
    // redactUrl already refused an invalid URL
  }
  return [...forms].sort((a, b) => b.length - a.length);
}

const CONNECTION_ERRNOS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EPIPE',
  'ENOENT', // unix socket path missing
]);

/** SQLSTATEs meaning "the database cannot serve us", as opposed to "the statement is wrong". */
function isUnavailableSqlState(code: string): boolean {
  return (
    code.startsWith('08') || // connection exception
    code === '57P01' || // admin_shutdown
    code === '57P02' || // crash_shutdown
    code === '57P03' || // cannot_connect_now
    code === '53300' || // too_many_connections
    code === '53100' || // disk_full
    code === '3D000' || // invalid_catalog_name: the database does not exist
    code === '28000' || // invalid_authorization_specification
    code === '28P01' || // invalid_password
    code === '25006' // read_only_sql_transaction (a standby)
  );
}

/** pg raises these without a code when a connection dies or cannot be made in time. */
const CONNECTION_MESSAGES = [
  'Connection terminated',
  'timeout exceeded when trying to connect',
  'Client has encountered a connection error',
  'Cannot use a pool after calling end',
];

interface ErrorContext {
  readonly location: string;
  readonly secrets: readonly string[];
}

function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const secret of secrets) out = out.split(secret).join('***');
  return out;
}

/**
 * Map driver errors to stable codes: unique violations are ALREADY_EXISTS, a database that
 * cannot be reached is UNAVAILABLE (with a cause scrubbed of the password); the rest is
 * rethrown unchanged.
 */
function translate(error: unknown, context: ErrorContext): never {
  if (error instanceof CoatcheckError) throw error;
  const code = String((error as { code?: unknown } | null)?.code ?? '');
  const message = error instanceof Error ? error.message : String(error);
  if (code === '23505') {
    throw new CoatcheckError('CC_ERR_ALREADY_EXISTS', 'a record with that name or id already exists', {
      cause: error,
      details: { constraint: (error as { constraint?: unknown }).constraint },
    });
  }
  if (
    CONNECTION_ERRNOS.has(code) ||
    isUnavailableSqlState(code) ||
    CONNECTION_MESSAGES.some((m) => message.includes(m))
  ) {
    const cause = new Error(scrub(message, context.secrets));
    if (code !== '') Object.assign(cause, { code });
    throw new CoatcheckError(
      'CC_ERR_STORE_UNAVAILABLE',
      `the PostgreSQL store at ${context.location} is unavailable (${code || 'connection lost'})`,
      { cause, details: { location: context.location, ...(code === '' ? {} : { driverCode: code }) } },
    );
  }
  throw error;
}

// ---------------------------------------------------------------------------------------
// Change notifications.

const byteLength = (text: string) => Buffer.byteLength(text, 'utf8');

/**
 * Payloads for one change, each under the NOTIFY limit. A long revoked-id list is split;
 * a change that cannot fit even alone degrades to `resync` (drop every cache), which is
 * always safe.
 */
export function encodeChange(change: StoreChange): string[] {
  const whole = JSON.stringify(change);
  if (byteLength(whole) <= MAX_PAYLOAD_BYTES) return [whole];
  if (change.type !== 'ticket.revoked') return [JSON.stringify({ type: 'resync' })];
  const overhead = byteLength(JSON.stringify({ type: 'ticket.revoked', ids: [] }));
  const payloads: string[] = [];
  let chunk: string[] = [];
  let size = overhead;
  for (const id of change.ids) {
    const cost = byteLength(JSON.stringify(id)) + 1; // the comma
    if (overhead + cost > MAX_PAYLOAD_BYTES) return [JSON.stringify({ type: 'resync' })];
    if (size + cost > MAX_PAYLOAD_BYTES) {
      payloads.push(JSON.stringify({ type: 'ticket.revoked', ids: chunk }));
      chunk = [];
      size = overhead;
    }
    chunk.push(id);
    size += cost;
  }
  if (chunk.length > 0) payloads.push(JSON.stringify({ type: 'ticket.revoked', ids: chunk }));
  return payloads;
}

// ---------------------------------------------------------------------------------------
// Operations.

interface Runner {
  query(sql: string, params?: readonly unknown[]): Promise<Row[]>;
  /** Row count of a write. */
  execute(sql: string, params?: readonly unknown[]): Promise<number>;
  /** Run `fn` atomically: a fresh transaction on the pool, the current one inside a transaction. */
  atomically<T>(fn: (runner: Runner) => Promise<T>): Promise<T>;
  readonly inTransaction: boolean;
}

const POSTGRES_DIALECT: SqlDialect = {
  codec: POSTGRES_CODEC,
  textOrder: ' COLLATE "C"', // byte order, as SQLite's BINARY collation
  lockToKill: ' FOR UPDATE',
  lockToKillOrdered: ' ORDER BY id FOR UPDATE',
  // FOR NO KEY UPDATE, not FOR UPDATE: takers exclude each other but not the FOR KEY SHARE
  // lock an exchange's `deadAmong` holds on the same row (no lock upgrade deadlock).
  lockToTake: ' ORDER BY id COLLATE "C" FOR NO KEY UPDATE',
  lockToRead: ' ORDER BY id COLLATE "C" FOR KEY SHARE',
  jsonParam: '?::jsonb',
  position: 'strpos',
  idList(ids, params) {
    params.push([...ids]);
    return '= ANY(?::text[])';
  },
};

/** Numbered placeholders for the shared queries' `?` (none of them has a `?` in a literal). */
const numbered = new Map<string, string>();
function numberPlaceholders(sql: string): string {
  let out = numbered.get(sql);
  if (out === undefined) {
    let n = 0;
    out = sql.replace(/\?/g, () => `$${++n}`);
    // Queries are fixed texts plus id lists passed as one array; bound the cache all the same.
    if (numbered.size > 500) numbered.clear();
    numbered.set(sql, out);
  }
  return out;
}

function sqlRunner(db: Runner): SqlRunner {
  return {
    inTransaction: db.inTransaction,
    all: (sql, params) => db.query(numberPlaceholders(sql), params),
    run: (sql, params) => db.execute(numberPlaceholders(sql), params),
    atomically: (fn) => db.atomically((inner) => fn(sqlRunner(inner))),
  };
}

class PgOps extends SqlOps {
  constructor(protected readonly pg: Runner) {
    super(sqlRunner(pg), POSTGRES_DIALECT);
  }

  override async auditHead() {
    if (this.pg.inTransaction) {
      // The audit chain has one writer at a time across every replica: callers read the
      // head and append inside one transaction, so the head read takes a transaction-level
      // advisory lock first. A second replica's auditHead() blocks here until the first
      // commits or rolls back, and then reads the head the first one wrote. (Every
      // transaction of this adapter already holds LOCK_TRANSACTIONS, which serialises them
      // too; this lock keeps the audit guarantee explicit and independent of that. Taken
      // inside a savepoint that is rolled back, PostgreSQL releases it with the savepoint.)
      await this.pg.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, LOCK_AUDIT]);
    }
    return super.auditHead();
  }
  override async auditChainHead(chain: string) {
    if (this.pg.inTransaction && chain === '') {
      // The main chain has one writer at a time across replicas (as auditHead above).
      await this.pg.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, LOCK_AUDIT]);
    }
    return super.auditChainHead(chain);
  }
  async allocateAuditSeqs(count: number) {
    if (count <= 0) return [];
    const rows = await this.pg.query(
      "SELECT nextval('audit_seq') AS seq FROM generate_series(1, $1::int) ORDER BY 1",
      [count],
    );
    return rows.map((row) => Number(row.seq));
  }
  async insertAuditRecords(records: readonly AuditRecord[]) {
    if (records.length === 0) return;
    // One statement, so a batch is atomic even outside a transaction. `data` is stored as
    // the exact JSON text (key order matters to the hash chain).
    const columns = records.map((r) => AUDIT.values(r));
    await this.pg.execute(
      `INSERT INTO audit (${AUDIT.columns.map(([name]) => name).join(', ')})
       SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[])`,
      AUDIT.columns.map((_, i) => columns.map((values) => values[i])),
    );
  }
}

class PgTx extends PgOps implements StoreTx {
  #depth = 0;
  constructor(
    db: Runner,
    readonly channel: string,
  ) {
    super(db);
  }
  async notify(change: StoreChange) {
    // Delivered at COMMIT, never on rollback (PostgreSQL also drops the notifications of a
    // rolled-back savepoint): a change and its notice commit together.
    await this.pg.query('SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload', [
      this.channel,
      encodeChange(change),
    ]);
  }
  async savepoint<T>(fn: () => Promise<T>): Promise<T> {
    const name = `sp${++this.#depth}`;
    try {
      await this.pg.execute(`SAVEPOINT ${name}`);
      let result: T;
      try {
        result = await fn();
      } catch (error) {
        await this.pg.execute(`ROLLBACK TO SAVEPOINT ${name}`);
        await this.pg.execute(`RELEASE SAVEPOINT ${name}`);
        throw error;
      }
      await this.pg.execute(`RELEASE SAVEPOINT ${name}`);
      return result;
    } finally {
      this.#depth--;
    }
  }
}

// ---------------------------------------------------------------------------------------
// The store.

export interface PostgresStoreOptions {
  /** `postgres://user:password@host:port/database?…` */
  readonly url: string;
  /** Pool size (default 10). */
  readonly poolSize?: number;
  /** NOTIFY/LISTEN channel for change events (default `coatcheck_changes`). */
  readonly channel?: string;
  /** How often the LISTEN connection notifies itself to prove it delivers (default 250 ms). */
  readonly heartbeatMs?: number;
  /**
   * A feed whose last heartbeat was heard longer ago than this is stale (default 1000 ms):
   * caches stop serving, and the LISTEN connection is replaced.
   */
  readonly staleAfterMs?: number;
}

const noop = () => {};

/**
 * Store for several replicas sharing one PostgreSQL database.
 *
 * Top-level operations run on a pool. `transaction(fn)` checks out one client and runs
 * `fn` between BEGIN and COMMIT/ROLLBACK. Transactions have the same semantics as the
 * SQLite adapter's BEGIN IMMEDIATE: one at a time, here across every replica, enforced by
 * a transaction-level advisory lock taken right after BEGIN (and, within one process, a
 * mutex, so waiting transactions do not hold pool clients that top-level ops need). Without
 * it, READ COMMITTED read-modify-write transactions (meta counters, narrowing a ticket
 * while its parent is revoked) would lose updates.
 *
 * Unlike SQLite, a failed statement aborts the whole PostgreSQL transaction: to continue
 * after an expected failure (such as CC_ERR_ALREADY_EXISTS) inside a transaction, wrap the
 * statement in `tx.savepoint`.
 *
 * Changes are published with NOTIFY and heard by a dedicated LISTEN connection (started
 * on the first subscribe). If it drops, it reconnects with backoff and emits `resync`,
 * since notifications sent meanwhile are lost.
 */
export async function openPostgresStore(options: PostgresStoreOptions): Promise<Store> {
  const location = redactUrl(options.url);
  const context: ErrorContext = { location, secrets: passwordForms(options.url) };
  const channel = options.channel ?? DEFAULT_CHANNEL;
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(channel)) {
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      'the change channel must be a lower-case SQL identifier (letters, digits, _; at most 63)',
      { details: { field: 'channel' } },
    );
  }
  const poolSize = options.poolSize ?? 10;
  if (!Number.isInteger(poolSize) || poolSize < 1) {
    throw new CoatcheckError('CC_ERR_INVALID_ARGUMENT', 'poolSize must be a positive integer', {
      details: { field: 'poolSize' },
    });
  }
  function fail(error: unknown): never {
    translate(error, context);
  }

  const pool = new Pool({
    connectionString: options.url,
    max: poolSize,
    connectionTimeoutMillis: 10_000,
    application_name: 'coatcheck',
    keepAlive: true,
  });
  // An idle client whose connection dies emits 'error' on the pool; without a listener
  // Node would crash. The pool discards that client; the next checkout connects anew.
  pool.on('error', noop);

  /** Check out a client; errors on it while checked out surface through its queries. */
  async function checkout(): Promise<PoolClient> {
    let client: PoolClient;
    try {
      client = await pool.connect();
    } catch (error) {
      fail(error);
    }
    client.on('error', noop);
    return client;
  }
  function giveBack(client: PoolClient, broken: boolean): void {
    client.off('error', noop);
    client.release(broken ? true : undefined);
  }

  function clientRunner(client: PoolClient): Runner {
    const runner: Runner = {
      inTransaction: true,
      async query(sql, params) {
        try {
          return (await client.query(sql, params as unknown[] | undefined)).rows;
        } catch (error) {
          fail(error);
        }
      },
      async execute(sql, params) {
        try {
          return (await client.query(sql, params as unknown[] | undefined)).rowCount ?? 0;
        } catch (error) {
          fail(error);
        }
      },
      atomically: (fn) => fn(runner),
    };
    return runner;
  }

  /** BEGIN … COMMIT on one pool client; ROLLBACK (or discard the client) on failure. */
  async function inTransaction<T>(
    fn: (client: PoolClient) => Promise<T>,
    lock?: readonly [number, number],
    begin = 'BEGIN',
  ): Promise<T> {
    const client = await checkout();
    let broken = false;
    try {
      try {
        await client.query(begin);
        if (lock) await client.query('SELECT pg_advisory_xact_lock($1, $2)', [...lock]);
      } catch (error) {
        broken = true;
        fail(error);
      }
      let result: T;
      try {
        result = await fn(client);
      } catch (error) {
        try {
          await client.query('ROLLBACK');
        } catch {
          broken = true; // the connection is gone or confused: never reuse it
        }
        throw error;
      }
      try {
        await client.query('COMMIT');
      } catch (error) {
        broken = true;
        fail(error);
      }
      return result;
    } finally {
      giveBack(client, broken);
    }
  }

  const poolRunner: Runner = {
    inTransaction: false,
    async query(sql, params) {
      try {
        return (await pool.query(sql, params as unknown[] | undefined)).rows;
      } catch (error) {
        fail(error);
      }
    },
    async execute(sql, params) {
      try {
        return (await pool.query(sql, params as unknown[] | undefined)).rowCount ?? 0;
      } catch (error) {
        fail(error);
      }
    },
    atomically: (fn) => inTransaction((client) => fn(clientRunner(client))),
  };

  // Fail at open, not at first use, when the database cannot be reached.
  try {
    await poolRunner.query('SELECT 1');
  } catch (error) {
    await pool.end().catch(noop);
    throw error;
  }

  const ops = new PgOps(poolRunner);
  const bound: Record<string, unknown> = {};
  for (const name of operationNames(ops)) {
    bound[name] = (ops[name] as (...args: unknown[]) => unknown).bind(ops);
  }

  const txMutex = new Mutex();
  const events = new EventEmitter();
  // One listener per long-lived component (caches, registries, one per front-end's session
  // registry): a server with every front-end has more than Node's default 10. A per-request
  // subscription would still pass this bound within one burst and be reported.
  events.setMaxListeners(64);
  let closed = false;

  // ---- LISTEN connection -------------------------------------------------------------
  const heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
  const staleAfterMs = options.staleAfterMs ?? STALE_AFTER_MS;
  /** Tells our own heartbeats from other replicas' on the shared channel. */
  const beatId = randomBytes(8).toString('hex');
  const beatPayload = JSON.stringify({ type: 'heartbeat', from: beatId });
  /** When our own heartbeat was last heard back through LISTEN (0: not since connecting). */
  let lastBeat = 0;
  /** The feed is current: LISTEN is up and its heartbeat is fresh (ADR 0013). */
  let feedHealthy = false;
  let heartbeatTimer: NodeJS.Timeout | null = null;
  let listenClient: Client | null = null;
  /** The current connect attempt (settles either way); publish waits for it. */
  let listenAttempt: Promise<void> | null = null;
  let listenStarted = false;
  let everConnected = false;
  let reconnectTimer: NodeJS.Timeout | null = null;
  let backoff = RECONNECT_MIN_MS;

  function emit(change: StoreChange): void {
    for (const listener of events.listeners('change')) {
      try {
        (listener as (c: StoreChange) => void)(change);
      } catch {
        // A faulty subscriber must not take the LISTEN connection (or the process) down.
      }
    }
  }

  function scheduleReconnect(): void {
    if (closed || reconnectTimer !== null) return;
    const delay = backoff;
    backoff = Math.min(backoff * 2, RECONNECT_MAX_MS);
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null;
      listenAttempt = connectListener();
    }, delay);
    reconnectTimer.unref();
  }

  let beatInFlight = false;
  let listenLost: (() => void) | null = null;

  async function connectListener(): Promise<void> {
    if (closed) return;
    let lose: (() => void) | null = null;
    const client = new Client({
      connectionString: options.url,
      application_name: 'coatcheck-listen',
      keepAlive: true,
      connectionTimeoutMillis: 10_000,
    });
    let dead = false;
    const onLost = () => {
      if (dead) return;
      dead = true;
      if (listenClient === client) {
        listenClient = null;
        feedHealthy = false;
      }
      client.end().catch(noop);
      // A stalled socket never finishes end(): destroy it so nothing more is read from it.
      (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
      scheduleReconnect();
    };
    lose = onLost;
    client.on('error', onLost);
    client.on('end', onLost);
    client.on('notification', (message) => {
      if (message.channel !== channel) return;
      if (message.payload === beatPayload) {
        if (listenClient === client) heard();
        return;
      }
      const change = parseChange(message.payload);
      if (change !== null) emit(change);
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${escapeIdentifier(channel)}`);
    } catch {
      onLost();
      return;
    }
    if (closed || dead) {
      dead = true;
      await client.end().catch(noop);
      return;
    }
    listenClient = client;
    listenLost = lose;
    backoff = RECONNECT_MIN_MS;
    lastBeat = Date.now();
    feedHealthy = true;
    // Anything published while we were not listening is lost: tell caches to start over.
    if (everConnected) emit({ type: 'resync' });
    everConnected = true;
  }

  /** Our heartbeat came back: the feed delivers. After a stale spell, caches start over. */
  function heard(): void {
    lastBeat = Date.now();
    if (feedHealthy) return;
    feedHealthy = true;
    emit({ type: 'resync' });
  }

  function beat(): void {
    const client = listenClient;
    if (client === null) return;
    const age = Date.now() - lastBeat;
    // Missed heartbeats: the LISTEN connection stalled (or this process is starved).
    // Stop trusting caches at once; a late heartbeat restores them with a resync.
    if (age > staleAfterMs) feedHealthy = false;
    if (age > staleAfterMs * RECONNECT_AFTER_STALE) {
      // Still nothing: replace the connection (its LISTEN emits resync once it is up).
      listenLost?.();
      return;
    }
    if (beatInFlight) return;
    beatInFlight = true;
    // Sent on the LISTEN connection itself: it proves that connection delivers, and does
    // not compete with the data path for pool clients.
    client
      .query('SELECT pg_notify($1, $2)', [channel, beatPayload])
      .catch(noop)
      .finally(() => {
        beatInFlight = false;
      });
  }

  const store: Store = {
    ...(bound as unknown as StoreOps),
    driver: 'postgres',
    location,

    async migrate() {
      const latest = POSTGRES_MIGRATIONS.at(-1)?.version ?? 0;
      // One migration per transaction, each under an advisory lock, so replicas starting
      // together apply every migration exactly once (the second waits, then sees it done).
      for (;;) {
        const applied = await inTransaction(
          async (client) => {
            const db = clientRunner(client);
            await db.execute(
              'CREATE TABLE IF NOT EXISTS coatcheck_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)',
            );
            const rows = await db.query('SELECT MAX(version) AS v FROM coatcheck_migrations');
            const current = nullableNumber(rows[0]?.v) ?? 0;
            if (current > latest) {
              throw new CoatcheckError(
                'CC_ERR_STORE_SCHEMA_NEWER',
                `store schema version ${current} is newer than this coatcheck (${latest})`,
                { details: { current, latest } },
              );
            }
            const next = POSTGRES_MIGRATIONS.find((m) => m.version > current);
            if (next === undefined) return false;
            await db.execute(next.sql);
            await db.execute(
              'INSERT INTO coatcheck_migrations (version, name, applied_at) VALUES ($1, $2, $3)',
              [next.version, next.name, Date.now()],
            );
            return true;
          },
          [LOCK_NAMESPACE, LOCK_MIGRATIONS],
        );
        if (!applied) return;
      }
    },

    transaction<T>(fn: (tx: StoreTx) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
      if (options.lock === 'rows') {
        // No global lock (ADR 0015): row locks alone order this transaction against others.
        return inTransaction((client) => fn(new PgTx(clientRunner(client), channel)));
      }
      return txMutex.run(() =>
        inTransaction(
          (client) => fn(new PgTx(clientRunner(client), channel)),
          [LOCK_NAMESPACE, LOCK_TRANSACTIONS],
        ),
      );
    },

    readSnapshot<T>(fn: (ops: StoreOps) => Promise<T>): Promise<T> {
      // One snapshot for every read: a record committed meanwhile (with a lower seq than one
      // already read, since seqs come from a sequence) is either wholly in view or not.
      return inTransaction(
        (client) => fn(new PgOps(clientRunner(client))),
        undefined,
        'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
      );
    },

    async backupTo() {
      throw new CoatcheckError(
        'CC_ERR_BACKUP_UNSUPPORTED',
        'coatcheck backup copies SQLite stores; back up a PostgreSQL store with pg_dump, and keep `coatcheck audit anchor` output beside it',
      );
    },
    async publish(change: StoreChange) {
      // Our own subscribers hear changes through LISTEN like everyone else's: make sure
      // a LISTEN that is starting is in place first, or this very notification is missed.
      if (listenAttempt !== null) await listenAttempt;
      const payloads = encodeChange(change);
      // One statement: the notifications of a split change are delivered together.
      await poolRunner.query('SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload', [
        channel,
        payloads,
      ]);
    },

    feedCurrent() {
      // No subscriber, no cache to protect; otherwise the heartbeat must be fresh. The
      // timer may lag under load, so check the age here too rather than trust the flag.
      if (!listenStarted) return true;
      if (feedHealthy && Date.now() - lastBeat > staleAfterMs) beat();
      return feedHealthy;
    },
    subscribe(listener) {
      events.on('change', listener);
      if (!listenStarted && !closed) {
        listenStarted = true;
        listenAttempt = connectListener();
        heartbeatTimer = setInterval(beat, heartbeatMs);
        heartbeatTimer.unref();
      }
      return () => {
        events.off('change', listener);
      };
    },

    async close() {
      if (closed) return;
      closed = true;
      if (reconnectTimer !== null) clearTimeout(reconnectTimer);
      reconnectTimer = null;
      if (heartbeatTimer !== null) clearInterval(heartbeatTimer);
      heartbeatTimer = null;
      feedHealthy = false;
      if (listenAttempt !== null) await listenAttempt;
      events.removeAllListeners();
      const client = listenClient;
      listenClient = null;
      await Promise.all([client?.end().catch(noop), txMutex.run(() => pool.end().catch(noop))]);
    },
  };
  return store;
}
