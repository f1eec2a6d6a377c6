/**
 * The store's tables as records: one definition of each table's columns and of how a row
 * becomes a record, shared by the SQLite and PostgreSQL adapters (ADR 0022). The DDL is in
 * migrations.ts (written once against the dialect's type names); test/store/schema.test.ts
 * checks that the columns named here are the columns both databases end up with.
 *
 * Column kinds say how a value travels: `int64` (BIGINT arrives from PostgreSQL as a
 * string), `bytes`, `json` (TEXT on SQLite, JSONB on PostgreSQL: the driver parses it) and
 * `jsonText` (TEXT on both; parsed here). A damaged value is CC_ERR_STORE_CORRUPT, never a crash.
 */
import { CoatcheckError } from '../core/errors.js';
import type {
  AgentRecord,
  AgentSshKeyRecord,
  ApprovalRecord,
  AuditRecord,
  ConnectionRecord,
  RecordingRecord,
  RelayRecord,
  SecretRecord,
  SessionRecord,
  TicketRecord,
  WorkflowRecord,
} from './types.js';

export type Row = Record<string, unknown>;

export type ColumnKind = 'text' | 'int' | 'int64' | 'bytes' | 'json' | 'jsonText';

/** How one database hands back the values of a `json` column. */
export interface RowCodec {
  /** SQLite: the stored text, parsed; PostgreSQL: the driver's parsed JSONB value. */
  json(value: unknown, table: string, column: string): unknown;
}

function corrupt(table: string, column: string, what: string, cause?: unknown): CoatcheckError {
  return new CoatcheckError('CC_ERR_STORE_CORRUPT', `${table}.${column} ${what}`, {
    ...(cause === undefined ? {} : { cause }),
    details: { table, column },
  });
}

/** Parse a JSON text column, turning damage into CC_ERR_STORE_CORRUPT instead of a crash. */
export function jsonColumn<T>(text: unknown, table: string, column: string): T {
  if (typeof text !== 'string') throw corrupt(table, column, 'is not text');
  try {
    return JSON.parse(text) as T;
  } catch (cause) {
    throw corrupt(table, column, 'is not valid JSON', cause);
  }
}

export const SQLITE_CODEC: RowCodec = { json: jsonColumn };
export const POSTGRES_CODEC: RowCodec = { json: (value) => value };

function stringList(value: unknown, table: string, column: string): string[] {
  if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) {
    throw corrupt(table, column, 'is not a list of strings');
  }
  return value;
}

function stringMap(value: unknown, table: string, column: string): Record<string, string> {
  if (
    typeof value !== 'object' ||
    value === null ||
    Array.isArray(value) ||
    !Object.values(value).every((item) => typeof item === 'string')
  ) {
    throw corrupt(table, column, 'is not a map of strings');
  }
  return value as Record<string, string>;
}

export function nullableNumber(value: unknown): number | null {
  if (value === null || value === undefined) return null;
  return Number(value);
}

function nullableString(value: unknown): string | null {
  return value === null || value === undefined ? null : String(value);
}

function nullableBuffer(value: unknown): Buffer | null {
  if (value === null || value === undefined) return null;
  return Buffer.isBuffer(value) ? value : Buffer.from(value as Uint8Array);
}

/**
 * One table: its columns in insert order, with their kinds, how a record becomes the values
 * to insert (same order), and how a row read back becomes a record.
 */
export interface TableDefinition<R> {
  readonly name: string;
  readonly columns: readonly (readonly [name: string, kind: ColumnKind])[];
  values(record: R): unknown[];
  fromRow(row: Row, codec: RowCodec): R;
}

const json = JSON.stringify;

export const SECRETS: TableDefinition<SecretRecord> = {
  name: 'secrets',
  columns: [
    ['id', 'text'],
    ['name', 'text'],
    ['kind', 'text'],
    ['allow', 'json'],
    ['placements', 'json'],
    ['wrapped_key', 'bytes'],
    ['key_id', 'text'],
    ['ciphertext', 'bytes'],
    ['fingerprint', 'text'],
    ['created_at', 'int64'],
    ['erased_at', 'int64'],
  ],
  values: (r) => [
    r.id,
    r.name,
    r.kind,
    json(r.allow),
    json(r.placements),
    r.wrappedKey,
    r.keyId,
    r.ciphertext,
    r.fingerprint,
    r.createdAt,
    r.erasedAt,
  ],
  fromRow: (row, codec) => ({
    id: String(row.id),
    name: String(row.name),
    kind: String(row.kind),
    allow: stringList(codec.json(row.allow, 'secrets', 'allow'), 'secrets', 'allow'),
    placements: stringList(codec.json(row.placements, 'secrets', 'placements'), 'secrets', 'placements'),
    wrappedKey: nullableBuffer(row.wrapped_key),
    keyId: nullableString(row.key_id),
    ciphertext: nullableBuffer(row.ciphertext),
    fingerprint: String(row.fingerprint),
    createdAt: Number(row.created_at),
    erasedAt: nullableNumber(row.erased_at),
  }),
};

export const TICKETS: TableDefinition<TicketRecord> = {
  name: 'tickets',
  columns: [
    ['id', 'text'],
    ['hash', 'text'],
    ['secret_id', 'text'],
    ['principal', 'text'],
    ['destinations', 'json'],
    ['expires_at', 'int64'],
    ['max_uses', 'int'],
    ['uses', 'int'],
    ['parent_id', 'text'],
    ['created_at', 'int64'],
    ['revoked_at', 'int64'],
  ],
  values: (r) => [
    r.id,
    r.hash,
    r.secretId,
    r.principal,
    json(r.destinations),
    r.expiresAt,
    r.maxUses,
    r.uses,
    r.parentId,
    r.createdAt,
    r.revokedAt,
  ],
  fromRow: (row, codec) => ({
    id: String(row.id),
    hash: String(row.hash),
    secretId: String(row.secret_id),
    principal: String(row.principal),
    destinations: stringList(
      codec.json(row.destinations, 'tickets', 'destinations'),
      'tickets',
      'destinations',
    ),
    expiresAt: nullableNumber(row.expires_at),
    maxUses: nullableNumber(row.max_uses),
    uses: Number(row.uses),
    parentId: nullableString(row.parent_id),
    createdAt: Number(row.created_at),
    revokedAt: nullableNumber(row.revoked_at),
  }),
};

export const AGENTS: TableDefinition<AgentRecord> = {
  name: 'agents',
  columns: [
    ['id', 'text'],
    ['name', 'text'],
    ['groups', 'json'],
    ['key_hash', 'text'],
    ['created_at', 'int64'],
    ['expires_at', 'int64'],
    ['revoked_at', 'int64'],
  ],
  values: (r) => [r.id, r.name, json(r.groups), r.keyHash, r.createdAt, r.expiresAt, r.revokedAt],
  fromRow: (row, codec) => ({
    id: String(row.id),
    name: String(row.name),
    groups: stringList(codec.json(row.groups, 'agents', 'groups'), 'agents', 'groups'),
    keyHash: String(row.key_hash),
    createdAt: Number(row.created_at),
    expiresAt: nullableNumber(row.expires_at),
    revokedAt: nullableNumber(row.revoked_at),
  }),
};

export const AGENT_SSH_KEYS: TableDefinition<AgentSshKeyRecord> = {
  name: 'agent_ssh_keys',
  columns: [
    ['id', 'text'],
    ['agent_id', 'text'],
    ['fingerprint', 'text'],
    ['key_type', 'text'],
    ['public_key', 'text'],
    ['comment', 'text'],
    ['created_at', 'int64'],
    ['removed_at', 'int64'],
  ],
  values: (r) => [
    r.id,
    r.agentId,
    r.fingerprint,
    r.keyType,
    r.publicKey,
    r.comment,
    r.createdAt,
    r.removedAt,
  ],
  fromRow: (row) => ({
    id: String(row.id),
    agentId: String(row.agent_id),
    fingerprint: String(row.fingerprint),
    keyType: String(row.key_type),
    publicKey: String(row.public_key),
    comment: String(row.comment),
    createdAt: Number(row.created_at),
    removedAt: nullableNumber(row.removed_at),
  }),
};

export const CONNECTIONS: TableDefinition<ConnectionRecord> = {
  name: 'connections',
  columns: [
    ['id', 'text'],
    ['name', 'text'],
    ['type', 'text'],
    ['url', 'text'],
    ['credential', 'text'],
    ['inject_headers', 'json'],
    ['rules', 'jsonText'],
    ['created_at', 'int64'],
    ['via', 'text'],
  ],
  values: (r) => [
    r.id,
    r.name,
    r.type,
    r.url,
    r.credential,
    json(r.injectHeaders),
    json(r.rules),
    r.createdAt,
    r.via,
  ],
  fromRow: (row, codec) => ({
    id: String(row.id),
    name: String(row.name),
    type: String(row.type),
    url: String(row.url),
    credential: nullableString(row.credential),
    injectHeaders: stringMap(
      codec.json(row.inject_headers, 'connections', 'inject_headers'),
      'connections',
      'inject_headers',
    ),
    rules: jsonColumn<Record<string, unknown>>(row.rules, 'connections', 'rules'),
    createdAt: Number(row.created_at),
    via: nullableString(row.via),
  }),
};

export const RELAYS: TableDefinition<RelayRecord> = {
  name: 'relays',
  columns: [
    ['id', 'text'],
    ['name', 'text'],
    ['key_hash', 'text'],
    ['created_at', 'int64'],
    ['revoked_at', 'int64'],
    ['last_seen_at', 'int64'],
    ['last_address', 'text'],
    ['last_replica', 'text'],
  ],
  values: (r) => [
    r.id,
    r.name,
    r.keyHash,
    r.createdAt,
    r.revokedAt,
    r.lastSeenAt,
    r.lastAddress,
    r.lastReplica,
  ],
  fromRow: (row) => ({
    id: String(row.id),
    name: String(row.name),
    keyHash: String(row.key_hash),
    createdAt: Number(row.created_at),
    revokedAt: nullableNumber(row.revoked_at),
    lastSeenAt: nullableNumber(row.last_seen_at),
    lastAddress: nullableString(row.last_address),
    lastReplica: nullableString(row.last_replica),
  }),
};

export const APPROVALS: TableDefinition<ApprovalRecord> = {
  name: 'approvals',
  columns: [
    ['id', 'text'],
    ['fingerprint', 'text'],
    ['requester', 'text'],
    ['status', 'text'],
    ['created_at', 'int64'],
    ['expires_at', 'int64'],
    ['data', 'jsonText'],
    ['preview', 'text'],
  ],
  values: (r) => [
    r.id,
    r.fingerprint,
    r.requester,
    r.status,
    r.createdAt,
    r.expiresAt,
    json(r.data),
    r.preview ?? null,
  ],
  fromRow: (row) => ({
    id: String(row.id),
    fingerprint: String(row.fingerprint),
    requester: String(row.requester),
    status: String(row.status) as ApprovalRecord['status'],
    createdAt: Number(row.created_at),
    expiresAt: Number(row.expires_at),
    data: jsonColumn<Record<string, unknown>>(row.data, 'approvals', 'data'),
    // Absent when none was kept (rows from before migration 8, or no preview built).
    ...(row.preview === null || row.preview === undefined ? {} : { preview: String(row.preview) }),
  }),
};

export const SESSIONS: TableDefinition<SessionRecord> = {
  name: 'sessions',
  columns: [
    ['id', 'text'],
    ['frontend', 'text'],
    ['principal', 'text'],
    ['connection', 'text'],
    ['started_at', 'int64'],
    ['ended_at', 'int64'],
    ['outcome', 'text'],
    ['summary', 'jsonText'],
  ],
  values: (r) => [
    r.id,
    r.frontend,
    r.principal,
    r.connection,
    r.startedAt,
    r.endedAt,
    r.outcome,
    json(r.summary),
  ],
  fromRow: (row) => ({
    id: String(row.id),
    frontend: String(row.frontend),
    principal: nullableString(row.principal),
    connection: nullableString(row.connection),
    startedAt: Number(row.started_at),
    endedAt: Number(row.ended_at),
    outcome: String(row.outcome),
    summary: jsonColumn<Record<string, unknown>>(row.summary, 'sessions', 'summary'),
  }),
};

export const RECORDINGS: TableDefinition<RecordingRecord> = {
  name: 'recordings',
  columns: [
    ['id', 'text'],
    ['frontend', 'text'],
    ['principal', 'text'],
    ['connection', 'text'],
    ['started_at', 'int64'],
    ['ended_at', 'int64'],
    ['events', 'int'],
    ['bytes', 'int64'],
    ['chunks', 'int'],
    ['hash', 'text'],
    ['location', 'text'],
    ['wrapped_key', 'bytes'],
    // TEXT on both: list filters search it for a whole ticket id ("tkt_…" with its quotes).
    ['tickets', 'jsonText'],
    ['created_at', 'int64'],
    ['erased_at', 'int64'],
  ],
  values: (r) => [
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
    json(r.tickets),
    r.createdAt,
    r.erasedAt,
  ],
  fromRow: (row) => ({
    id: String(row.id),
    frontend: String(row.frontend),
    principal: nullableString(row.principal),
    connection: nullableString(row.connection),
    startedAt: Number(row.started_at),
    endedAt: Number(row.ended_at),
    events: Number(row.events),
    bytes: Number(row.bytes),
    chunks: Number(row.chunks),
    hash: String(row.hash),
    location: String(row.location),
    wrappedKey: nullableBuffer(row.wrapped_key),
    tickets: stringList(jsonColumn<unknown>(row.tickets, 'recordings', 'tickets'), 'recordings', 'tickets'),
    createdAt: Number(row.created_at),
    erasedAt: nullableNumber(row.erased_at),
  }),
};

export const WORKFLOWS: TableDefinition<WorkflowRecord> = {
  name: 'workflows',
  columns: [
    ['id', 'text'],
    ['name', 'text'],
    ['parent_id', 'text'],
    ['root_id', 'text'],
    ['started_by', 'text'],
    ['groups', 'json'],
    ['key_hash', 'text'],
    ['status', 'text'],
    ['expires_at', 'int64'],
    ['created_at', 'int64'],
    ['ended_at', 'int64'],
  ],
  values: (r) => [
    r.id,
    r.name,
    r.parentId,
    r.rootId,
    r.startedBy,
    json(r.groups),
    r.keyHash,
    r.status,
    r.expiresAt,
    r.createdAt,
    r.endedAt,
  ],
  fromRow: (row, codec) => ({
    id: String(row.id),
    name: String(row.name),
    parentId: nullableString(row.parent_id),
    rootId: String(row.root_id),
    startedBy: String(row.started_by),
    groups: stringList(codec.json(row.groups, 'workflows', 'groups'), 'workflows', 'groups'),
    keyHash: String(row.key_hash),
    status: String(row.status) as WorkflowRecord['status'],
    expiresAt: nullableNumber(row.expires_at),
    createdAt: Number(row.created_at),
    endedAt: nullableNumber(row.ended_at),
  }),
};

export const AUDIT: TableDefinition<AuditRecord> = {
  name: 'audit',
  columns: [
    ['seq', 'int64'],
    ['ts', 'int64'],
    ['type', 'text'],
    ['actor', 'text'],
    // TEXT, not JSONB, on both: JSONB reorders keys and the hash chain is over the text.
    ['data', 'jsonText'],
    ['prev_hash', 'text'],
    ['hash', 'text'],
    ['chain', 'text'],
    ['chain_seq', 'int64'],
  ],
  values: (r) => [
    r.seq,
    r.ts,
    r.type,
    r.actor,
    json(r.data),
    r.prevHash,
    r.hash,
    r.chain ?? '',
    r.chainSeq ?? r.seq,
  ],
  fromRow: (row) => {
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
      data: jsonColumn<Record<string, unknown>>(row.data, 'audit', 'data'),
      prevHash: String(row.prev_hash),
      hash: String(row.hash),
    };
  },
};

/** Every table a record type maps to (the parity test reads it). */
export const TABLES: readonly TableDefinition<never>[] = [
  SECRETS,
  TICKETS,
  AGENTS,
  AGENT_SSH_KEYS,
  CONNECTIONS,
  RELAYS,
  APPROVALS,
  SESSIONS,
  RECORDINGS,
  WORKFLOWS,
  AUDIT,
] as unknown as readonly TableDefinition<never>[];
