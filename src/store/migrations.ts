/**
 * Versioned schema migrations, applied in order at start. One list for both adapters: each
 * migration is written once against the dialect's type names (`t`), so a new table or
 * column is added in one place (ADR 0022). Never edit a published migration: add a new one.
 * (Migrations 1–8 render to exactly the SQL each adapter shipped with before the lists
 * were merged; test/store/schema.test.ts holds both schemas to one shape.)
 */

/** Column types as each database spells them. */
export interface DialectTypes {
  readonly dialect: 'sqlite' | 'postgres';
  /** Milliseconds since the epoch, sequence numbers: INTEGER (SQLite) / BIGINT. */
  readonly int64: string;
  /** Raw bytes: BLOB / BYTEA. */
  readonly bytes: string;
  /**
   * JSON that is read back as a value (lists, maps): TEXT / JSONB. JSON whose exact text
   * matters (the audit chain hashes it) is TEXT on both.
   */
  readonly json: string;
  /** `sql` on PostgreSQL, nothing on SQLite (sequences, NOT NULL added after a backfill). */
  postgresOnly(sql: string): string;
}

export const SQLITE_TYPES: DialectTypes = {
  dialect: 'sqlite',
  int64: 'INTEGER',
  bytes: 'BLOB',
  json: 'TEXT',
  postgresOnly: () => '',
};

export const POSTGRES_TYPES: DialectTypes = {
  dialect: 'postgres',
  int64: 'BIGINT',
  bytes: 'BYTEA',
  json: 'JSONB',
  postgresOnly: (sql) => sql,
};

export interface MigrationDefinition {
  readonly version: number;
  readonly name: string;
  readonly sql: (types: DialectTypes) => string;
}

/** One migration rendered for one database. */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export const MIGRATIONS: readonly MigrationDefinition[] = [
  {
    version: 1,
    name: 'foundation',
    sql: (t) => `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE secrets (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, allow ${t.json} NOT NULL,
  wrapped_key ${t.bytes}, key_id TEXT, ciphertext ${t.bytes}, fingerprint TEXT NOT NULL,
  created_at ${t.int64} NOT NULL, erased_at ${t.int64});
CREATE UNIQUE INDEX secrets_live_name ON secrets(name) WHERE erased_at IS NULL;
CREATE TABLE tickets (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, secret_id TEXT NOT NULL REFERENCES secrets(id),
  principal TEXT NOT NULL, destinations ${t.json} NOT NULL, expires_at ${t.int64}, max_uses INTEGER,
  uses INTEGER NOT NULL DEFAULT 0, parent_id TEXT REFERENCES tickets(id),
  created_at ${t.int64} NOT NULL, revoked_at ${t.int64});
CREATE INDEX tickets_parent ON tickets(parent_id);
CREATE INDEX tickets_secret ON tickets(secret_id);
CREATE INDEX tickets_principal ON tickets(principal);
CREATE TABLE agents (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, groups ${t.json} NOT NULL, key_hash TEXT NOT NULL UNIQUE,
  created_at ${t.int64} NOT NULL, expires_at ${t.int64}, revoked_at ${t.int64});
CREATE UNIQUE INDEX agents_live_name ON agents(name) WHERE revoked_at IS NULL;
CREATE TABLE connections (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, type TEXT NOT NULL, url TEXT NOT NULL,
  credential TEXT, inject_headers ${t.json} NOT NULL, created_at ${t.int64} NOT NULL);
CREATE TABLE audit (
  seq ${t.int64} PRIMARY KEY, ts ${t.int64} NOT NULL, type TEXT NOT NULL, actor TEXT NOT NULL,
  data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
`,
  },
  {
    version: 2,
    name: 'sessions',
    sql: (t) => `
CREATE TABLE sessions (
  id TEXT PRIMARY KEY, frontend TEXT NOT NULL, principal TEXT, connection TEXT,
  started_at ${t.int64} NOT NULL, ended_at ${t.int64} NOT NULL, outcome TEXT NOT NULL, summary TEXT NOT NULL);
CREATE INDEX sessions_started ON sessions(started_at, id);
`,
  },
  {
    version: 3,
    name: 'approvals',
    sql: (t) => `
CREATE TABLE approvals (
  id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, requester TEXT NOT NULL, status TEXT NOT NULL,
  created_at ${t.int64} NOT NULL, expires_at ${t.int64} NOT NULL, data TEXT NOT NULL);
CREATE INDEX approvals_fingerprint ON approvals(fingerprint, requester);
CREATE INDEX approvals_status ON approvals(status, created_at);
`,
  },
  {
    version: 4,
    name: 'connection-rules',
    sql: () => `
ALTER TABLE connections ADD COLUMN rules TEXT NOT NULL DEFAULT '{}';
`,
  },
  {
    version: 5,
    name: 'workflows',
    sql: (t) => `
CREATE TABLE workflows (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, parent_id TEXT REFERENCES workflows(id), root_id TEXT NOT NULL,
  started_by TEXT NOT NULL, groups ${t.json} NOT NULL, key_hash TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
  expires_at ${t.int64}, created_at ${t.int64} NOT NULL, ended_at ${t.int64});
CREATE INDEX workflows_parent ON workflows(parent_id);
CREATE INDEX workflows_root ON workflows(root_id);
CREATE TABLE workflow_tickets (
  workflow_id TEXT NOT NULL REFERENCES workflows(id), ticket_id TEXT NOT NULL REFERENCES tickets(id),
  PRIMARY KEY (workflow_id, ticket_id));
CREATE INDEX workflow_tickets_ticket ON workflow_tickets(ticket_id);
`,
  },
  {
    version: 6,
    name: 'secret-placements',
    sql: (t) => `
ALTER TABLE secrets ADD COLUMN placements ${t.json} NOT NULL DEFAULT '["credential"]';
`,
  },
  {
    version: 7,
    name: 'audit-chains',
    sql: (t) => `
ALTER TABLE audit ADD COLUMN chain TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN chain_seq ${t.int64};
UPDATE audit SET chain_seq = seq;
${t.postgresOnly('ALTER TABLE audit ALTER COLUMN chain_seq SET NOT NULL;\n')}CREATE UNIQUE INDEX audit_chain_seq ON audit(chain, chain_seq);
CREATE TABLE audit_chains (chain TEXT PRIMARY KEY, chain_seq ${t.int64} NOT NULL, hash TEXT NOT NULL);
${t.postgresOnly("CREATE SEQUENCE audit_seq;\nSELECT setval('audit_seq', COALESCE((SELECT MAX(seq) FROM audit), 0) + 1, false);\n")}`,
  },
  {
    version: 8,
    name: 'approval-preview',
    // The cleaned preview of the held operation approvers read (src/approvals/preview.ts).
    sql: () => `
ALTER TABLE approvals ADD COLUMN preview TEXT;
`,
  },
  {
    version: 9,
    name: 'recordings',
    // Full session recordings (docs/recording.md): the sealed chunks live in files (or an
    // object store); this row holds the wrapped data key (NULL once erased), the chained
    // hash the audit record vouches for, and what list filters need.
    sql: (t) => `
CREATE TABLE recordings (
  id TEXT PRIMARY KEY, frontend TEXT NOT NULL, principal TEXT, connection TEXT,
  started_at ${t.int64} NOT NULL, ended_at ${t.int64} NOT NULL, events INTEGER NOT NULL, bytes ${t.int64} NOT NULL,
  chunks INTEGER NOT NULL, hash TEXT NOT NULL, location TEXT NOT NULL, wrapped_key ${t.bytes},
  tickets TEXT NOT NULL, created_at ${t.int64} NOT NULL, erased_at ${t.int64});
CREATE INDEX recordings_started ON recordings(started_at, id);
`,
  },
  {
    version: 10,
    name: 'agent-ssh-keys',
    // SSH public keys registered to agents (docs/frontends/ssh.md, ADR 0023): the public key
    // only; a key is live for one agent at a time (removed rows stay for the audit trail).
    sql: (t) => `
CREATE TABLE agent_ssh_keys (
  id TEXT PRIMARY KEY, agent_id TEXT NOT NULL REFERENCES agents(id), fingerprint TEXT NOT NULL,
  key_type TEXT NOT NULL, public_key TEXT NOT NULL, comment TEXT NOT NULL,
  created_at ${t.int64} NOT NULL, removed_at ${t.int64});
CREATE UNIQUE INDEX agent_ssh_keys_live ON agent_ssh_keys(fingerprint) WHERE removed_at IS NULL;
CREATE INDEX agent_ssh_keys_agent ON agent_ssh_keys(agent_id);
`,
  },
  {
    version: 11,
    name: 'relays',
    // Relays near the targets (docs/relay.md, ADR 0025): a name, the keyed hash of its key,
    // when it was last seen; and the relay a connection's upstream sockets go through.
    sql: (t) => `
CREATE TABLE relays (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, created_at ${t.int64} NOT NULL,
  revoked_at ${t.int64}, last_seen_at ${t.int64}, last_address TEXT);
CREATE UNIQUE INDEX relays_live_name ON relays(name) WHERE revoked_at IS NULL;
ALTER TABLE connections ADD COLUMN via TEXT;
`,
  },
  {
    version: 12,
    name: 'relay-replica',
    // Which gateway replica last saw a session of the relay (console and `relay list`).
    sql: () => `
ALTER TABLE relays ADD COLUMN last_replica TEXT;
`,
  },
  {
    version: 13,
    name: 'sqlite-change-log',
    // SQLite only: the changes each transaction committed (what PostgreSQL sends with
    // NOTIFY), so that other processes on the same file (`serve --workers`, the CLI) hear
    // each change instead of dropping every cache on any foreign commit. Pruned by age;
    // a process that missed pruned rows drops every cache (resync).
    sql: (t) =>
      t.dialect === 'sqlite'
        ? `
CREATE TABLE store_changes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, origin TEXT NOT NULL, at INTEGER NOT NULL, payload TEXT NOT NULL);
`
        : '-- PostgreSQL replicas hear changes through LISTEN/NOTIFY',
  },
];

/** The migrations rendered for one database, in order. */
export function migrationsFor(types: DialectTypes): readonly Migration[] {
  return MIGRATIONS.map((m) => ({ version: m.version, name: m.name, sql: m.sql(types) }));
}

export const SQLITE_MIGRATIONS: readonly Migration[] = migrationsFor(SQLITE_TYPES);
export const POSTGRES_MIGRATIONS: readonly Migration[] = migrationsFor(POSTGRES_TYPES);
