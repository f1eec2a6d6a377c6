import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Client, escapeIdentifier, Pool, type PoolClient, type QueryResultRow } from 'pg';
import { CoatcheckError } from '../core/errors.js';
import { POSTGRES_MIGRATIONS } from './migrations.js';
import { Mutex } from './mutex.js';
import { deadMap, jsonColumn, nullableNumber } from './rows.js';
import type {
  AgentRecord,
  ApprovalRecord,
  AuditChainHead,
  AuditRecord,
  ConnectionRecord,
  LivenessQuery,
  RecordingFilter,
  RecordingRecord,
  SecretRecord,
  SessionFilter,
  SessionRecord,
  Store,
  StoreChange,
  StoreOps,
  StoreTx,
  TicketFilter,
  TicketRecord,
  TransactionOptions,
  WorkflowRecord,
} from './types.js';

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
// Row mapping. BIGINT arrives as a string, BYTEA as a Buffer, JSONB already parsed.

function stringArray(value: unknown, table: string, column: string): string[] {
  if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', `${table}.${column} is not a list of strings`, {
      details: { table, column },
    });
  }
  return value;
}

function stringRecord(value: unknown, table: string, column: string): Record<string, string> {
  if (
    typeof value !== 'object' ||
    value === null ||
    Array.isArray(value) ||
    !Object.values(value).every((item) => typeof item === 'string')
  ) {
    throw new CoatcheckError('CC_ERR_STORE_CORRUPT', `${table}.${column} is not a map of strings`, {
      details: { table, column },
    });
  }
  return value as Record<string, string>;
}

function nullableBuffer(value: unknown): Buffer | null {
  if (value === null || value === undefined) return null;
  return Buffer.isBuffer(value) ? value : Buffer.from(value as Uint8Array);
}

function nullableString(value: unknown): string | null {
  return value === null || value === undefined ? null : String(value);
}

function secretFromRow(row: Row): SecretRecord {
  return {
    id: String(row.id),
    name: String(row.name),
    kind: String(row.kind),
    allow: stringArray(row.allow, 'secrets', 'allow'),
    placements: stringArray(row.placements, 'secrets', 'placements'),
    wrappedKey: nullableBuffer(row.wrapped_key),
    keyId: nullableString(row.key_id),
    ciphertext: nullableBuffer(row.ciphertext),
    fingerprint: String(row.fingerprint),
    createdAt: Number(row.created_at),
    erasedAt: nullableNumber(row.erased_at),
  };
}

function ticketFromRow(row: Row): TicketRecord {
  return {
    id: String(row.id),
    hash: String(row.hash),
    secretId: String(row.secret_id),
    principal: String(row.principal),
    destinations: stringArray(row.destinations, 'tickets', 'destinations'),
    expiresAt: nullableNumber(row.expires_at),
    maxUses: nullableNumber(row.max_uses),
    uses: Number(row.uses),
    parentId: nullableString(row.parent_id),
    createdAt: Number(row.created_at),
    revokedAt: nullableNumber(row.revoked_at),
  };
}

function agentFromRow(row: Row): AgentRecord {
  return {
    id: String(row.id),
    name: String(row.name),
    groups: stringArray(row.groups, 'agents', 'groups'),
    keyHash: String(row.key_hash),
    createdAt: Number(row.created_at),
    expiresAt: nullableNumber(row.expires_at),
    revokedAt: nullableNumber(row.revoked_at),
  };
}

function connectionFromRow(row: Row): ConnectionRecord {
  return {
    id: String(row.id),
    name: String(row.name),
    type: String(row.type),
    url: String(row.url),
    credential: nullableString(row.credential),
    injectHeaders: stringRecord(row.inject_headers, 'connections', 'inject_headers'),
    rules: jsonColumn<Record<string, unknown>>(row.rules, 'connections', 'rules'),
    createdAt: Number(row.created_at),
  };
}

function approvalFromRow(row: Row): ApprovalRecord {
  return {
    id: String(row.id),
    fingerprint: String(row.fingerprint),
    requester: String(row.requester),
    status: String(row.status) as ApprovalRecord['status'],
    createdAt: Number(row.created_at),
    expiresAt: Number(row.expires_at),
    data: jsonColumn<Record<string, unknown>>(row.data, 'approvals', 'data'),
    // Absent when none was kept (rows from before migration 7, or no preview built).
    ...(row.preview === null || row.preview === undefined ? {} : { preview: String(row.preview) }),
  };
}

function sessionFromRow(row: Row): SessionRecord {
  return {
    id: String(row.id),
    frontend: String(row.frontend),
    principal: nullableString(row.principal),
    connection: nullableString(row.connection),
    startedAt: Number(row.started_at),
    endedAt: Number(row.ended_at),
    outcome: String(row.outcome),
    summary: jsonColumn<Record<string, unknown>>(row.summary, 'sessions', 'summary'),
  };
}

function recordingFromRow(row: Row): RecordingRecord {
  return {
    id: String(row.id),
    frontend: String(row.frontend),
    principal: row.principal === null ? null : String(row.principal),
    connection: row.connection === null ? null : String(row.connection),
    startedAt: Number(row.started_at),
    endedAt: Number(row.ended_at),
    events: Number(row.events),
    bytes: Number(row.bytes),
    chunks: Number(row.chunks),
    hash: String(row.hash),
    location: String(row.location),
    wrappedKey: row.wrapped_key === null ? null : Buffer.from(row.wrapped_key as Uint8Array),
    tickets: jsonColumn<string[]>(row.tickets, 'recordings', 'tickets'),
    createdAt: Number(row.created_at),
    erasedAt: row.erased_at === null ? null : Number(row.erased_at),
  };
}

function workflowFromRow(row: Row): WorkflowRecord {
  return {
    id: String(row.id),
    name: String(row.name),
    parentId: row.parent_id === null ? null : String(row.parent_id),
    rootId: String(row.root_id),
    startedBy: String(row.started_by),
    groups: stringArray(row.groups, 'workflows', 'groups'),
    keyHash: String(row.key_hash),
    status: String(row.status) as WorkflowRecord['status'],
    expiresAt: nullableNumber(row.expires_at),
    createdAt: Number(row.created_at),
    endedAt: nullableNumber(row.ended_at),
  };
}

function auditFromRow(row: Row): AuditRecord {
  const seq = Number(row.seq);
  const chain = row.chain === undefined || row.chain === null ? '' : String(row.chain);
  const chainSeq = row.chain_seq === undefined || row.chain_seq === null ? seq : Number(row.chain_seq);
  return {
    seq,
    // Main-chain records at their own position look as they did before chains existed.
    ...(chain === '' && chainSeq === seq ? {} : { chain, chainSeq }),
    ts: Number(row.ts),
    type: String(row.type),
    actor: String(row.actor),
    // TEXT, not JSONB: JSONB reorders keys and the hash chain is computed over the text.
    data: jsonColumn<Record<string, unknown>>(row.data, 'audit', 'data'),
    prevHash: String(row.prev_hash),
    hash: String(row.hash),
  };
}

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

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((item) => typeof item === 'string');
}

/** Validate a NOTIFY payload; anything malformed is null (ignored, never a crash). */
export function parseChange(payload: string | undefined): StoreChange | null {
  if (payload === undefined) return null;
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const v = value as Record<string, unknown>;
  switch (v.type) {
    case 'ticket.revoked':
      return isStringArray(v.ids) ? { type: 'ticket.revoked', ids: v.ids } : null;
    case 'workflow.ended':
      return isStringArray(v.ids) ? { type: 'workflow.ended', ids: v.ids } : null;
    case 'secret.added':
    case 'secret.updated':
    case 'secret.erased':
    case 'agent.revoked':
      return typeof v.id === 'string' ? { type: v.type, id: v.id } : null;
    case 'approval.changed':
      return typeof v.id === 'string' ? { type: 'approval.changed', id: v.id } : null;
    case 'connection.changed':
      return typeof v.name === 'string' ? { type: 'connection.changed', name: v.name } : null;
    case 'keys.rotated':
      return { type: 'keys.rotated' };
    case 'resync':
      return { type: 'resync' };
    default:
      return null;
  }
}

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

const ORDER_TEXT = 'COLLATE "C"'; // byte order, as SQLite's BINARY collation

class PgOps implements StoreOps {
  constructor(protected readonly db: Runner) {}

  async getMeta(key: string) {
    const rows = await this.db.query('SELECT value FROM meta WHERE key = $1', [key]);
    return rows[0] === undefined ? null : String(rows[0].value);
  }
  async setMeta(key: string, value: string) {
    await this.db.execute(
      'INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
      [key, value],
    );
  }

  async insertSecret(r: SecretRecord) {
    await this.db.execute(
      'INSERT INTO secrets (id, name, kind, allow, placements, wrapped_key, key_id, ciphertext, fingerprint, created_at, erased_at) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6, $7, $8, $9, $10, $11)',
      [
        r.id,
        r.name,
        r.kind,
        JSON.stringify(r.allow),
        JSON.stringify(r.placements),
        r.wrappedKey,
        r.keyId,
        r.ciphertext,
        r.fingerprint,
        r.createdAt,
        r.erasedAt,
      ],
    );
  }
  async getSecretByName(name: string) {
    const rows = await this.db.query('SELECT * FROM secrets WHERE name = $1 AND erased_at IS NULL', [name]);
    return rows[0] === undefined ? null : secretFromRow(rows[0]);
  }
  async getSecretById(id: string) {
    const rows = await this.db.query('SELECT * FROM secrets WHERE id = $1', [id]);
    return rows[0] === undefined ? null : secretFromRow(rows[0]);
  }
  async listSecrets() {
    const rows = await this.db.query(
      `SELECT * FROM secrets WHERE erased_at IS NULL ORDER BY name ${ORDER_TEXT}`,
    );
    return rows.map(secretFromRow);
  }
  // Every change that makes a row dead locks it FOR UPDATE first: that conflicts with the
  // FOR KEY SHARE lock `deadAmong` holds for an exchange in flight (a plain UPDATE would
  // not), so a revocation and an exchange that depends on it wait for each other (ADR 0015).
  async eraseSecret(id: string, at: number) {
    const count = await this.db.execute(
      'UPDATE secrets SET wrapped_key = NULL, key_id = NULL, ciphertext = NULL, erased_at = $1 WHERE id IN (SELECT id FROM secrets WHERE id = $2 AND erased_at IS NULL FOR UPDATE)',
      [at, id],
    );
    return count === 1;
  }
  async updateSecretKey(id: string, wrappedKey: Buffer, keyId: string) {
    await this.db.execute(
      'UPDATE secrets SET wrapped_key = $1, key_id = $2 WHERE id = $3 AND erased_at IS NULL',
      [wrappedKey, keyId, id],
    );
  }
  async updateSecretBindings(id: string, allow: readonly string[], placements: readonly string[]) {
    const count = await this.db.execute(
      'UPDATE secrets SET allow = $1::jsonb, placements = $2::jsonb WHERE id = $3 AND erased_at IS NULL',
      [JSON.stringify(allow), JSON.stringify(placements), id],
    );
    return count === 1;
  }

  async insertTicket(r: TicketRecord) {
    await this.db.execute(
      'INSERT INTO tickets (id, hash, secret_id, principal, destinations, expires_at, max_uses, uses, parent_id, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11)',
      [
        r.id,
        r.hash,
        r.secretId,
        r.principal,
        JSON.stringify(r.destinations),
        r.expiresAt,
        r.maxUses,
        r.uses,
        r.parentId,
        r.createdAt,
        r.revokedAt,
      ],
    );
  }
  async getTicketByHash(hash: string) {
    const rows = await this.db.query('SELECT * FROM tickets WHERE hash = $1', [hash]);
    return rows[0] === undefined ? null : ticketFromRow(rows[0]);
  }
  async getTicketById(id: string) {
    const rows = await this.db.query('SELECT * FROM tickets WHERE id = $1', [id]);
    return rows[0] === undefined ? null : ticketFromRow(rows[0]);
  }
  async listTickets(filter: TicketFilter) {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.secretId !== undefined) {
      params.push(filter.secretId);
      where.push(`secret_id = $${params.length}`);
    }
    if (filter.principal !== undefined) {
      params.push(filter.principal);
      where.push(`principal = $${params.length}`);
    }
    if (!filter.includeInactive) {
      params.push(filter.now ?? Date.now());
      where.push(`revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $${params.length})`);
    }
    params.push(filter.limit ?? 1000);
    const sql = `SELECT * FROM tickets ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id ${ORDER_TEXT} LIMIT $${params.length}`;
    return (await this.db.query(sql, params)).map(ticketFromRow);
  }
  async revokeTicketTree(id: string, at: number) {
    // UNION (not UNION ALL) so even a damaged, cyclic parent chain terminates.
    const rows = await this.db.query(
      `WITH RECURSIVE tree(id) AS (
         SELECT id FROM tickets WHERE id = $1
         UNION SELECT t.id FROM tickets t JOIN tree ON t.parent_id = tree.id)
       UPDATE tickets SET revoked_at = $2 WHERE id IN (SELECT id FROM tickets WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL FOR UPDATE) RETURNING id`,
      [id, at],
    );
    return rows.map((row) => String(row.id));
  }
  async revokeTicketsOfSecret(secretId: string, at: number) {
    const rows = await this.db.query(
      'UPDATE tickets SET revoked_at = $1 WHERE id IN (SELECT id FROM tickets WHERE secret_id = $2 AND revoked_at IS NULL FOR UPDATE) RETURNING id',
      [at, secretId],
    );
    return rows.map((row) => String(row.id));
  }
  async consumeUses(ids: readonly string[]) {
    if (ids.length === 0) return true;
    // Lock the limited rows (in id order, so overlapping chains cannot deadlock), check
    // every one has a use left, then take one from each: all or nothing, across replicas.
    // Under READ COMMITTED, the lock waits for a concurrent taker and then sees its write.
    // FOR NO KEY UPDATE, not FOR UPDATE: takers exclude each other but not the FOR KEY
    // SHARE lock an exchange's `deadAmong` holds on the same row (no lock upgrade deadlock).
    return this.db.atomically(async (db) => {
      const limited = await db.query(
        `SELECT id, uses, max_uses FROM tickets WHERE id = ANY($1::text[]) AND max_uses IS NOT NULL ORDER BY id ${ORDER_TEXT} FOR NO KEY UPDATE`,
        [[...ids]],
      );
      if (limited.some((row) => Number(row.uses) >= Number(row.max_uses))) return false;
      if (limited.length > 0) {
        await db.execute('UPDATE tickets SET uses = uses + 1 WHERE id = ANY($1::text[])', [
          limited.map((row) => String(row.id)),
        ]);
      }
      return true;
    });
  }

  async insertAgent(r: AgentRecord) {
    await this.db.execute(
      'INSERT INTO agents (id, name, groups, key_hash, created_at, expires_at, revoked_at) VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7)',
      [r.id, r.name, JSON.stringify(r.groups), r.keyHash, r.createdAt, r.expiresAt, r.revokedAt],
    );
  }
  async getAgentByName(name: string) {
    const rows = await this.db.query('SELECT * FROM agents WHERE name = $1 AND revoked_at IS NULL', [name]);
    return rows[0] === undefined ? null : agentFromRow(rows[0]);
  }
  async getAgentById(id: string) {
    const rows = await this.db.query('SELECT * FROM agents WHERE id = $1', [id]);
    return rows[0] === undefined ? null : agentFromRow(rows[0]);
  }
  async getAgentByKeyHash(keyHash: string) {
    const rows = await this.db.query('SELECT * FROM agents WHERE key_hash = $1', [keyHash]);
    return rows[0] === undefined ? null : agentFromRow(rows[0]);
  }
  async listAgents() {
    const rows = await this.db.query(`SELECT * FROM agents ORDER BY name ${ORDER_TEXT}, created_at`);
    return rows.map(agentFromRow);
  }
  async revokeAgent(id: string, at: number) {
    const count = await this.db.execute(
      'UPDATE agents SET revoked_at = $1 WHERE id IN (SELECT id FROM agents WHERE id = $2 AND revoked_at IS NULL FOR UPDATE)',
      [at, id],
    );
    return count === 1;
  }

  async insertConnection(r: ConnectionRecord) {
    await this.db.execute(
      'INSERT INTO connections (id, name, type, url, credential, inject_headers, rules, created_at) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)',
      [
        r.id,
        r.name,
        r.type,
        r.url,
        r.credential,
        JSON.stringify(r.injectHeaders),
        JSON.stringify(r.rules),
        r.createdAt,
      ],
    );
  }
  async getConnection(name: string) {
    const rows = await this.db.query('SELECT * FROM connections WHERE name = $1', [name]);
    return rows[0] === undefined ? null : connectionFromRow(rows[0]);
  }
  async listConnections() {
    const rows = await this.db.query(`SELECT * FROM connections ORDER BY name ${ORDER_TEXT}`);
    return rows.map(connectionFromRow);
  }
  async deleteConnection(name: string) {
    return (await this.db.execute('DELETE FROM connections WHERE name = $1', [name])) === 1;
  }

  async insertApproval(r: ApprovalRecord) {
    await this.db.execute(
      'INSERT INTO approvals (id, fingerprint, requester, status, created_at, expires_at, data, preview) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)',
      [
        r.id,
        r.fingerprint,
        r.requester,
        r.status,
        r.createdAt,
        r.expiresAt,
        JSON.stringify(r.data),
        r.preview ?? null,
      ],
    );
  }
  async getApproval(id: string) {
    const rows = await this.db.query('SELECT * FROM approvals WHERE id = $1', [id]);
    return rows[0] === undefined ? null : approvalFromRow(rows[0]);
  }
  async updateApproval(r: ApprovalRecord, expectedStatus: ApprovalRecord['status']) {
    return (
      (await this.db.execute(
        'UPDATE approvals SET status = $1, expires_at = $2, data = $3 WHERE id = $4 AND status = $5',
        [r.status, r.expiresAt, JSON.stringify(r.data), r.id, expectedStatus],
      )) === 1
    );
  }
  async findApprovals(fingerprint: string, requester: string) {
    const rows = await this.db.query(
      'SELECT * FROM approvals WHERE fingerprint = $1 AND requester = $2 ORDER BY created_at DESC, id DESC LIMIT 50',
      [fingerprint, requester],
    );
    return rows.map(approvalFromRow);
  }
  async listApprovals(filter: { status?: ApprovalRecord['status']; limit?: number }) {
    const rows = await this.db.query(
      'SELECT * FROM approvals WHERE ($1::text IS NULL OR status = $1) ORDER BY created_at DESC, id DESC LIMIT $2',
      [filter.status ?? null, filter.limit ?? 100],
    );
    return rows.map(approvalFromRow);
  }

  async insertSession(r: SessionRecord) {
    await this.db.execute(
      'INSERT INTO sessions (id, frontend, principal, connection, started_at, ended_at, outcome, summary) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)',
      [
        r.id,
        r.frontend,
        r.principal,
        r.connection,
        r.startedAt,
        r.endedAt,
        r.outcome,
        JSON.stringify(r.summary),
      ],
    );
  }
  async getSession(id: string) {
    const rows = await this.db.query('SELECT * FROM sessions WHERE id = $1', [id]);
    return rows[0] === undefined ? null : sessionFromRow(rows[0]);
  }
  async listSessions(filter: SessionFilter) {
    const rows = await this.db.query(
      'SELECT * FROM sessions WHERE started_at < $1 AND ($2::text IS NULL OR principal = $2) ORDER BY started_at DESC, id DESC LIMIT $3',
      [filter.before ?? Number.MAX_SAFE_INTEGER, filter.principal ?? null, filter.limit],
    );
    return rows.map(sessionFromRow);
  }

  async insertRecording(r: RecordingRecord) {
    await this.db.execute(
      'INSERT INTO recordings (id, frontend, principal, connection, started_at, ended_at, events, bytes, chunks, hash, location, wrapped_key, tickets, created_at, erased_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)',
      [
        r.id,
        r.frontend,
        r.principal,
        r.connection,
        r.startedAt,
        r.endedAt,
        r.events,
        r.bytes,
        r.chunks,
        r.hash,
        r.location,
        r.wrappedKey,
        JSON.stringify(r.tickets),
        r.createdAt,
        r.erasedAt,
      ],
    );
  }
  async getRecording(id: string) {
    const rows = await this.db.query('SELECT * FROM recordings WHERE id = $1', [id]);
    return rows[0] === undefined ? null : recordingFromRow(rows[0]);
  }
  async listRecordings(filter: RecordingFilter) {
    const order = filter.order === 'oldest' ? 'ASC' : 'DESC';
    const rows = await this.db.query(
      `SELECT * FROM recordings WHERE started_at >= $1 AND started_at < $2 AND ($3::text IS NULL OR principal = $3) AND ($4::text IS NULL OR connection = $4) AND ($5::text IS NULL OR strpos(tickets, $5) > 0) AND (NOT $6::boolean OR erased_at IS NULL) ORDER BY started_at ${order}, id ${order} LIMIT $7`,
      [
        filter.since ?? 0,
        filter.until ?? Number.MAX_SAFE_INTEGER,
        filter.principal ?? null,
        filter.connection ?? null,
        filter.ticket === undefined ? null : JSON.stringify(filter.ticket),
        filter.live === true,
        filter.limit,
      ],
    );
    return rows.map(recordingFromRow);
  }
  async eraseRecording(id: string, at: number) {
    const count = await this.db.execute(
      'UPDATE recordings SET wrapped_key = NULL, erased_at = $1 WHERE id = $2 AND erased_at IS NULL',
      [at, id],
    );
    return count > 0;
  }

  async insertWorkflow(r: WorkflowRecord) {
    await this.db.execute(
      'INSERT INTO workflows (id, name, parent_id, root_id, started_by, groups, key_hash, status, expires_at, created_at, ended_at) VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11)',
      [
        r.id,
        r.name,
        r.parentId,
        r.rootId,
        r.startedBy,
        JSON.stringify(r.groups),
        r.keyHash,
        r.status,
        r.expiresAt,
        r.createdAt,
        r.endedAt,
      ],
    );
  }
  async getWorkflow(id: string) {
    const rows = await this.db.query('SELECT * FROM workflows WHERE id = $1', [id]);
    return rows[0] === undefined ? null : workflowFromRow(rows[0]);
  }
  async getWorkflowByKeyHash(keyHash: string) {
    const rows = await this.db.query('SELECT * FROM workflows WHERE key_hash = $1', [keyHash]);
    return rows[0] === undefined ? null : workflowFromRow(rows[0]);
  }
  async listWorkflowRuns(limit: number) {
    const rows = await this.db.query(
      'SELECT * FROM workflows WHERE parent_id IS NULL ORDER BY created_at DESC, id DESC LIMIT $1',
      [limit],
    );
    return rows.map(workflowFromRow);
  }
  async listWorkflowSubtree(id: string) {
    const rows = await this.db.query(
      `WITH RECURSIVE tree(id) AS (
         SELECT id FROM workflows WHERE id = $1
         UNION SELECT w.id FROM workflows w JOIN tree ON w.parent_id = tree.id)
       SELECT * FROM workflows WHERE id IN (SELECT id FROM tree) ORDER BY created_at, id ${ORDER_TEXT}`,
      [id],
    );
    return rows.map(workflowFromRow);
  }
  async endWorkflowTree(id: string, status: 'ended' | 'revoked', at: number) {
    const rows = await this.db.query(
      `WITH RECURSIVE tree(id) AS (
         SELECT id FROM workflows WHERE id = $1
         UNION SELECT w.id FROM workflows w JOIN tree ON w.parent_id = tree.id)
       UPDATE workflows SET status = $2, ended_at = $3 WHERE id IN (SELECT id FROM workflows WHERE id IN (SELECT id FROM tree) AND status = 'active' FOR UPDATE) RETURNING id`,
      [id, status, at],
    );
    return rows.map((row) => String(row.id));
  }
  async addWorkflowTicket(workflowId: string, ticketId: string) {
    await this.db.execute('INSERT INTO workflow_tickets (workflow_id, ticket_id) VALUES ($1, $2)', [
      workflowId,
      ticketId,
    ]);
  }
  async listWorkflowTickets(workflowId: string) {
    const rows = await this.db.query(
      `SELECT t.id FROM workflow_tickets wt JOIN tickets t ON t.id = wt.ticket_id WHERE wt.workflow_id = $1 ORDER BY t.created_at, t.id ${ORDER_TEXT}`,
      [workflowId],
    );
    return rows.map((row) => String(row.id));
  }
  async getTicketWorkflow(ticketId: string) {
    const rows = await this.db.query('SELECT workflow_id FROM workflow_tickets WHERE ticket_id = $1', [
      ticketId,
    ]);
    return rows[0] === undefined ? null : String(rows[0].workflow_id);
  }
  async expireTickets(ids: readonly string[], at: number) {
    if (ids.length === 0) return [];
    const rows = await this.db.query(
      'UPDATE tickets SET expires_at = $1 WHERE id IN (SELECT id FROM tickets WHERE id = ANY($2::text[]) AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) ORDER BY id FOR UPDATE) RETURNING id',
      [at, [...ids]],
    );
    return rows.map((row) => String(row.id));
  }

  async deadAmong(q: LivenessQuery, now: number) {
    // In a transaction, lock what was read (FOR KEY SHARE, in id order) until commit: a
    // revocation (which locks FOR UPDATE) waits for this exchange to commit, or this read
    // waits for the revocation and then sees it. Exchanges never block one another.
    const lock = this.db.inTransaction ? `ORDER BY id ${ORDER_TEXT} FOR KEY SHARE` : '';
    const rows = await this.db.query(
      `WITH t AS (SELECT id, revoked_at, expires_at FROM tickets WHERE id = ANY($1::text[]) ${lock}),
       a AS (SELECT id, revoked_at, expires_at FROM agents WHERE id = ANY($2::text[]) ${lock}),
       w AS (SELECT id, status, expires_at FROM workflows WHERE id = ANY($3::text[]) ${lock}),
       s AS (SELECT id, erased_at FROM secrets WHERE id = ANY($4::text[]) ${lock})
       SELECT id, CASE WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN expires_at IS NOT NULL AND expires_at <= $5 THEN 'expired' END AS dead FROM t
       UNION ALL SELECT id, CASE WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN expires_at IS NOT NULL AND expires_at <= $5 THEN 'expired' END FROM a
       UNION ALL SELECT id, CASE WHEN status <> 'active' THEN 'ended' WHEN expires_at IS NOT NULL AND expires_at <= $5 THEN 'expired' END FROM w
       UNION ALL SELECT id, CASE WHEN erased_at IS NOT NULL THEN 'erased' END FROM s`,
      [[...q.tickets], [...q.agents], [...q.workflows], [...q.secrets], now],
    );
    return deadMap(q, rows);
  }

  async auditHead() {
    if (this.db.inTransaction) {
      // The audit chain has one writer at a time across every replica: callers read the
      // head and append inside one transaction, so the head read takes a transaction-level
      // advisory lock first. A second replica's auditHead() blocks here until the first
      // commits or rolls back, and then reads the head the first one wrote. (Every
      // transaction of this adapter already holds LOCK_TRANSACTIONS, which serialises them
      // too; this lock keeps the audit guarantee explicit and independent of that. Taken
      // inside a savepoint that is rolled back, PostgreSQL releases it with the savepoint.)
      await this.db.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, LOCK_AUDIT]);
    }
    const rows = await this.db.query('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1');
    return rows[0] === undefined ? null : { seq: Number(rows[0].seq), hash: String(rows[0].hash) };
  }
  async auditChainHead(chain: string) {
    if (this.db.inTransaction && chain === '') {
      // The main chain has one writer at a time across replicas (as auditHead above).
      await this.db.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, LOCK_AUDIT]);
    }
    const rows = await this.db.query(
      'SELECT seq, chain_seq, hash FROM audit WHERE chain = $1 ORDER BY chain_seq DESC LIMIT 1',
      [chain],
    );
    const row = rows[0];
    return row === undefined
      ? null
      : { seq: Number(row.seq), chainSeq: Number(row.chain_seq), hash: String(row.hash) };
  }
  async allocateAuditSeqs(count: number) {
    if (count <= 0) return [];
    const rows = await this.db.query(
      "SELECT nextval('audit_seq') AS seq FROM generate_series(1, $1::int) ORDER BY 1",
      [count],
    );
    return rows.map((row) => Number(row.seq));
  }
  async readAuditChain(chain: string, afterChainSeq: number, limit: number) {
    const rows = await this.db.query(
      'SELECT * FROM audit WHERE chain = $1 AND chain_seq > $2 ORDER BY chain_seq LIMIT $3',
      [chain, afterChainSeq, limit],
    );
    return rows.map(auditFromRow);
  }
  async auditChainHeads() {
    const rows = await this.db.query(
      `SELECT chain, chain_seq, hash FROM audit_chains ORDER BY chain ${ORDER_TEXT}`,
    );
    return rows.map(
      (row): AuditChainHead => ({
        chain: String(row.chain),
        chainSeq: Number(row.chain_seq),
        hash: String(row.hash),
      }),
    );
  }
  async setAuditChainHead(head: AuditChainHead) {
    await this.db.execute(
      'INSERT INTO audit_chains (chain, chain_seq, hash) VALUES ($1, $2, $3) ON CONFLICT (chain) DO UPDATE SET chain_seq = excluded.chain_seq, hash = excluded.hash',
      [head.chain, head.chainSeq, head.hash],
    );
  }
  async countAudit() {
    const rows = await this.db.query('SELECT COUNT(*) AS n FROM audit');
    return Number(rows[0]?.n ?? 0);
  }
  async insertAuditRecords(records: readonly AuditRecord[]) {
    if (records.length === 0) return;
    // One statement, so a batch is atomic even outside a transaction. `data` is stored as
    // the exact JSON text (key order matters to the hash chain).
    await this.db.execute(
      `INSERT INTO audit (seq, ts, type, actor, data, prev_hash, hash, chain, chain_seq)
       SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[])`,
      [
        records.map((r) => r.seq),
        records.map((r) => r.ts),
        records.map((r) => r.type),
        records.map((r) => r.actor),
        records.map((r) => JSON.stringify(r.data)),
        records.map((r) => r.prevHash),
        records.map((r) => r.hash),
        records.map((r) => r.chain ?? ''),
        records.map((r) => r.chainSeq ?? r.seq),
      ],
    );
  }
  async readAudit(afterSeq: number, limit: number) {
    const rows = await this.db.query('SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2', [
      afterSeq,
      limit,
    ]);
    return rows.map(auditFromRow);
  }
  async tailAudit(limit: number) {
    const rows = await this.db.query(
      'SELECT * FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT $1) AS tail ORDER BY seq',
      [limit],
    );
    return rows.map(auditFromRow);
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
    await this.db.query('SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload', [
      this.channel,
      encodeChange(change),
    ]);
  }
  async savepoint<T>(fn: () => Promise<T>): Promise<T> {
    const name = `sp${++this.#depth}`;
    try {
      await this.db.execute(`SAVEPOINT ${name}`);
      let result: T;
      try {
        result = await fn();
      } catch (error) {
        await this.db.execute(`ROLLBACK TO SAVEPOINT ${name}`);
        await this.db.execute(`RELEASE SAVEPOINT ${name}`);
        throw error;
      }
      await this.db.execute(`RELEASE SAVEPOINT ${name}`);
      return result;
    } finally {
      this.#depth--;
    }
  }
}

/** Every StoreOps method, so top-level ops can be bound onto the store object. */
const OP_NAMES = Object.getOwnPropertyNames(PgOps.prototype).filter(
  (name) => name !== 'constructor',
) as (keyof StoreOps)[];

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
  for (const name of OP_NAMES) {
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
