/**
 * The store operations, written once for both databases (ADR 0022). Queries use `?`
 * placeholders (the PostgreSQL runner numbers them); what differs between the databases is
 * the dialect's: row locks (PostgreSQL only: ADR 0015), how a list of ids is passed, text
 * ordering, and the audit log's position allocation and bulk insert (the adapters' own
 * subclasses). Each adapter supplies a runner (its connection or transaction) and keeps
 * only what is truly its own: connections, transactions, migrations, change feed, errors.
 */
import {
  AGENT_SSH_KEYS,
  AGENTS,
  APPROVALS,
  AUDIT,
  CONNECTIONS,
  RECORDINGS,
  RELAYS,
  type Row,
  type RowCodec,
  SECRETS,
  SESSIONS,
  type TableDefinition,
  TICKETS,
  WORKFLOWS,
} from './schema.js';
import type {
  AgentRecord,
  AgentSshKeyRecord,
  ApprovalRecord,
  AuditChainHead,
  AuditRecord,
  ConnectionRecord,
  LivenessQuery,
  RecordingFilter,
  RecordingRecord,
  RelayRecord,
  SecretRecord,
  SessionFilter,
  SessionRecord,
  StoreOps,
  TicketFilter,
  TicketRecord,
  WorkflowRecord,
} from './types.js';

/** Where queries run: a connection, a pool, or one transaction's connection. */
export interface SqlRunner {
  readonly inTransaction: boolean;
  all(sql: string, params?: readonly unknown[]): Promise<Row[]>;
  /** Row count of a write. */
  run(sql: string, params?: readonly unknown[]): Promise<number>;
  /** `fn` atomically: a new transaction outside one, the current one inside. */
  atomically<T>(fn: (db: SqlRunner) => Promise<T>): Promise<T>;
}

export interface SqlDialect {
  readonly codec: RowCodec;
  /** After ORDER BY a text column: byte order on both (SQLite's BINARY collation). */
  readonly textOrder: string;
  /**
   * In the subquery that picks the rows a change makes dead (revoke, erase, end, expire):
   * PostgreSQL locks them FOR UPDATE, which waits for an exchange's FOR KEY SHARE (ADR 0015).
   */
  readonly lockToKill: string;
  /** As `lockToKill`, in id order (several rows at once cannot deadlock each other). */
  readonly lockToKillOrdered: string;
  /** Taking uses: takers exclude each other, not an exchange's FOR KEY SHARE. */
  readonly lockToTake: string;
  /** An exchange's liveness read inside its transaction (ADR 0015). */
  readonly lockToRead: string;
  /** The placeholder for a `json` column's value. */
  readonly jsonParam: string;
  /** The position of a substring: `instr` (SQLite) or `strpos` (PostgreSQL); 0 when absent. */
  readonly position: 'instr' | 'strpos';
  /** `IN (…)` or `= ANY(…)` for a list of ids, pushing its parameters. */
  idList(ids: readonly string[], params: unknown[]): string;
}

function insertSql(table: TableDefinition<never>, dialect: SqlDialect): string {
  const names = table.columns.map(([name]) => name).join(', ');
  const marks = table.columns.map(([, kind]) => (kind === 'json' ? dialect.jsonParam : '?')).join(', ');
  return `INSERT INTO ${table.name} (${names}) VALUES (${marks})`;
}

/**
 * `deadAmong` from rows of (id, dead reason or null): every asked id that has no row is
 * `missing`, so an id the store does not know never reads as live.
 */
function deadMap(
  query: {
    readonly tickets: readonly string[];
    readonly agents: readonly string[];
    readonly workflows: readonly string[];
    readonly secrets: readonly string[];
  },
  rows: ReadonlyArray<Record<string, unknown>>,
): Map<string, 'revoked' | 'expired' | 'ended' | 'erased' | 'missing'> {
  const out = new Map<string, 'revoked' | 'expired' | 'ended' | 'erased' | 'missing'>();
  for (const id of [...query.tickets, ...query.agents, ...query.workflows, ...query.secrets])
    out.set(id, 'missing');
  for (const row of rows) {
    const id = String(row.id);
    const dead = row.dead;
    if (dead === null || dead === undefined) out.delete(id);
    else out.set(id, dead as 'revoked' | 'expired' | 'ended' | 'erased');
  }
  return out;
}

export abstract class SqlOps implements StoreOps {
  readonly #inserts = new Map<string, string>();

  constructor(
    protected readonly db: SqlRunner,
    protected readonly dialect: SqlDialect,
  ) {}

  protected async insert<R>(table: TableDefinition<R>, record: R): Promise<void> {
    let sql = this.#inserts.get(table.name);
    if (sql === undefined) {
      sql = insertSql(table as TableDefinition<never>, this.dialect);
      this.#inserts.set(table.name, sql);
    }
    await this.db.run(sql, table.values(record));
  }

  protected async one<R>(
    table: TableDefinition<R>,
    sql: string,
    params: readonly unknown[],
  ): Promise<R | null> {
    const row = (await this.db.all(sql, params))[0];
    return row === undefined ? null : table.fromRow(row, this.dialect.codec);
  }

  protected async many<R>(
    table: TableDefinition<R>,
    sql: string,
    params: readonly unknown[] = [],
  ): Promise<R[]> {
    const codec = this.dialect.codec;
    return (await this.db.all(sql, params)).map((row) => table.fromRow(row, codec));
  }

  protected async ids(sql: string, params: readonly unknown[]): Promise<string[]> {
    return (await this.db.all(sql, params)).map((row) => String(row.id));
  }

  async getMeta(key: string) {
    const row = (await this.db.all('SELECT value FROM meta WHERE key = ?', [key]))[0];
    return row === undefined ? null : String(row.value);
  }
  async setMeta(key: string, value: string) {
    await this.db.run(
      'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
      [key, value],
    );
  }

  // ---- secrets --------------------------------------------------------------------------

  insertSecret(r: SecretRecord) {
    return this.insert(SECRETS, r);
  }
  getSecretByName(name: string) {
    return this.one(SECRETS, 'SELECT * FROM secrets WHERE name = ? AND erased_at IS NULL', [name]);
  }
  getSecretById(id: string) {
    return this.one(SECRETS, 'SELECT * FROM secrets WHERE id = ?', [id]);
  }
  listSecrets() {
    return this.many(
      SECRETS,
      `SELECT * FROM secrets WHERE erased_at IS NULL ORDER BY name${this.dialect.textOrder}`,
    );
  }
  // Every change that makes a row dead picks it with the dialect's lock first: on PostgreSQL
  // that conflicts with the FOR KEY SHARE lock `deadAmong` holds for an exchange in flight (a
  // plain UPDATE would not), so a revocation and an exchange that depends on it wait for
  // each other (ADR 0015).
  async eraseSecret(id: string, at: number) {
    const count = await this.db.run(
      `UPDATE secrets SET wrapped_key = NULL, key_id = NULL, ciphertext = NULL, erased_at = ? WHERE id IN (SELECT id FROM secrets WHERE id = ? AND erased_at IS NULL${this.dialect.lockToKill})`,
      [at, id],
    );
    return count === 1;
  }
  async updateSecretKey(id: string, wrappedKey: Buffer, keyId: string) {
    await this.db.run('UPDATE secrets SET wrapped_key = ?, key_id = ? WHERE id = ? AND erased_at IS NULL', [
      wrappedKey,
      keyId,
      id,
    ]);
  }
  async updateSecretBindings(id: string, allow: readonly string[], placements: readonly string[]) {
    const j = this.dialect.jsonParam;
    const count = await this.db.run(
      `UPDATE secrets SET allow = ${j}, placements = ${j} WHERE id = ? AND erased_at IS NULL`,
      [JSON.stringify(allow), JSON.stringify(placements), id],
    );
    return count === 1;
  }

  // ---- tickets --------------------------------------------------------------------------

  insertTicket(r: TicketRecord) {
    return this.insert(TICKETS, r);
  }
  getTicketByHash(hash: string) {
    return this.one(TICKETS, 'SELECT * FROM tickets WHERE hash = ?', [hash]);
  }
  getTicketById(id: string) {
    return this.one(TICKETS, 'SELECT * FROM tickets WHERE id = ?', [id]);
  }
  listTickets(filter: TicketFilter) {
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
    params.push(filter.limit ?? 1000);
    const sql = `SELECT * FROM tickets ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, id${this.dialect.textOrder} LIMIT ?`;
    return this.many(TICKETS, sql, params);
  }
  revokeTicketTree(id: string, at: number) {
    // UNION (not UNION ALL) so even a damaged, cyclic parent chain terminates.
    return this.ids(
      `WITH RECURSIVE tree(id) AS (
         SELECT id FROM tickets WHERE id = ?
         UNION SELECT t.id FROM tickets t JOIN tree ON t.parent_id = tree.id)
       UPDATE tickets SET revoked_at = ? WHERE id IN (SELECT id FROM tickets WHERE id IN (SELECT id FROM tree) AND revoked_at IS NULL${this.dialect.lockToKill}) RETURNING id`,
      [id, at],
    );
  }
  revokeTicketsOfSecret(secretId: string, at: number) {
    return this.ids(
      `UPDATE tickets SET revoked_at = ? WHERE id IN (SELECT id FROM tickets WHERE secret_id = ? AND revoked_at IS NULL${this.dialect.lockToKill}) RETURNING id`,
      [at, secretId],
    );
  }
  async consumeUses(ids: readonly string[]) {
    if (ids.length === 0) return true;
    // Lock the limited rows (in id order, so overlapping chains cannot deadlock), check
    // every one has a use left, then take one from each: all or nothing, across replicas.
    // Under READ COMMITTED, the lock waits for a concurrent taker and then sees its write.
    // SQLite: one writer, and the adapter runs each operation whole under its mutex.
    return this.db.atomically(async (db) => {
      const params: unknown[] = [];
      const list = this.dialect.idList(ids, params);
      const limited = await db.all(
        `SELECT id, uses, max_uses FROM tickets WHERE id ${list} AND max_uses IS NOT NULL${this.dialect.lockToTake}`,
        params,
      );
      if (limited.some((row) => Number(row.uses) >= Number(row.max_uses))) return false;
      if (limited.length > 0) {
        const takeParams: unknown[] = [];
        const takeList = this.dialect.idList(
          limited.map((row) => String(row.id)),
          takeParams,
        );
        await db.run(`UPDATE tickets SET uses = uses + 1 WHERE id ${takeList}`, takeParams);
      }
      return true;
    });
  }
  expireTickets(ids: readonly string[], at: number) {
    if (ids.length === 0) return Promise.resolve([]);
    const params: unknown[] = [at];
    const list = this.dialect.idList(ids, params);
    params.push(at);
    return this.ids(
      `UPDATE tickets SET expires_at = ? WHERE id IN (SELECT id FROM tickets WHERE id ${list} AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)${this.dialect.lockToKillOrdered}) RETURNING id`,
      params,
    );
  }

  // ---- agents ---------------------------------------------------------------------------

  insertAgent(r: AgentRecord) {
    return this.insert(AGENTS, r);
  }
  getAgentByName(name: string) {
    return this.one(AGENTS, 'SELECT * FROM agents WHERE name = ? AND revoked_at IS NULL', [name]);
  }
  getAgentById(id: string) {
    return this.one(AGENTS, 'SELECT * FROM agents WHERE id = ?', [id]);
  }
  getAgentByKeyHash(keyHash: string) {
    return this.one(AGENTS, 'SELECT * FROM agents WHERE key_hash = ?', [keyHash]);
  }
  listAgents() {
    return this.many(AGENTS, `SELECT * FROM agents ORDER BY name${this.dialect.textOrder}, created_at`);
  }
  async revokeAgent(id: string, at: number) {
    const count = await this.db.run(
      `UPDATE agents SET revoked_at = ? WHERE id IN (SELECT id FROM agents WHERE id = ? AND revoked_at IS NULL${this.dialect.lockToKill})`,
      [at, id],
    );
    return count === 1;
  }

  insertAgentSshKey(r: AgentSshKeyRecord) {
    return this.insert(AGENT_SSH_KEYS, r);
  }
  getLiveAgentSshKey(fingerprint: string) {
    return this.one(
      AGENT_SSH_KEYS,
      'SELECT * FROM agent_ssh_keys WHERE fingerprint = ? AND removed_at IS NULL',
      [fingerprint],
    );
  }
  listAgentSshKeys(agentId: string, includeRemoved: boolean) {
    return this.many(
      AGENT_SSH_KEYS,
      `SELECT * FROM agent_ssh_keys WHERE agent_id = ? AND (CAST(? AS INTEGER) = 1 OR removed_at IS NULL) ORDER BY created_at, id${this.dialect.textOrder}`,
      [agentId, includeRemoved ? 1 : 0],
    );
  }
  async removeAgentSshKey(id: string, at: number) {
    const count = await this.db.run(
      `UPDATE agent_ssh_keys SET removed_at = ? WHERE id IN (SELECT id FROM agent_ssh_keys WHERE id = ? AND removed_at IS NULL${this.dialect.lockToKill})`,
      [at, id],
    );
    return count === 1;
  }

  // ---- connections ----------------------------------------------------------------------

  insertConnection(r: ConnectionRecord) {
    return this.insert(CONNECTIONS, r);
  }
  getConnection(name: string) {
    return this.one(CONNECTIONS, 'SELECT * FROM connections WHERE name = ?', [name]);
  }
  listConnections() {
    return this.many(CONNECTIONS, `SELECT * FROM connections ORDER BY name${this.dialect.textOrder}`);
  }
  async deleteConnection(name: string) {
    return (await this.db.run('DELETE FROM connections WHERE name = ?', [name])) === 1;
  }

  // ---- relays ---------------------------------------------------------------------------

  insertRelay(r: RelayRecord) {
    return this.insert(RELAYS, r);
  }
  getRelayByName(name: string) {
    return this.one(RELAYS, 'SELECT * FROM relays WHERE name = ? AND revoked_at IS NULL', [name]);
  }
  getRelayByKeyHash(keyHash: string) {
    return this.one(RELAYS, 'SELECT * FROM relays WHERE key_hash = ?', [keyHash]);
  }
  listRelays() {
    return this.many(RELAYS, `SELECT * FROM relays ORDER BY name${this.dialect.textOrder}, created_at`);
  }
  async revokeRelay(id: string, at: number) {
    const count = await this.db.run(
      `UPDATE relays SET revoked_at = ? WHERE id IN (SELECT id FROM relays WHERE id = ? AND revoked_at IS NULL${this.dialect.lockToKill})`,
      [at, id],
    );
    return count === 1;
  }
  async touchRelay(id: string, at: number, address: string, replica: string) {
    await this.db.run(
      'UPDATE relays SET last_seen_at = ?, last_address = ?, last_replica = ? WHERE id = ? AND revoked_at IS NULL',
      [at, address, replica, id],
    );
  }

  // ---- approvals ------------------------------------------------------------------------

  insertApproval(r: ApprovalRecord) {
    return this.insert(APPROVALS, r);
  }
  getApproval(id: string) {
    return this.one(APPROVALS, 'SELECT * FROM approvals WHERE id = ?', [id]);
  }
  async updateApproval(r: ApprovalRecord, expectedStatus: ApprovalRecord['status']) {
    const count = await this.db.run(
      'UPDATE approvals SET status = ?, expires_at = ?, data = ? WHERE id = ? AND status = ?',
      [r.status, r.expiresAt, JSON.stringify(r.data), r.id, expectedStatus],
    );
    return count === 1;
  }
  findApprovals(fingerprint: string, requester: string) {
    return this.many(
      APPROVALS,
      'SELECT * FROM approvals WHERE fingerprint = ? AND requester = ? ORDER BY created_at DESC, id DESC LIMIT 50',
      [fingerprint, requester],
    );
  }
  listApprovals(filter: { status?: ApprovalRecord['status']; limit?: number }) {
    const status = filter.status ?? null;
    return this.many(
      APPROVALS,
      'SELECT * FROM approvals WHERE (CAST(? AS TEXT) IS NULL OR status = ?) ORDER BY created_at DESC, id DESC LIMIT ?',
      [status, status, filter.limit ?? 100],
    );
  }

  // ---- sessions -------------------------------------------------------------------------

  insertSession(r: SessionRecord) {
    return this.insert(SESSIONS, r);
  }
  getSession(id: string) {
    return this.one(SESSIONS, 'SELECT * FROM sessions WHERE id = ?', [id]);
  }
  listSessions(filter: SessionFilter) {
    const principal = filter.principal ?? null;
    return this.many(
      SESSIONS,
      'SELECT * FROM sessions WHERE started_at < ? AND (CAST(? AS TEXT) IS NULL OR principal = ?) ORDER BY started_at DESC, id DESC LIMIT ?',
      [filter.before ?? Number.MAX_SAFE_INTEGER, principal, principal, filter.limit],
    );
  }

  deleteSessionsBefore(before: number, limit: number) {
    return this.db.run(
      'DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE started_at < ? ORDER BY started_at, id LIMIT ?)',
      [before, limit],
    );
  }

  // ---- recordings -----------------------------------------------------------------------

  insertRecording(r: RecordingRecord) {
    return this.insert(RECORDINGS, r);
  }
  getRecording(id: string) {
    return this.one(RECORDINGS, 'SELECT * FROM recordings WHERE id = ?', [id]);
  }
  listRecordings(filter: RecordingFilter) {
    const order = filter.order === 'oldest' ? 'ASC' : 'DESC';
    const principal = filter.principal ?? null;
    const connection = filter.connection ?? null;
    // A whole ticket id, with the quotes it has in the stored JSON list.
    const ticket = filter.ticket === undefined ? null : JSON.stringify(filter.ticket);
    return this.many(
      RECORDINGS,
      `SELECT * FROM recordings WHERE started_at >= ? AND started_at < ? AND (CAST(? AS TEXT) IS NULL OR principal = ?) AND (CAST(? AS TEXT) IS NULL OR connection = ?) AND (CAST(? AS TEXT) IS NULL OR ${this.dialect.position}(tickets, ?) > 0) AND (CAST(? AS INTEGER) = 0 OR erased_at IS NULL) ORDER BY started_at ${order}, id${this.dialect.textOrder} ${order} LIMIT ?`,
      [
        filter.since ?? 0,
        filter.until ?? Number.MAX_SAFE_INTEGER,
        principal,
        principal,
        connection,
        connection,
        ticket,
        ticket,
        filter.live === true ? 1 : 0,
        filter.limit,
      ],
    );
  }
  async eraseRecording(id: string, at: number) {
    const count = await this.db.run(
      'UPDATE recordings SET wrapped_key = NULL, erased_at = ? WHERE id = ? AND erased_at IS NULL',
      [at, id],
    );
    return count > 0;
  }

  // ---- workflows ------------------------------------------------------------------------

  insertWorkflow(r: WorkflowRecord) {
    return this.insert(WORKFLOWS, r);
  }
  getWorkflow(id: string) {
    return this.one(WORKFLOWS, 'SELECT * FROM workflows WHERE id = ?', [id]);
  }
  getWorkflowByKeyHash(keyHash: string) {
    return this.one(WORKFLOWS, 'SELECT * FROM workflows WHERE key_hash = ?', [keyHash]);
  }
  listWorkflowRuns(limit: number) {
    return this.many(
      WORKFLOWS,
      'SELECT * FROM workflows WHERE parent_id IS NULL ORDER BY created_at DESC, id DESC LIMIT ?',
      [limit],
    );
  }
  listWorkflowSubtree(id: string) {
    return this.many(
      WORKFLOWS,
      `WITH RECURSIVE tree(id) AS (
         SELECT id FROM workflows WHERE id = ?
         UNION SELECT w.id FROM workflows w JOIN tree ON w.parent_id = tree.id)
       SELECT * FROM workflows WHERE id IN (SELECT id FROM tree) ORDER BY created_at, id${this.dialect.textOrder}`,
      [id],
    );
  }
  endWorkflowTree(id: string, status: 'ended' | 'revoked', at: number) {
    return this.ids(
      `WITH RECURSIVE tree(id) AS (
         SELECT id FROM workflows WHERE id = ?
         UNION SELECT w.id FROM workflows w JOIN tree ON w.parent_id = tree.id)
       UPDATE workflows SET status = ?, ended_at = ? WHERE id IN (SELECT id FROM workflows WHERE id IN (SELECT id FROM tree) AND status = 'active'${this.dialect.lockToKill}) RETURNING id`,
      [id, status, at],
    );
  }
  async addWorkflowTicket(workflowId: string, ticketId: string) {
    await this.db.run('INSERT INTO workflow_tickets (workflow_id, ticket_id) VALUES (?, ?)', [
      workflowId,
      ticketId,
    ]);
  }
  listWorkflowTickets(workflowId: string) {
    return this.ids(
      `SELECT t.id FROM workflow_tickets wt JOIN tickets t ON t.id = wt.ticket_id WHERE wt.workflow_id = ? ORDER BY t.created_at, t.id${this.dialect.textOrder}`,
      [workflowId],
    );
  }
  async getTicketWorkflow(ticketId: string) {
    const row = (
      await this.db.all('SELECT workflow_id FROM workflow_tickets WHERE ticket_id = ?', [ticketId])
    )[0];
    return row === undefined ? null : String(row.workflow_id);
  }

  // ---- liveness -------------------------------------------------------------------------

  async deadAmong(q: LivenessQuery, now: number) {
    // Only the kinds this batch names (an exchange usually names no workflow). Inside a
    // PostgreSQL transaction what is read stays locked FOR KEY SHARE (in id order) until
    // commit: a revocation (which locks FOR UPDATE) waits for this exchange to commit, or
    // this read waits for the revocation and then sees it. Exchanges never block one another.
    const lock = this.db.inTransaction ? this.dialect.lockToRead : '';
    const params: unknown[] = [];
    const ctes: string[] = [];
    const selects: string[] = [];
    const expiredOrRevoked = `CASE WHEN revoked_at IS NOT NULL THEN 'revoked' WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 'expired' END`;
    let nows = 0;
    const add = (ids: readonly string[], cte: string, select: string, usesNow: boolean) => {
      if (ids.length === 0) return;
      ctes.push(`${cte.replace('$LIST', this.dialect.idList(ids, params))}${lock})`);
      selects.push(select);
      if (usesNow) nows++;
    };
    // Parameters in text order: every CTE's id list first, then each select's `now`.
    add(
      q.tickets,
      'k_t AS (SELECT id, revoked_at, expires_at FROM tickets WHERE id $LIST',
      `SELECT id, ${expiredOrRevoked} AS dead FROM k_t`,
      true,
    );
    add(
      q.agents,
      'k_a AS (SELECT id, revoked_at, expires_at FROM agents WHERE id $LIST',
      `SELECT id, ${expiredOrRevoked} AS dead FROM k_a`,
      true,
    );
    add(
      q.workflows,
      'k_w AS (SELECT id, status, expires_at FROM workflows WHERE id $LIST',
      `SELECT id, CASE WHEN status <> 'active' THEN 'ended' WHEN expires_at IS NOT NULL AND expires_at <= ? THEN 'expired' END AS dead FROM k_w`,
      true,
    );
    add(
      q.secrets,
      'k_s AS (SELECT id, erased_at FROM secrets WHERE id $LIST',
      `SELECT id, CASE WHEN erased_at IS NOT NULL THEN 'erased' END AS dead FROM k_s`,
      false,
    );
    if (selects.length === 0) return deadMap(q, []);
    for (let i = 0; i < nows; i++) params.push(now);
    const rows = await this.db.all(
      `WITH ${ctes.join(',\n     ')}\n     ${selects.join('\n     UNION ALL ')}`,
      params,
    );
    return deadMap(q, rows);
  }

  // ---- audit ----------------------------------------------------------------------------

  async auditHead() {
    const row = (await this.db.all('SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1'))[0];
    return row === undefined ? null : { seq: Number(row.seq), hash: String(row.hash) };
  }
  async auditChainHead(chain: string) {
    const row = (
      await this.db.all(
        'SELECT seq, chain_seq, hash FROM audit WHERE chain = ? ORDER BY chain_seq DESC LIMIT 1',
        [chain],
      )
    )[0];
    return row === undefined
      ? null
      : { seq: Number(row.seq), chainSeq: Number(row.chain_seq), hash: String(row.hash) };
  }
  abstract allocateAuditSeqs(count: number): Promise<number[]>;
  abstract insertAuditRecords(records: readonly AuditRecord[]): Promise<void>;
  readAuditChain(chain: string, afterChainSeq: number, limit: number) {
    return this.many(
      AUDIT,
      'SELECT * FROM audit WHERE chain = ? AND chain_seq > ? ORDER BY chain_seq LIMIT ?',
      [chain, afterChainSeq, limit],
    );
  }
  async auditChainHeads() {
    const rows = await this.db.all(
      `SELECT chain, chain_seq, hash FROM audit_chains ORDER BY chain${this.dialect.textOrder}`,
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
    await this.db.run(
      'INSERT INTO audit_chains (chain, chain_seq, hash) VALUES (?, ?, ?) ON CONFLICT (chain) DO UPDATE SET chain_seq = excluded.chain_seq, hash = excluded.hash',
      [head.chain, head.chainSeq, head.hash],
    );
  }
  async countAudit() {
    return Number((await this.db.all('SELECT COUNT(*) AS n FROM audit'))[0]?.n ?? 0);
  }
  readAudit(afterSeq: number, limit: number) {
    return this.many(AUDIT, 'SELECT * FROM audit WHERE seq > ? ORDER BY seq LIMIT ?', [afterSeq, limit]);
  }
  tailAudit(limit: number) {
    return this.many(
      AUDIT,
      'SELECT * FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?) AS tail ORDER BY seq',
      [limit],
    );
  }
}

/**
 * Every operation name of an ops object (its class and the classes above it, up to
 * SqlOps), so an adapter can bind them onto its store object or wrap them in its lock.
 */
export function operationNames(ops: SqlOps): (keyof StoreOps)[] {
  const names = new Set<string>();
  for (
    let proto = Object.getPrototypeOf(ops) as object | null;
    proto !== null && proto !== Object.prototype;
    proto = Object.getPrototypeOf(proto)
  ) {
    for (const name of Object.getOwnPropertyNames(proto)) {
      if (name === 'constructor') continue;
      if (typeof (proto as Record<string, unknown>)[name] !== 'function') continue;
      names.add(name);
    }
  }
  // Helpers the subclasses call are not operations.
  for (const helper of ['insert', 'one', 'many', 'ids', 'exec']) names.delete(helper);
  return [...names] as (keyof StoreOps)[];
}
