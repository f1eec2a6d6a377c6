/**
 * Store ports. Services depend on these interfaces only; the SQLite (embedded default)
 * and PostgreSQL (several replicas) adapters implement them and pass one contract suite
 * (test/store/contract.ts). All times are epoch milliseconds.
 */

export interface SecretRecord {
  readonly id: string;
  readonly name: string;
  readonly kind: string;
  /** Canonical destinations (`conn:…`, `host:…`) the secret may be released to. */
  readonly allow: readonly string[];
  /**
   * Canonical placements (`credential`, `header`, `query`, `body`, `path`, `sql:CONNECTION`)
   * a ticket for this secret may stand in. Secrets stored before placements existed read
   * as `['credential']`.
   */
  readonly placements: readonly string[];
  /** Data key sealed under the master key; null once the secret is erased. */
  readonly wrappedKey: Buffer | null;
  /** Id of the master key that sealed `wrappedKey`. */
  readonly keyId: string | null;
  /** Value sealed under the data key; null once erased. */
  readonly ciphertext: Buffer | null;
  /** Keyed fingerprint of the value (for audit and matching), never the value. */
  readonly fingerprint: string;
  readonly createdAt: number;
  readonly erasedAt: number | null;
}

export interface TicketRecord {
  readonly id: string;
  /** HMAC of the ticket text under the lookup key. The ticket itself is never stored. */
  readonly hash: string;
  readonly secretId: string;
  /** Principal reference the ticket is bound to (`agent:agt_…`). */
  readonly principal: string;
  readonly destinations: readonly string[];
  readonly expiresAt: number | null;
  readonly maxUses: number | null;
  readonly uses: number;
  readonly parentId: string | null;
  readonly createdAt: number;
  readonly revokedAt: number | null;
}

export interface AgentRecord {
  readonly id: string;
  readonly name: string;
  readonly groups: readonly string[];
  readonly keyHash: string;
  readonly createdAt: number;
  readonly expiresAt: number | null;
  readonly revokedAt: number | null;
}

/**
 * An SSH public key registered to an agent (`agent add-ssh-key`): the agent logs in to the
 * SSH front-end with it (ADR 0023). Only the public key is kept.
 */
export interface AgentSshKeyRecord {
  readonly id: string;
  readonly agentId: string;
  /** `SHA256:…` of the key blob, as OpenSSH prints it. */
  readonly fingerprint: string;
  /** `ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`… */
  readonly keyType: string;
  /** The key blob, base64 (the second field of an OpenSSH public key line). */
  readonly publicKey: string;
  /** The key line's comment, cleaned and bounded (shown in lists). */
  readonly comment: string;
  readonly createdAt: number;
  readonly removedAt: number | null;
}

export interface ConnectionRecord {
  readonly id: string;
  readonly name: string;
  readonly type: string;
  readonly url: string;
  /** Name of the secret the gateway injects itself (never a literal). */
  readonly credential: string | null;
  /** Header templates such as `Bearer {{secret:github}}`. */
  readonly injectHeaders: Readonly<Record<string, string>>;
  /** Statement rules (PostgreSQL front-end): readOnly, blockDdl, rowLimit, maskColumns, ... */
  readonly rules: Readonly<Record<string, unknown>>;
  /** The relay its upstream sockets go through (docs/relay.md); null: dialled directly. */
  readonly via: string | null;
  readonly createdAt: number;
}

export interface RelayRecord {
  readonly id: string;
  readonly name: string;
  readonly keyHash: string;
  readonly createdAt: number;
  readonly revokedAt: number | null;
  /** When a session of this relay last connected or sent its heartbeat (any replica). */
  readonly lastSeenAt: number | null;
  /** The source address of that session, as the gateway saw it. */
  readonly lastAddress: string | null;
  /** The gateway replica that session is on (host name and process id). */
  readonly lastReplica: string | null;
}

export interface AuditRecord {
  /** Position in the whole log (increasing; PostgreSQL may leave gaps, see ADR 0015). */
  readonly seq: number;
  /**
   * The chain the record belongs to (ADR 0015): absent for the main chain when `chainSeq`
   * equals `seq` (every SQLite record, every record written before chains existed).
   */
  readonly chain?: string;
  /** Position in its chain (1, 2, …, gapless); absent when it equals `seq` on the main chain. */
  readonly chainSeq?: number;
  readonly ts: number;
  readonly type: string;
  readonly actor: string;
  readonly data: Readonly<Record<string, unknown>>;
  readonly prevHash: string;
  readonly hash: string;
}

/** A request for a human decision on one exact operation (see src/approvals/). */
export interface ApprovalRecord {
  readonly id: string;
  /** Hash of the exact operation (and requester); an approval is valid only for it. */
  readonly fingerprint: string;
  readonly requester: string;
  readonly status: 'pending' | 'approved' | 'denied' | 'expired' | 'used';
  readonly createdAt: number;
  /** Pending: when the request lapses. Approved: until when it may be used. */
  readonly expiresAt: number;
  /** Everything else (operation summary, approvers, decisions), as JSON. */
  readonly data: Readonly<Record<string, unknown>>;
  /**
   * The cleaned preview of the exact operation for approvers (src/approvals/preview.ts):
   * at most 64 KiB, written once at insert, display only. Null or absent: none.
   */
  readonly preview?: string | null;
}

/** One recorded data-path session: metadata only (never a header value or a body). */
export interface SessionRecord {
  readonly id: string;
  /** Front-end that served it (`http`). */
  readonly frontend: string;
  readonly principal: string | null;
  readonly connection: string | null;
  readonly startedAt: number;
  readonly endedAt: number;
  /** `ok`, or the error code that ended it. */
  readonly outcome: string;
  /** Protocol-level, scrubbed metadata (method, path, status, sizes, ticket ids, timings). */
  readonly summary: Readonly<Record<string, unknown>>;
}

/**
 * A full session recording (docs/recording.md): its sealed chunks are kept by the
 * recording storage at `location`; the row holds what list filters need, the chained hash
 * the audit record `recording.sealed` vouches for, and the recording's data key wrapped
 * under the keyring's recording key (null once erased: the chunks can no longer be read).
 */
export interface RecordingRecord {
  /** The session id. */
  readonly id: string;
  readonly frontend: string;
  readonly principal: string | null;
  readonly connection: string | null;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly events: number;
  /** Stored (sealed) bytes. */
  readonly bytes: number;
  readonly chunks: number;
  /** Hex SHA-256 over the sealed chunks, chained (recording/format.ts). */
  readonly hash: string;
  /** Where the storage keeps the chunks (a file name under the home's recordings directory). */
  readonly location: string;
  readonly wrappedKey: Buffer | null;
  /** Ticket ids the session used or was handed (search). */
  readonly tickets: readonly string[];
  readonly createdAt: number;
  readonly erasedAt: number | null;
}

export interface RecordingFilter {
  readonly principal?: string;
  readonly connection?: string;
  /** A ticket id the session used or was handed. */
  readonly ticket?: string;
  /** Started at or after (epoch ms). */
  readonly since?: number;
  /** Started before (epoch ms). */
  readonly until?: number;
  /** Only recordings not erased. */
  readonly live?: boolean;
  /** `newest` (default) or `oldest` first (retention walks the oldest). */
  readonly order?: 'newest' | 'oldest';
  readonly limit: number;
}

/** A node of a workflow run: the root (parentId null) or a subtask. See docs/workflows.md. */
export interface WorkflowRecord {
  readonly id: string;
  readonly name: string;
  readonly parentId: string | null;
  readonly rootId: string;
  /** Principal ref of whoever the run was started for (`agent:agt_…`); subtasks inherit it. */
  readonly startedBy: string;
  /** Groups inherited from the starting principal. */
  readonly groups: readonly string[];
  /** HMAC of the node's subtask key under the lookup key. */
  readonly keyHash: string;
  /** Stored status; a passed deadline (`expiresAt`) is computed, not stored. */
  readonly status: 'active' | 'ended' | 'revoked';
  readonly expiresAt: number | null;
  readonly createdAt: number;
  readonly endedAt: number | null;
}

export interface SessionFilter {
  /** Only sessions that started before this (epoch ms): pages back through history. */
  readonly before?: number;
  readonly principal?: string;
  readonly limit: number;
}

export interface TicketFilter {
  readonly secretId?: string;
  readonly principal?: string;
  readonly includeInactive?: boolean;
  readonly now?: number;
  readonly limit?: number;
}

/** Operations available inside a transaction (and, one at a time, outside one). */
export interface StoreOps {
  getMeta(key: string): Promise<string | null>;
  setMeta(key: string, value: string): Promise<void>;

  insertSecret(record: SecretRecord): Promise<void>;
  /** The live (not erased) secret with that name. */
  getSecretByName(name: string): Promise<SecretRecord | null>;
  getSecretById(id: string): Promise<SecretRecord | null>;
  listSecrets(): Promise<SecretRecord[]>;
  /** Destroy the data key and ciphertext; keep a tombstone so tickets report erasure. */
  eraseSecret(id: string, at: number): Promise<boolean>;
  updateSecretKey(id: string, wrappedKey: Buffer, keyId: string): Promise<void>;
  /** Replace a live secret's destinations and placements; false if there is no such live secret. */
  updateSecretBindings(id: string, allow: readonly string[], placements: readonly string[]): Promise<boolean>;

  insertTicket(record: TicketRecord): Promise<void>;
  getTicketByHash(hash: string): Promise<TicketRecord | null>;
  getTicketById(id: string): Promise<TicketRecord | null>;
  listTickets(filter: TicketFilter): Promise<TicketRecord[]>;
  /** Revoke the ticket and every descendant not yet revoked; returns the ids revoked now. */
  revokeTicketTree(id: string, at: number): Promise<string[]>;
  /** Revoke every live ticket of a secret; returns the ids revoked now. */
  revokeTicketsOfSecret(secretId: string, at: number): Promise<string[]>;
  /**
   * Take one use from each ticket in `ids` (a ticket and its ancestors) if every one of
   * them with a limit has a use left; all or nothing. Returns false when exhausted.
   */
  consumeUses(ids: readonly string[]): Promise<boolean>;

  insertAgent(record: AgentRecord): Promise<void>;
  getAgentByName(name: string): Promise<AgentRecord | null>;
  getAgentById(id: string): Promise<AgentRecord | null>;
  getAgentByKeyHash(keyHash: string): Promise<AgentRecord | null>;
  listAgents(): Promise<AgentRecord[]>;
  revokeAgent(id: string, at: number): Promise<boolean>;
  insertAgentSshKey(record: AgentSshKeyRecord): Promise<void>;
  /** The live (not removed) key with this fingerprint, whichever agent it is registered to. */
  getLiveAgentSshKey(fingerprint: string): Promise<AgentSshKeyRecord | null>;
  /** An agent's keys, oldest first; removed ones only with `includeRemoved`. */
  listAgentSshKeys(agentId: string, includeRemoved: boolean): Promise<AgentSshKeyRecord[]>;
  /** Mark a live key removed; false if there is no such live key. */
  removeAgentSshKey(id: string, at: number): Promise<boolean>;

  insertConnection(record: ConnectionRecord): Promise<void>;
  getConnection(name: string): Promise<ConnectionRecord | null>;
  listConnections(): Promise<ConnectionRecord[]>;
  deleteConnection(name: string): Promise<boolean>;

  insertRelay(record: RelayRecord): Promise<void>;
  /** The live (not revoked) relay with that name. */
  getRelayByName(name: string): Promise<RelayRecord | null>;
  getRelayByKeyHash(keyHash: string): Promise<RelayRecord | null>;
  listRelays(): Promise<RelayRecord[]>;
  revokeRelay(id: string, at: number): Promise<boolean>;
  /** Note that a live relay's session was seen now, from `address`. */
  touchRelay(id: string, at: number, address: string, replica: string): Promise<void>;

  insertApproval(record: ApprovalRecord): Promise<void>;
  getApproval(id: string): Promise<ApprovalRecord | null>;
  /** Replace status, expiry and data if the stored status is still `expectedStatus`; false otherwise. */
  updateApproval(record: ApprovalRecord, expectedStatus: ApprovalRecord['status']): Promise<boolean>;
  /** Approvals for an operation fingerprint and requester, newest first. */
  findApprovals(fingerprint: string, requester: string): Promise<ApprovalRecord[]>;
  listApprovals(filter: { status?: ApprovalRecord['status']; limit?: number }): Promise<ApprovalRecord[]>;
  insertSession(record: SessionRecord): Promise<void>;
  getSession(id: string): Promise<SessionRecord | null>;
  /** Newest first. */
  listSessions(filter: SessionFilter): Promise<SessionRecord[]>;
  /** Delete up to `limit` session rows that started before `before` (oldest first); how many went. */
  deleteSessionsBefore(before: number, limit: number): Promise<number>;

  insertRecording(record: RecordingRecord): Promise<void>;
  getRecording(id: string): Promise<RecordingRecord | null>;
  listRecordings(filter: RecordingFilter): Promise<RecordingRecord[]>;
  /** Destroy the recording's data key (its chunks become unreadable); false if absent or erased already. */
  eraseRecording(id: string, at: number): Promise<boolean>;

  insertWorkflow(record: WorkflowRecord): Promise<void>;
  getWorkflow(id: string): Promise<WorkflowRecord | null>;
  getWorkflowByKeyHash(keyHash: string): Promise<WorkflowRecord | null>;
  /** The node and every node below it, oldest first. */
  listWorkflowSubtree(id: string): Promise<WorkflowRecord[]>;
  /** Workflow runs (root nodes), newest first. */
  listWorkflowRuns(limit: number): Promise<WorkflowRecord[]>;
  /** Set `status` on the node and every still-active node below it; returns the ids changed now. */
  endWorkflowTree(id: string, status: 'ended' | 'revoked', at: number): Promise<string[]>;
  /** Record that a ticket belongs to a workflow node. */
  addWorkflowTicket(workflowId: string, ticketId: string): Promise<void>;
  /** Ids of the tickets that belong to a node, oldest first. */
  listWorkflowTickets(workflowId: string): Promise<string[]>;
  /** The node a ticket belongs to, if any. */
  getTicketWorkflow(ticketId: string): Promise<string | null>;
  /** Make live tickets expire at `at` (those not revoked and expiring later); returns the ids changed. */
  expireTickets(ids: readonly string[], at: number): Promise<string[]>;

  /**
   * Which of these ids no longer allow a release, and why: tickets revoked or expired,
   * agents revoked or expired, workflow nodes no longer active (or past their deadline),
   * secrets erased; ids with no row are `missing`. The exchange runs this inside the
   * transaction that writes its audit record (ADR 0013). Live ids are absent from the map.
   * Inside a PostgreSQL transaction it also locks the rows it read (FOR KEY SHARE) until
   * commit, and every revocation locks the rows it changes FOR UPDATE first: a revocation
   * and an exchange that depends on it wait for each other, with or without the global
   * lock (ADR 0015).
   */
  deadAmong(query: LivenessQuery, now: number): Promise<Map<string, DeadReason>>;

  /** The last audit record's seq and hash, or null for an empty log. */
  auditHead(): Promise<{ seq: number; hash: string } | null>;
  /**
   * The last record of one chain (`''`: the main chain), or null if it has none. Inside a
   * PostgreSQL transaction, reading the main chain's head takes the audit lock first, so
   * main-chain appends are one at a time across replicas (ADR 0004, 0015).
   */
  auditChainHead(chain: string): Promise<{ seq: number; chainSeq: number; hash: string } | null>;
  /**
   * `count` fresh, increasing log positions for records about to be inserted. PostgreSQL:
   * from a sequence (no lock; a rolled-back transaction leaves a gap); SQLite: after the
   * last record (its one writer makes that safe).
   */
  allocateAuditSeqs(count: number): Promise<number[]>;
  /** Records of one chain with chainSeq > afterChainSeq, in chain order, at most `limit`. */
  readAuditChain(chain: string, afterChainSeq: number, limit: number): Promise<AuditRecord[]>;
  /** The committed head of every chain other than the main one (ADR 0015). */
  auditChainHeads(): Promise<AuditChainHead[]>;
  /** Record a chain's head; written in the transaction that appends to the chain. */
  setAuditChainHead(head: AuditChainHead): Promise<void>;
  /** How many audit records there are in all. */
  countAudit(): Promise<number>;
  insertAuditRecords(records: readonly AuditRecord[]): Promise<void>;
  /** Records with seq > afterSeq, ascending, at most `limit`. */
  readAudit(afterSeq: number, limit: number): Promise<AuditRecord[]>;
  /** The last `limit` records, ascending. */
  tailAudit(limit: number): Promise<AuditRecord[]>;
}

export interface AuditChainHead {
  readonly chain: string;
  /** 0 for a chain that was opened but has no record yet. */
  readonly chainSeq: number;
  readonly hash: string;
}

/**
 * `global` (the default): one transaction at a time across every replica (ADR 0004), for
 * read-modify-write work off the request path. `rows`: no global lock; the transaction
 * relies on row locks alone (ADR 0015: audit appends to a replica's own chain, session
 * recordings). SQLite has one writer either way.
 */
export interface TransactionOptions {
  readonly lock?: 'global' | 'rows';
}

/** Ids whose liveness an exchange depends on (see `deadAmong`). */
export interface LivenessQuery {
  readonly tickets: readonly string[];
  readonly agents: readonly string[];
  readonly workflows: readonly string[];
  readonly secrets: readonly string[];
}

export type DeadReason = 'revoked' | 'expired' | 'ended' | 'erased' | 'missing';

export interface StoreTx extends StoreOps {
  /** Run `fn` in a savepoint: if it throws, only its writes are undone and the error rethrown. */
  savepoint<T>(fn: () => Promise<T>): Promise<T>;
  /**
   * Tell every replica about a change if, and only if, this transaction commits (and not
   * if the savepoint it was sent in is rolled back). PostgreSQL: NOTIFY in the
   * transaction; SQLite: published to local listeners right after COMMIT.
   */
  notify(change: StoreChange): Promise<void>;
}

/** A change another replica must hear about (cache invalidation). */
export type StoreChange =
  | { readonly type: 'ticket.revoked'; readonly ids: readonly string[] }
  | { readonly type: 'secret.erased'; readonly id: string }
  | { readonly type: 'secret.added'; readonly id: string }
  /** A secret's destinations or placements changed: cached tickets must be re-read. */
  | { readonly type: 'secret.updated'; readonly id: string }
  | { readonly type: 'agent.revoked'; readonly id: string }
  /** An agent's SSH key was removed (its id): SSH sessions that logged in with it end. */
  | { readonly type: 'agent.sshkey.removed'; readonly id: string }
  /** Workflow nodes ended or revoked (ids): live sessions of their subtask keys end. */
  | { readonly type: 'workflow.ended'; readonly ids: readonly string[] }
  | { readonly type: 'keys.rotated' }
  | { readonly type: 'approval.changed'; readonly id: string }
  | { readonly type: 'connection.changed'; readonly name: string }
  /** A relay was revoked: every replica drops its sessions at once. */
  | { readonly type: 'relay.revoked'; readonly id: string }
  /**
   * Caches must drop everything: changes may have been missed (the PostgreSQL adapter's
   * LISTEN connection was lost and re-established, or a change was too large to send).
   * The SQLite adapter emits it when another connection (another process) committed.
   */
  | { readonly type: 'resync' };

export interface Store extends StoreOps {
  readonly driver: 'sqlite' | 'postgres';
  /** Human-readable location without credentials. */
  readonly location: string;
  /** Apply pending migrations (versioned, in order, each in its own transaction). */
  migrate(): Promise<void>;
  transaction<T>(fn: (tx: StoreTx) => Promise<T>, options?: TransactionOptions): Promise<T>;
  /**
   * Run `fn` over one consistent view of everything committed (PostgreSQL: a read-only
   * REPEATABLE READ transaction without locks; SQLite: its one writer commits in log
   * order, so plain reads are consistent). `audit verify` reads through it.
   */
  readSnapshot<T>(fn: (ops: StoreOps) => Promise<T>): Promise<T>;
  /**
   * A consistent copy of everything committed, written to a new file at `path` (never
   * over an existing one), with the audit head it contains. SQLite only; PostgreSQL
   * stores are backed up with the database's own tools.
   */
  backupTo(path: string): Promise<{ readonly auditHead: { seq: number; hash: string } | null }>;
  /** Tell every replica (including this one) about a change. */
  publish(change: StoreChange): Promise<void>;
  /**
   * Whether this replica has heard every change committed before now (or will hear it
   * before anything it reads next): false while the PostgreSQL LISTEN connection is down
   * or has missed its heartbeat. Caches must neither serve nor fill while it is false.
   * SQLite: checks for a foreign commit first (and emits `resync` if there was one).
   * Synchronous and cheap: called on every cache hit.
   */
  feedCurrent(): boolean;
  subscribe(listener: (change: StoreChange) => void): () => void;
  close(): Promise<void>;
}
