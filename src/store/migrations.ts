/**
 * Versioned schema migrations, one list per driver, applied in order at start. Never
 * edit a published migration: add a new one.
 */
export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export const SQLITE_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'foundation',
    sql: `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE secrets (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, allow TEXT NOT NULL,
  wrapped_key BLOB, key_id TEXT, ciphertext BLOB, fingerprint TEXT NOT NULL,
  created_at INTEGER NOT NULL, erased_at INTEGER);
CREATE UNIQUE INDEX secrets_live_name ON secrets(name) WHERE erased_at IS NULL;
CREATE TABLE tickets (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, secret_id TEXT NOT NULL REFERENCES secrets(id),
  principal TEXT NOT NULL, destinations TEXT NOT NULL, expires_at INTEGER, max_uses INTEGER,
  uses INTEGER NOT NULL DEFAULT 0, parent_id TEXT REFERENCES tickets(id),
  created_at INTEGER NOT NULL, revoked_at INTEGER);
CREATE INDEX tickets_parent ON tickets(parent_id);
CREATE INDEX tickets_secret ON tickets(secret_id);
CREATE INDEX tickets_principal ON tickets(principal);
CREATE TABLE agents (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, groups TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL, expires_at INTEGER, revoked_at INTEGER);
CREATE UNIQUE INDEX agents_live_name ON agents(name) WHERE revoked_at IS NULL;
CREATE TABLE connections (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, type TEXT NOT NULL, url TEXT NOT NULL,
  credential TEXT, inject_headers TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE audit (
  seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, type TEXT NOT NULL, actor TEXT NOT NULL,
  data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
`,
  },
  {
    version: 2,
    name: 'sessions',
    sql: `
CREATE TABLE sessions (
  id TEXT PRIMARY KEY, frontend TEXT NOT NULL, principal TEXT, connection TEXT,
  started_at INTEGER NOT NULL, ended_at INTEGER NOT NULL, outcome TEXT NOT NULL, summary TEXT NOT NULL);
CREATE INDEX sessions_started ON sessions(started_at, id);
`,
  },
  {
    version: 3,
    name: 'approvals',
    sql: `
CREATE TABLE approvals (
  id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, requester TEXT NOT NULL, status TEXT NOT NULL,
  created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX approvals_fingerprint ON approvals(fingerprint, requester);
CREATE INDEX approvals_status ON approvals(status, created_at);
`,
  },
  {
    version: 4,
    name: 'connection-rules',
    sql: `
ALTER TABLE connections ADD COLUMN rules TEXT NOT NULL DEFAULT '{}';
`,
  },
  {
    version: 5,
    name: 'workflows',
    sql: `
CREATE TABLE workflows (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, parent_id TEXT REFERENCES workflows(id), root_id TEXT NOT NULL,
  started_by TEXT NOT NULL, groups TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
  expires_at INTEGER, created_at INTEGER NOT NULL, ended_at INTEGER);
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
    sql: `
ALTER TABLE secrets ADD COLUMN placements TEXT NOT NULL DEFAULT '["credential"]';
`,
  },
  {
    version: 7,
    name: 'audit-chains',
    sql: `
ALTER TABLE audit ADD COLUMN chain TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN chain_seq INTEGER;
UPDATE audit SET chain_seq = seq;
CREATE UNIQUE INDEX audit_chain_seq ON audit(chain, chain_seq);
CREATE TABLE audit_chains (chain TEXT PRIMARY KEY, chain_seq INTEGER NOT NULL, hash TEXT NOT NULL);
`,
  },
  {
    version: 8,
    name: 'approval-preview',
    // The cleaned preview of the held operation approvers read (src/approvals/preview.ts).
    sql: `
ALTER TABLE approvals ADD COLUMN preview TEXT;
`,
  },
  {
    version: 9,
    name: 'recordings',
    // Full session recordings (docs/recording.md): the sealed chunks live in files (or an
    // object store); this row holds the wrapped data key (NULL once erased), the chained
    // hash the audit record vouches for, and what list filters need.
    sql: `
CREATE TABLE recordings (
  id TEXT PRIMARY KEY, frontend TEXT NOT NULL, principal TEXT, connection TEXT,
  started_at INTEGER NOT NULL, ended_at INTEGER NOT NULL, events INTEGER NOT NULL, bytes INTEGER NOT NULL,
  chunks INTEGER NOT NULL, hash TEXT NOT NULL, location TEXT NOT NULL, wrapped_key BLOB,
  tickets TEXT NOT NULL, created_at INTEGER NOT NULL, erased_at INTEGER);
CREATE INDEX recordings_started ON recordings(started_at, id);
`,
  },
];

export const POSTGRES_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'foundation',
    sql: `
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE secrets (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, allow JSONB NOT NULL,
  wrapped_key BYTEA, key_id TEXT, ciphertext BYTEA, fingerprint TEXT NOT NULL,
  created_at BIGINT NOT NULL, erased_at BIGINT);
CREATE UNIQUE INDEX secrets_live_name ON secrets(name) WHERE erased_at IS NULL;
CREATE TABLE tickets (
  id TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, secret_id TEXT NOT NULL REFERENCES secrets(id),
  principal TEXT NOT NULL, destinations JSONB NOT NULL, expires_at BIGINT, max_uses INTEGER,
  uses INTEGER NOT NULL DEFAULT 0, parent_id TEXT REFERENCES tickets(id),
  created_at BIGINT NOT NULL, revoked_at BIGINT);
CREATE INDEX tickets_parent ON tickets(parent_id);
CREATE INDEX tickets_secret ON tickets(secret_id);
CREATE INDEX tickets_principal ON tickets(principal);
CREATE TABLE agents (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, groups JSONB NOT NULL, key_hash TEXT NOT NULL UNIQUE,
  created_at BIGINT NOT NULL, expires_at BIGINT, revoked_at BIGINT);
CREATE UNIQUE INDEX agents_live_name ON agents(name) WHERE revoked_at IS NULL;
CREATE TABLE connections (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, type TEXT NOT NULL, url TEXT NOT NULL,
  credential TEXT, inject_headers JSONB NOT NULL, created_at BIGINT NOT NULL);
CREATE TABLE audit (
  seq BIGINT PRIMARY KEY, ts BIGINT NOT NULL, type TEXT NOT NULL, actor TEXT NOT NULL,
  data TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
`,
  },
  {
    version: 2,
    name: 'sessions',
    sql: `
CREATE TABLE sessions (
  id TEXT PRIMARY KEY, frontend TEXT NOT NULL, principal TEXT, connection TEXT,
  started_at BIGINT NOT NULL, ended_at BIGINT NOT NULL, outcome TEXT NOT NULL, summary TEXT NOT NULL);
CREATE INDEX sessions_started ON sessions(started_at, id);
`,
  },
  {
    version: 3,
    name: 'approvals',
    sql: `
CREATE TABLE approvals (
  id TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, requester TEXT NOT NULL, status TEXT NOT NULL,
  created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, data TEXT NOT NULL);
CREATE INDEX approvals_fingerprint ON approvals(fingerprint, requester);
CREATE INDEX approvals_status ON approvals(status, created_at);
`,
  },
  {
    version: 4,
    name: 'connection-rules',
    sql: `
ALTER TABLE connections ADD COLUMN rules TEXT NOT NULL DEFAULT '{}';
`,
  },
  {
    version: 5,
    name: 'workflows',
    sql: `
CREATE TABLE workflows (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, parent_id TEXT REFERENCES workflows(id), root_id TEXT NOT NULL,
  started_by TEXT NOT NULL, groups JSONB NOT NULL, key_hash TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
  expires_at BIGINT, created_at BIGINT NOT NULL, ended_at BIGINT);
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
    sql: `
ALTER TABLE secrets ADD COLUMN placements JSONB NOT NULL DEFAULT '["credential"]';
`,
  },
  {
    version: 7,
    name: 'audit-chains',
    sql: `
ALTER TABLE audit ADD COLUMN chain TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN chain_seq BIGINT;
UPDATE audit SET chain_seq = seq;
ALTER TABLE audit ALTER COLUMN chain_seq SET NOT NULL;
CREATE UNIQUE INDEX audit_chain_seq ON audit(chain, chain_seq);
CREATE TABLE audit_chains (chain TEXT PRIMARY KEY, chain_seq BIGINT NOT NULL, hash TEXT NOT NULL);
CREATE SEQUENCE audit_seq;
SELECT setval('audit_seq', COALESCE((SELECT MAX(seq) FROM audit), 0) + 1, false);
`,
  },
  {
    version: 8,
    name: 'approval-preview',
    // The cleaned preview of the held operation approvers read (src/approvals/preview.ts).
    sql: `
ALTER TABLE approvals ADD COLUMN preview TEXT;
`,
  },
  {
    version: 9,
    name: 'recordings',
    // Full session recordings (docs/recording.md): the sealed chunks live in files (or an
    // object store); this row holds the wrapped data key (NULL once erased), the chained
    // hash the audit record vouches for, and what list filters need.
    sql: `
CREATE TABLE recordings (
  id TEXT PRIMARY KEY, frontend TEXT NOT NULL, principal TEXT, connection TEXT,
  started_at BIGINT NOT NULL, ended_at BIGINT NOT NULL, events INTEGER NOT NULL, bytes BIGINT NOT NULL,
  chunks INTEGER NOT NULL, hash TEXT NOT NULL, location TEXT NOT NULL, wrapped_key BYTEA,
  tickets TEXT NOT NULL, created_at BIGINT NOT NULL, erased_at BIGINT);
CREATE INDEX recordings_started ON recordings(started_at, id);
`,
  },
];
