import { EventEmitter } from 'node:events';
import { chmodSync, closeSync, existsSync, openSync } from 'node:fs';
import Database from 'better-sqlite3';
import { CoatcheckError } from '../core/errors.js';
import { SQLITE_MIGRATIONS } from './migrations.js';
import { Mutex } from './mutex.js';
import { deadMap, jsonColumn, nullableNumber, stringArrayColumn } from './rows.js';
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

type Row = Record<string, unknown>;

function secretFromRow(row: Row): SecretRecord {
  return {
    id: String(row.id),
    name: String(row.name),
    kind: String(row.kind),
    allow: stringArrayColumn(row.allow, 'secrets', 'allow'),
    placements: stringArrayColumn(row.placements, 'secrets', 'placements'),
    wrappedKey: row.wrapped_key === null ? null : Buffer.from(row.wrapped_key as Uint8Array),
    keyId: row.key_id === null ? null : String(row.key_id),
    ciphertext: row.ciphertext === null ? null : Buffer.from(row.ciphertext as Uint8Array),
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
    destinations: stringArrayColumn(row.destinations, 'tickets', 'destinations'),
    expiresAt: nullableNumber(row.expires_at),
    maxUses: nullableNumber(row.max_uses),
    uses: Number(row.uses),
    parentId: row.parent_id === null ? null : String(row.parent_id),
    createdAt: Number(row.created_at),
    revokedAt: nullableNumber(row.revoked_at),
  };
}

function agentFromRow(row: Row): AgentRecord {
  return {
    id: String(row.id),
    name: String(row.name),
    groups: stringArrayColumn(row.groups, 'agents', 'groups'),
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
    credential: row.credential === null ? null : String(row.credential),
    injectHeaders: jsonColumn<Record<string, string>>(row.inject_headers, 'connections', 'inject_headers'),
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
    principal: row.principal === null ? null : String(row.principal),
    connection: row.connection === null ? null : String(row.connection),
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
    groups: stringArrayColumn(row.groups, 'workflows', 'groups'),
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
    data: jsonColumn<Record<string, unknown>>(row.data, 'audit', 'data'),
    prevHash: String(row.prev_hash),
    hash: String(row.hash),
  };
}

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

class SqliteOps implements StoreOps {
  /** Prepared statements by SQL text: preparing costs more than most of our queries. */
  readonly #statements = new Map<string, Database.Statement>();

  constructor(protected readonly db: Database.Database) {}

  protected prepare(sql: string): Database.Statement {
    let statement = this.#statements.get(sql);
    if (statement === undefined) {
      statement = this.db.prepare(sql);
      // Queries are fixed strings plus placeholder lists; bound the cache all the same.
      if (this.#statements.size > 500) this.#statements.clear();
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  protected all(sql: string, ...params: unknown[]): Row[] {
    try {
      return this.prepare(sql).all(...params) as Row[];
    } catch (error) {
      translate(error);
    }
  }

  protected get(sql: string, ...params: unknown[]): Row | undefined {
    try {
      return this.prepare(sql).get(...params) as Row | undefined;
    } catch (error) {
      translate(error);
    }
  }

  protected run(sql: string, ...params: unknown[]): number {
    try {
      return this.prepare(sql).run(...params).changes;
    } catch (error) {
      translate(error);
    }
  }

  async getMeta(key: string) {
    const row = this.get('SELECT value FROM meta WHERE key = ?', key);
    return row === undefined ? null : String(row.value);
  }
  async setMeta(key: string, value: string) {
    this.run(
      'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
      key,
      value,
    );
  }

  async insertSecret(r: SecretRecord) {
    this.run(
      'INSERT INTO secrets (id, name, kind, allow, placements, wrapped_key, key_id, ciphertext, fingerprint, created_at, erased_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
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
    );
  }
  async getSecretByName(name: string) {
    const row = this.get('SELECT * FROM secrets WHERE name = ? AND erased_at IS NULL', name);
    return row === undefined ? null : secretFromRow(row);
  }
  async getSecretById(id: string) {
    const row = this.get('SELECT * FROM secrets WHERE id = ?', id);
    return row === undefined ? null : secretFromRow(row);
  }
  async listSecrets() {
    return this.all('SELECT * FROM secrets WHERE erased_at IS NULL ORDER BY name').map(secretFromRow);
  }
  async eraseSecret(id: string, at: number) {
    return (
      this.run(
        'UPDATE secrets SET wrapped_key = NULL, key_id = NULL, ciphertext = NULL, erased_at = ? WHERE id = ? AND erased_at IS NULL',
        at,
        id,
      ) === 1
    );
  }
  async updateSecretKey(id: string, wrappedKey: Buffer, keyId: string) {
    this.run(
      'UPDATE secrets SET wrapped_key = ?, key_id = ? WHERE id = ? AND erased_at IS NULL',
      wrappedKey,
      keyId,
      id,
    );
  }
  async updateSecretBindings(id: string, allow: readonly string[], placements: readonly string[]) {
    return (
      this.run(
        'UPDATE secrets SET allow = ?, placements = ? WHERE id = ? AND erased_at IS NULL',
        JSON.stringify(allow),
        JSON.stringify(placements),
        id,
      ) === 1
    );
  }

  async insertTicket(r: TicketRecord) {
    this.run(
      'INSERT INTO tickets (id, hash, secret_id, principal, destinations, expires_at, max_uses, uses, parent_id, created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
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
    );
  }
  async getTicketByHash(hash: string) {
    const row = this.get('SELECT * FROM tickets WHERE hash = ?', hash);
    return row === undefined ? null : ticketFromRow(row);
  }
  async getTicketById(id: string) {
    const row = this.get('SELECT * FROM tickets WHERE id = ?', id);
    return row === undefined ? null : ticketFromRow(row);
  }
  async listTickets(filter: TicketFilter) {
    const where: string[] = [];
    const params: unknown[] = [];
    if (filter.secretId !== undefined) {
      where.push('secret_id = ?');
      params.push(filter.secretId);
    }
    if (filter.principal !== undefined) {
      where.push('principal = ?');
      params.push(filter.principal);
    }
    if (!filter.includeInactive) {
      where.push('revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)');
      params.push(filter.now ?? Date.now());
    }
    const sql = `SELECT * FROM tickets ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id LIMIT ?`;
    params.push(filter.limit ?? 1000);
    return this.all(sql, ...params).map(ticketFromRow);
  }
  async revokeTicketTree(id: string, at: number) {
    return this.all(
      `WITH RECURSIVE tree(id) AS (
         SELECT id FROM tickets WHERE id = ?
         UNION ALL SELECT t.id FROM tickets t JOIN tree ON t.parent_id = tree.id)
       UPDATE tickets SET revoked_at = ? WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL RETURNING id`,
      id,
      at,
    ).map((row) => String(row.id));
  }
  async revokeTicketsOfSecret(secretId: string, at: number) {
    return this.all(
      'UPDATE tickets SET revoked_at = ? WHERE secret_id = ? AND revoked_at IS NULL RETURNING id',
      at,
      secretId,
    ).map((row) => String(row.id));
  }
  async consumeUses(ids: readonly string[]) {
    if (ids.length === 0) return true;
    const marks = ids.map(() => '?').join(', ');
    const limited = this.all(
      `SELECT id, uses, max_uses FROM tickets WHERE id IN (${marks}) AND max_uses IS NOT NULL`,
      ...ids,
    );
    if (limited.some((row) => Number(row.uses) >= Number(row.max_uses))) return false;
    if (limited.length > 0) {
      this.run(
        `UPDATE tickets SET uses = uses + 1 WHERE id IN (${limited.map(() => '?').join(', ')})`,
        ...limited.map((r) => r.id),
      );
    }
    return true;
  }

  async insertAgent(r: AgentRecord) {
    this.run(
      'INSERT INTO agents (id, name, groups, key_hash, created_at, expires_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?)',
      r.id,
      r.name,
      JSON.stringify(r.groups),
      r.keyHash,
      r.createdAt,
      r.expiresAt,
      r.revokedAt,
    );
  }
  async getAgentByName(name: string) {
    const row = this.get('SELECT * FROM agents WHERE name = ? AND revoked_at IS NULL', name);
    return row === undefined ? null : agentFromRow(row);
  }
  async getAgentById(id: string) {
    const row = this.get('SELECT * FROM agents WHERE id = ?', id);
    return row === undefined ? null : agentFromRow(row);
  }
  async getAgentByKeyHash(keyHash: string) {
    const row = this.get('SELECT * FROM agents WHERE key_hash = ?', keyHash);
    return row === undefined ? null : agentFromRow(row);
  }
  async listAgents() {
    return this.all('SELECT * FROM agents ORDER BY name, created_at').map(agentFromRow);
  }
  async revokeAgent(id: string, at: number) {
    return this.run('UPDATE agents SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL', at, id) === 1;
  }

  async insertConnection(r: ConnectionRecord) {
    this.run(
      'INSERT INTO connections (id, name, type, url, credential, inject_headers, rules, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      r.id,
      r.name,
      r.type,
      r.url,
      r.credential,
      JSON.stringify(r.injectHeaders),
      JSON.stringify(r.rules),
      r.createdAt,
    );
  }
  async getConnection(name: string) {
    const row = this.get('SELECT * FROM connections WHERE name = ?', name);
    return row === undefined ? null : connectionFromRow(row);
  }
  async listConnections() {
    return this.all('SELECT * FROM connections ORDER BY name').map(connectionFromRow);
  }
  async deleteConnection(name: string) {
    return this.run('DELETE FROM connections WHERE name = ?', name) === 1;
  }

  async insertApproval(r: ApprovalRecord) {
    this.run(
      'INSERT INTO approvals (id, fingerprint, requester, status, created_at, expires_at, data, preview) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      r.id,
      r.fingerprint,
      r.requester,
      r.status,
      r.createdAt,
      r.expiresAt,
      JSON.stringify(r.data),
      r.preview ?? null,
    );
  }
  async getApproval(id: string) {
    const row = this.get('SELECT * FROM approvals WHERE id = ?', id);
    return row === undefined ? null : approvalFromRow(row);
  }
  async updateApproval(r: ApprovalRecord, expectedStatus: ApprovalRecord['status']) {
    return (
      this.run(
        'UPDATE approvals SET status = ?, expires_at = ?, data = ? WHERE id = ? AND status = ?',
        r.status,
        r.expiresAt,
        JSON.stringify(r.data),
        r.id,
        expectedStatus,
      ) === 1
    );
  }
  async findApprovals(fingerprint: string, requester: string) {
    return this.all(
      'SELECT * FROM approvals WHERE fingerprint = ? AND requester = ? ORDER BY created_at DESC, id DESC LIMIT 50',
      fingerprint,
      requester,
    ).map(approvalFromRow);
  }
  async listApprovals(filter: { status?: ApprovalRecord['status']; limit?: number }) {
    return this.all(
      'SELECT * FROM approvals WHERE (? IS NULL OR status = ?) ORDER BY created_at DESC, id DESC LIMIT ?',
      filter.status ?? null,
      filter.status ?? null,
      filter.limit ?? 100,
    ).map(approvalFromRow);
  }

  async insertSession(r: SessionRecord) {
    this.run(
      'INSERT INTO sessions (id, frontend, principal, connection, started_at, ended_at, outcome, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      r.id,
      r.frontend,
      r.principal,
      r.connection,
      r.startedAt,
      r.endedAt,
      r.outcome,
      JSON.stringify(r.summary),
    );
  }
  async getSession(id: string) {
    const row = this.get('SELECT * FROM sessions WHERE id = ?', id);
    return row === undefined ? null : sessionFromRow(row);
  }
  async listSessions(filter: SessionFilter) {
    return this.all(
      'SELECT * FROM sessions WHERE started_at < ? AND (? IS NULL OR principal = ?) ORDER BY started_at DESC, id DESC LIMIT ?',
      filter.before ?? Number.MAX_SAFE_INTEGER,
      filter.principal ?? null,
      filter.principal ?? null,
      filter.limit,
    ).map(sessionFromRow);
  }

  async insertRecording(r: RecordingRecord) {
    this.run(
      'INSERT INTO recordings (id, frontend, principal, connection, started_at, ended_at, events, bytes, chunks, hash, location, wrapped_key, tickets, created_at, erased_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
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
    );
  }
  async getRecording(id: string) {
    const row = this.get('SELECT * FROM recordings WHERE id = ?', id);
    return row === undefined ? null : recordingFromRow(row);
  }
  async listRecordings(filter: RecordingFilter) {
    const order = filter.order === 'oldest' ? 'ASC' : 'DESC';
    return this.all(
      `SELECT * FROM recordings WHERE started_at >= ? AND started_at < ? AND (? IS NULL OR principal = ?) AND (? IS NULL OR connection = ?) AND (? IS NULL OR instr(tickets, ?) > 0) AND (? = 0 OR erased_at IS NULL) ORDER BY started_at ${order}, id ${order} LIMIT ?`,
      filter.since ?? 0,
      filter.until ?? Number.MAX_SAFE_INTEGER,
      filter.principal ?? null,
      filter.principal ?? null,
      filter.connection ?? null,
      filter.connection ?? null,
      filter.ticket ?? null,
      filter.ticket === undefined ? null : JSON.stringify(filter.ticket),
      filter.live === true ? 1 : 0,
      filter.limit,
    ).map(recordingFromRow);
  }
  async eraseRecording(id: string, at: number) {
    return (
      this.run(
        'UPDATE recordings SET wrapped_key = NULL, erased_at = ? WHERE id = ? AND erased_at IS NULL',
        at,
        id,
      ) > 0
    );
  }

  async insertWorkflow(r: WorkflowRecord) {
    this.run(
      'INSERT INTO workflows (id, name, parent_id, root_id, started_by, groups, key_hash, status, expires_at, created_at, ended_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
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
    );
  }
  async getWorkflow(id: string) {
    const row = this.get('SELECT * FROM workflows WHERE id = ?', id);
    return row === undefined ? null : workflowFromRow(row);
  }
  async getWorkflowByKeyHash(keyHash: string) {
    const row = this.get('SELECT * FROM workflows WHERE key_hash = ?', keyHash);
    return row === undefined ? null : workflowFromRow(row);
  }
  async listWorkflowRuns(limit: number) {
    return this.all(
      'SELECT * FROM workflows WHERE parent_id IS NULL ORDER BY created_at DESC, id DESC LIMIT ?',
      limit,
    ).map(workflowFromRow);
  }
  async listWorkflowSubtree(id: string) {
    return this.all(
      `WITH RECURSIVE tree(id) AS (
         SELECT id FROM workflows WHERE id = ?
         UNION SELECT w.id FROM workflows w JOIN tree ON w.parent_id = tree.id)
       SELECT * FROM workflows WHERE id IN (SELECT id FROM tree) ORDER BY created_at, id`,
      id,
    ).map(workflowFromRow);
  }
  async endWorkflowTree(id: string, status: 'ended' | 'revoked', at: number) {
    return this.all(
      `WITH RECURSIVE tree(id) AS (
         SELECT id FROM workflows WHERE id = ?
         UNION SELECT w.id FROM workflows w JOIN tree ON w.parent_id = tree.id)
       UPDATE workflows SET status = ?, ended_at = ? WHERE id IN (SELECT id FROM tree) AND status = 'active' RETURNING id`,
      id,
      status,
      at,
    ).map((row) => String(row.id));
  }
  async addWorkflowTicket(workflowId: string, ticketId: string) {
    this.run('INSERT INTO workflow_tickets (workflow_id, ticket_id) VALUES (?, ?)', workflowId, ticketId);
  }
  async listWorkflowTickets(workflowId: string) {
    return this.all(
      'SELECT t.id FROM workflow_tickets wt JOIN tickets t ON t.id = wt.ticket_id WHERE wt.workflow_id = ? ORDER BY t.created_at, t.id',
      workflowId,
    ).map((row) => String(row.id));
  }
  async getTicketWorkflow(ticketId: string) {
    const row = this.get('SELECT workflow_id FROM workflow_tickets WHERE ticket_id = ?', ticketId);
    return row === undefined ? null : String(row.workflow_id);
  }
  async expireTickets(ids: readonly string[], at: number) {
    if (ids.length === 0) return [];
    return this.all(
      `UPDATE tickets SET expires_at = ? WHERE id IN (${ids.map(() => '?').join(', ')}) AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?) RETURNING id`,
      at,
      ...ids,
      at,
    ).map((row) => String(row.id));
  }

  async deadAmong(q: LivenessQuery, now: number) {
    // Only the kinds this batch names (an exchange usually names no workflow), with the
    // ids as parameters (index lookups, no JSON to parse) unless a list is long.
    const parts: string[] = [];
    const params: unknown[] = [];
    const ids = (list: readonly string[]): string => {
      if (list.length > 32) {
        params.push(JSON.stringify(list));
        return '(SELECT value FROM json_each(?))';
      }
      params.push(...list);
      return `(${list.map(() => '?').join(', ')})`;
    };
    if (q.tickets.length > 0) {
      params.push(now);
      parts.push(
        `SELECT id, CASE WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 'expired' END AS dead FROM tickets WHERE id IN ${ids(q.tickets)}`,
      );
    }
    if (q.agents.length > 0) {
      params.push(now);
      parts.push(
        `SELECT id, CASE WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 'expired' END AS dead FROM agents WHERE id IN ${ids(q.agents)}`,
      );
    }
    if (q.workflows.length > 0) {
      params.push(now);
      parts.push(
        `SELECT id, CASE WHEN status <> 'active' THEN 'ended' WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 'expired' END AS dead FROM workflows WHERE id IN ${ids(q.workflows)}`,
      );
    }
    if (q.secrets.length > 0) {
      parts.push(
        `SELECT id, CASE WHEN erased_at IS NOT NULL THEN 'erased' END AS dead FROM secrets WHERE id IN ${ids(q.secrets)}`,
      );
    }
    if (parts.length === 0) return deadMap(q, []);
    const rows = this.all(parts.join('\n       UNION ALL '), ...params);
    return deadMap(q, rows);
  }

  async auditHead() {
    const row = this.get('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1');
    return row === undefined ? null : { seq: Number(row.seq), hash: String(row.hash) };
  }
  async auditChainHead(chain: string) {
    const row = this.get(
      'SELECT seq, chain_seq, hash FROM audit WHERE chain = ? ORDER BY chain_seq DESC LIMIT 1',
      chain,
    );
    return row === undefined
      ? null
      : { seq: Number(row.seq), chainSeq: Number(row.chain_seq), hash: String(row.hash) };
  }
  async allocateAuditSeqs(count: number) {
    // One writer (BEGIN IMMEDIATE): the positions after the last record are free.
    const row = this.get('SELECT MAX(seq) AS seq FROM audit');
    const last = nullableNumber(row?.seq) ?? 0;
    return Array.from({ length: Math.max(0, count) }, (_, i) => last + i + 1);
  }
  async readAuditChain(chain: string, afterChainSeq: number, limit: number) {
    return this.all(
      'SELECT * FROM audit WHERE chain = ? AND chain_seq > ? ORDER BY chain_seq LIMIT ?',
      chain,
      afterChainSeq,
      limit,
    ).map(auditFromRow);
  }
  async auditChainHeads() {
    return this.all('SELECT chain, chain_seq, hash FROM audit_chains ORDER BY chain').map(
      (row): AuditChainHead => ({
        chain: String(row.chain),
        chainSeq: Number(row.chain_seq),
        hash: String(row.hash),
      }),
    );
  }
  async setAuditChainHead(head: AuditChainHead) {
    this.run(
      'INSERT INTO audit_chains (chain, chain_seq, hash) VALUES (?, ?, ?) ON CONFLICT (chain) DO UPDATE SET chain_seq = excluded.chain_seq, hash = excluded.hash',
      head.chain,
      head.chainSeq,
      head.hash,
    );
  }
  async countAudit() {
    return Number(this.get('SELECT COUNT(*) AS n FROM audit')?.n ?? 0);
  }
  async insertAuditRecords(records: readonly AuditRecord[]) {
    const statement = this.prepare(
      'INSERT INTO audit (seq, ts, type, actor, data, prev_hash, hash, chain, chain_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    try {
      for (const r of records) {
        statement.run(
          r.seq,
          r.ts,
          r.type,
          r.actor,
          JSON.stringify(r.data),
          r.prevHash,
          r.hash,
          r.chain ?? '',
          r.chainSeq ?? r.seq,
        );
      }
    } catch (error) {
      translate(error);
    }
  }
  async readAudit(afterSeq: number, limit: number) {
    return this.all('SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?', afterSeq, limit).map(
      auditFromRow,
    );
  }
  async tailAudit(limit: number) {
    return this.all('SELECT * FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?) ORDER BY seq', limit).map(
      auditFromRow,
    );
  }
}

class SqliteTx extends SqliteOps implements StoreTx {
  #depth = 0;
  /** Changes to publish once the transaction commits (dropped on rollback). */
  pending: StoreChange[] = [];
  async notify(change: StoreChange) {
    this.pending.push(change);
  }
  async savepoint<T>(fn: () => Promise<T>): Promise<T> {
    const name = `sp${++this.#depth}`;
    this.run(`SAVEPOINT ${name}`);
    const noticesBefore = this.pending.length;
    try {
      const result = await fn();
      this.run(`RELEASE ${name}`);
      return result;
    } catch (error) {
      this.run(`ROLLBACK TO ${name}`);
      this.run(`RELEASE ${name}`);
      this.pending.length = noticesBefore; // the savepoint's notices are undone with it
      throw error;
    } finally {
      this.#depth--;
    }
  }
}

type LockedOps = { [K in keyof StoreOps]: StoreOps[K] };

function lockOps(ops: StoreOps, mutex: Mutex): LockedOps {
  const out: Record<string, unknown> = {};
  const proto = Object.getPrototypeOf(ops) as object;
  for (const name of Object.getOwnPropertyNames(proto)) {
    if (name === 'constructor') continue;
    const method = (ops as unknown as Record<string, unknown>)[name];
    if (typeof method !== 'function') continue;
    out[name] = (...args: unknown[]) =>
      mutex.run(() => (method as (...a: unknown[]) => unknown).apply(ops, args));
  }
  return out as unknown as LockedOps;
}

export interface SqliteStoreOptions {
  /** File path, or ':memory:' for tests. */
  readonly path: string;
}

/**
 * Embedded default store: one SQLite file in WAL mode with full synchronous commits, so
 * a committed audit batch survives a crash. One connection; a mutex keeps async
 * transactions from interleaving on it.
 */
/** How often a foreign commit is looked for (a PRAGMA read, microseconds). */
const DATA_VERSION_POLL_MS = 100;

export async function openSqliteStore(options: SqliteStoreOptions): Promise<Store> {
  let db: Database.Database;
  try {
    if (options.path !== ':memory:' && !existsSync(options.path)) {
      // Owner-only from the first byte; SQLite gives the -wal and -shm files the same mode.
      closeSync(openSync(options.path, 'a', 0o600));
    }
    db = new Database(options.path);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    // Overwrite deleted content, so an erased secret's sealed key does not linger in free pages.
    db.pragma('secure_delete = ON');
    db.pragma('busy_timeout = 5000');
  } catch (error) {
    translate(error);
  }
  const mutex = new Mutex();
  const tx = new SqliteTx(db);
  const events = new EventEmitter();
  // One listener per long-lived component (caches, registries, one per front-end's session
  // registry): a server with every front-end has more than Node's default 10. A per-request
  // subscription would still pass this bound within one burst and be reported.
  events.setMaxListeners(64);
  const snapshotOps = new SqliteOps(db);
  const ops = lockOps(snapshotOps, mutex);

  // Another process (the CLI writing to the store directly, or a tool) commits without
  // telling this one: SQLite's data_version changes exactly when another connection
  // committed, so a changed value makes every cache drop what it holds (resync).
  // Prepared once: it runs on every cache hit, and db.pragma() prepares anew each call
  // (about 70 µs a request on the HTTP path, against about 1 µs prepared).
  const dataVersionStatement = db.prepare('PRAGMA data_version').pluck();
  let dataVersion = dataVersionStatement.get() as number;
  const checkForeignCommit = () => {
    if (!db.open) return;
    const now = dataVersionStatement.get() as number;
    if (now !== dataVersion) {
      dataVersion = now;
      events.emit('change', { type: 'resync' } satisfies StoreChange);
    }
  };
  const watcher = setInterval(checkForeignCommit, DATA_VERSION_POLL_MS);
  watcher.unref();

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
        } catch (error) {
          translate(error);
        }
      });
    },
    // One writer: the lock option changes nothing here.
    transaction<T>(fn: (t: StoreTx) => Promise<T>, _options?: TransactionOptions): Promise<T> {
      return mutex.run(async () => {
        try {
          db.exec('BEGIN IMMEDIATE');
        } catch (error) {
          translate(error);
        }
        tx.pending = [];
        try {
          const result = await fn(tx);
          db.exec('COMMIT');
          const notices = tx.pending;
          tx.pending = [];
          for (const change of notices) events.emit('change', change);
          return result;
        } catch (error) {
          tx.pending = [];
          if (db.inTransaction) db.exec('ROLLBACK');
          if (error instanceof CoatcheckError) throw error;
          translate(error);
        }
      });
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
        reader = new Database(options.path, { readonly: true, fileMustExist: true });
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
      return mutex.run(async () => {
        try {
          const row = db.prepare("SELECT value FROM meta WHERE key = 'audit_head'").get() as
            | { value: string }
            | undefined;
          db.prepare('VACUUM INTO ?').run(path);
          chmodSync(path, 0o600);
          if (row === undefined) return { auditHead: null };
          const [seq, hash] = row.value.split(':');
          return { auditHead: { seq: Number(seq), hash: hash ?? '' } };
        } catch (error) {
          translate(error);
        }
      });
    },
    async publish(change: StoreChange) {
      // Local listeners; other processes see the commit through data_version (resync).
      events.emit('change', change);
    },
    feedCurrent() {
      // A cache hit first looks for a foreign commit (the CLI revoking directly): one
      // prepared PRAGMA read, so a revocation by another process is never served from cache.
      checkForeignCommit();
      return true;
    },
    subscribe(listener) {
      events.on('change', listener);
      return () => events.off('change', listener);
    },
    async close() {
      clearInterval(watcher);
      await mutex.run(() => db.close());
    },
  };
  return store;
}
