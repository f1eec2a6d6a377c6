/**
 * Every kind of audit record, with its fields (ADR 0017). `AuditLog.append` takes only an
 * `AuditEvent`, so a misspelt type or a missing field is a compile error. The stored
 * record is unchanged: `{ type, actor, data }`, `data` holding exactly the fields given.
 *
 * Records hold ids, names, destinations, codes and keyed fingerprints: never a secret
 * value, a ticket's text or a key. Fields typed `Context` are extra, non-secret fields a
 * caller adds (session id, front-end, source); they never replace the named ones.
 *
 * Adding a kind: add it to `AuditEventFields` and to `AUDIT_EVENTS` (the compiler asks for
 * both), then run `npm run docs:errors`, which also regenerates the table in docs/audit.md
 * (a test keeps the two equal).
 */

type Id = string;
type Ids = readonly string[];
/** An ISO 8601 time, or null for none. */
type Iso = string | null;
/** Extra non-secret fields a caller adds (session, front-end, workflow, source). */
type Context = { readonly [field: string]: unknown };
/** The workflow and node a record belongs to, when its principal is a workflow node. */
type WorkflowTags = { readonly workflow?: string; readonly subtask?: string };

/** The fields of each kind of record, by type. */
export interface AuditEventFields {
  // ---- home and keys ------------------------------------------------------------
  'home.init': {
    readonly store: string;
    readonly masterKey: string;
    readonly masterKeySource: 'env' | 'file';
  };
  'keys.rotate': { readonly phase: string; readonly previousKey: string; readonly newKey: string } & Context;

  // ---- the log itself (ADR 0015) -------------------------------------------------
  'audit.chain.opened': { readonly chain: Id };
  'audit.checkpoint': {
    readonly chains: { readonly [chain: string]: { readonly chainSeq: number; readonly hash: string } };
  };

  // ---- secrets ------------------------------------------------------------------
  'secret.add': {
    readonly secret: Id;
    readonly name: string;
    readonly kind: string;
    readonly allow: Ids;
    readonly placements: Ids;
    readonly fingerprint: string;
  };
  'secret.update': {
    readonly secret: Id;
    readonly name: string;
    readonly allow: Ids;
    readonly placements: Ids;
  };
  'secret.erase': { readonly secret: Id; readonly name: string; readonly fingerprint: string };
  'credential.inject': {
    readonly secret: Id;
    readonly fingerprint: string;
    readonly target: string;
    readonly operation: string | null;
  } & WorkflowTags &
    Context;
  'found.limit': { readonly principal: string; readonly limit: number; readonly windowSeconds: number };

  // ---- tickets ------------------------------------------------------------------
  'token.issue': {
    readonly ticket: Id;
    readonly secret: Id;
    readonly principal: string;
    readonly destinations: Ids;
    readonly expiresAt: Iso;
    readonly maxUses: number | null;
  } & WorkflowTags;
  'token.narrow': {
    readonly ticket: Id;
    readonly parent: Id;
    readonly secret: Id;
    readonly principal: string;
    readonly destinations: Ids;
    readonly expiresAt: Iso;
    readonly maxUses: number | null;
  } & WorkflowTags;
  'token.reissue': {
    readonly ticket: Id;
    readonly secret: Id;
    readonly principal: string;
    readonly parent: Id | null;
    readonly destinations: Ids;
    readonly expiresAt: Iso;
    readonly maxUses: number | null;
  } & Context;
  'token.revoke': { readonly ticket: Id };
  'token.revoke.tree': { readonly ticket: Id; readonly revoked: Ids };
  'token.exchange': {
    readonly ticket: Id;
    readonly secret: Id;
    readonly fingerprint: string;
    readonly target: string;
    readonly placement: string;
    readonly operation: string | null;
  } & WorkflowTags &
    Context;
  'token.refused': {
    readonly code: string;
    readonly ticket: Id | null;
    /** Keyed fingerprint of what was presented when no ticket was found; null otherwise. */
    readonly presented: string | null;
    readonly checkedAt?: 'commit';
    readonly target: string;
    readonly placement: string;
    readonly operation: string | null;
  } & WorkflowTags &
    Context;

  // ---- agents and connections ---------------------------------------------------
  'agent.create': {
    readonly agent: Id;
    readonly name: string;
    readonly groups: Ids;
    readonly expiresAt: Iso;
  };
  'agent.revoke': { readonly agent: Id; readonly name: string };
  'agent.sshkey.add': {
    readonly agent: Id;
    readonly name: string;
    readonly key: Id;
    readonly fingerprint: string;
    readonly keyType: string;
  };
  'agent.sshkey.remove': {
    readonly agent: Id;
    readonly name: string;
    readonly key: Id;
    readonly fingerprint: string;
  };
  'connection.add': {
    readonly connection: Id;
    readonly name: string;
    readonly type: string;
    readonly url: string;
    readonly credential: string | null;
    readonly secrets: Ids;
    readonly rules: Readonly<Record<string, unknown>>;
    /** The relay its upstream sockets go through, when it names one. */
    readonly via?: string;
  };
  'connection.remove': { readonly name: string };

  // ---- relays (docs/relay.md) -----------------------------------------------------
  'relay.create': { readonly relay: Id; readonly name: string };
  'relay.revoke': { readonly relay: Id; readonly name: string };
  'relay.connect': {
    readonly relay: Id;
    readonly name: string;
    readonly session: Id;
    readonly source: string;
  };
  'relay.disconnect': {
    readonly relay: Id;
    readonly name: string;
    readonly session: Id;
    readonly source: string;
    /** Why it ended: closed by the relay, revoked, the gateway stopping, an error code. */
    readonly reason: string;
    readonly streams: number;
  };
  'relay.refuse': { readonly source: string; readonly code: string; readonly relay?: Id };

  // ---- workflows ----------------------------------------------------------------
  'workflow.start': WorkflowNodeFields;
  'workflow.spawn': WorkflowNodeFields;
  'workflow.end': WorkflowEndFields;
  'workflow.revoke': WorkflowEndFields;

  // ---- policy and approvals -----------------------------------------------------
  'policy.decision': {
    readonly action: string;
    readonly resource: string;
    readonly effect: string;
    readonly policies: Ids;
    readonly source: string;
    readonly summary: string;
    readonly errors?: Ids | undefined;
  };
  'approval.request': {
    readonly approval: Id;
    readonly connection: string;
    readonly action: string;
    readonly summary: string;
    readonly approvers: Ids;
    readonly quorum: number;
  };
  'approval.approve': ApprovalDecisionFields;
  'approval.deny': ApprovalDecisionFields;
  'approval.use': { readonly approval: Id; readonly connection: string };

  // ---- gateway and front-ends ---------------------------------------------------
  'gateway.auth.refused': {
    readonly frontend: string;
    readonly session: Id;
    readonly code: string;
    readonly presented: string;
  } & WorkflowTags;
  'gateway.denied': {
    readonly frontend: string;
    readonly session: Id;
    readonly connection: string;
    readonly operation: string;
    readonly reasons: Ids;
  } & WorkflowTags;
  'gateway.proxy.refused': ProxyHostFields;
  'gateway.proxy.tunnel': ProxyHostFields;
  'postgres.query': PostgresSessionFields & { readonly statements: readonly object[] };
  'postgres.login.refused': {
    readonly session: Id;
    readonly user: string;
    readonly connection: string;
    readonly code: string;
    readonly reason: string;
    readonly remote: string;
  };
  'llm.request': {
    readonly session: Id;
    readonly connection: string;
    readonly endpoint: string;
    readonly model: string;
    readonly promptSecrets: number;
    readonly attachments: number;
    readonly tickets: Ids;
  };
  'ssh.hostkey.rotated': { readonly fingerprint: string; readonly previous: string | null };
  'ssh.hostkey.trusted': {
    readonly connection: string;
    readonly host: string;
    readonly port: number;
    readonly keyType: string;
    readonly fingerprint: string;
  } & Context;
  'ssh.login.refused': {
    readonly session: Id;
    readonly user: string;
    readonly connection: string;
    readonly code: string;
    readonly reason: string;
    readonly remote: string;
  };
  'ssh.channel': {
    readonly session: Id;
    readonly connection: string;
    /** exec, shell, sftp, forward, or the refused request (auth-agent, x11, env, tcpip-forward, …). */
    readonly kind: string;
    /** exec: the command line as forwarded, cleaned of tickets, secrets and findings. */
    readonly command?: string;
    /** forward: the target host:port. */
    readonly target?: string;
    /** `ok`, or the refusal's code. */
    readonly outcome: string;
    readonly exitCode?: number | null;
  };
  'mcp.call': {
    readonly session: Id;
    readonly connection: string;
    readonly tool: string;
    readonly outcome: string;
    readonly tickets: Ids;
  };

  // ---- session recordings (docs/recording.md, ADR 0018) ------------------------------
  'recording.sealed': {
    readonly session: Id;
    readonly frontend: string;
    readonly connection: string | null;
    /** Hex SHA-256 over the sealed chunks, chained: `audit verify` recomputes it from the stored file. */
    readonly hash: string;
    readonly chunks: number;
    readonly bytes: number;
    readonly events: number;
    readonly dropped: number;
    /** Parts written while the session ran, before the last one (ADR 0024); absent or 0: one file. */
    readonly parts?: number;
  };
  'recording.degraded': {
    readonly session: Id;
    readonly frontend: string;
    readonly connection: string | null;
    /** `refused`: the session was refused; `metadata`: recorded as metadata only; `dropped`: the content was not kept. */
    readonly action: 'refused' | 'metadata' | 'dropped';
    readonly reason: 'queue-full' | 'write-failed';
  };
  'recording.erased': {
    readonly session: Id;
    readonly reason: 'retention-age' | 'retention-size' | 'operator';
  };
  'sessions.pruned': {
    /** Session rows that started before this (epoch ms) were deleted. */
    readonly before: number;
    readonly count: number;
  };
}

type WorkflowNodeFields = {
  readonly workflow: Id;
  readonly subtask: Id;
  readonly parent: Id | null;
  readonly name: string;
  readonly principal: string;
  readonly startedBy: string;
  readonly expiresAt: Iso;
  /** The secrets the node may be given tickets for. */
  readonly secrets: Ids;
};
type WorkflowEndFields = { readonly workflow: Id; readonly subtask: Id; readonly nodes: Ids };
type ApprovalDecisionFields = {
  readonly approval: Id;
  readonly approver: string;
  readonly status: string;
  readonly approvals: number;
  readonly quorum: number;
  readonly validUntil: Iso;
  readonly singleUse: boolean;
  readonly reason: string | null;
};
type ProxyHostFields = {
  readonly frontend: string;
  readonly session: Id;
  readonly host: string;
  readonly port: number;
};
/** What every `postgres.query` record of one session carries. */
export type PostgresSessionFields = { readonly session: Id; readonly connection: string };

export type AuditEventType = keyof AuditEventFields;

/** One audit record to append: its type, who acted, and that type's fields. */
export type AuditEvent = {
  [K in AuditEventType]: { readonly type: K; readonly actor: string; readonly data: AuditEventFields[K] };
}[AuditEventType];

/** Every kind, with when it is written: docs/audit.md's table is generated from this. */
export const AUDIT_EVENTS: { readonly [K in AuditEventType]: string } = {
  'home.init': 'a home and its store were initialised (store driver, master key id and source)',
  'keys.rotate': 'a master-key rotation phase committed (add, activate, rewrap, retire)',
  'audit.chain.opened':
    "a replica opened its own audit chain (main chain; the chain's first record follows it)",
  'audit.checkpoint':
    'the committed head of every replica chain, on the main chain (every 5 s, at close, as an anchor)',
  'secret.add': 'a secret was added (id, name, kind, destinations, placements, fingerprint)',
  'secret.update': "a secret's destinations or placements were replaced",
  'secret.erase': "a secret's data key and ciphertext were destroyed",
  'credential.inject': "a connection's own credential was released to the gateway (before release)",
  'found.limit': 'a principal passed the found-secret registration limit (first refusal in a window)',
  'token.issue': 'a ticket was issued',
  'token.narrow': 'a child ticket was derived, never wider than its parent',
  'token.reissue': 'a ticket was handed back for a secret found in a response or in text',
  'token.revoke': 'a ticket was revoked (the record names the root)',
  'token.revoke.tree': 'the descendants revoked with it (same transaction)',
  'token.exchange': 'a ticket was exchanged for its secret (durable before release)',
  'token.refused': 'an exchange was refused (code; a keyed fingerprint of an unknown ticket)',
  'agent.create': 'an agent and its key were created',
  'agent.revoke': 'an agent was revoked',
  'agent.sshkey.add': 'an SSH public key was registered to an agent (its SHA256 fingerprint)',
  'agent.sshkey.remove': "an agent's SSH key was removed (its SSH sessions end)",
  'connection.add': 'a connection was registered',
  'connection.remove': 'a connection was removed',
  'relay.create': 'a relay and its key were created',
  'relay.revoke': 'a relay was revoked; its sessions were dropped',
  'relay.connect': 'a relay opened a session to the gateway',
  'relay.disconnect': "a relay's session ended",
  'relay.refuse': 'a relay session was refused (unknown, malformed or revoked key)',
  'workflow.start': 'a workflow root was started',
  'workflow.spawn': 'a subtask was spawned below a workflow node',
  'workflow.end': 'a workflow node and its subtree ended; their tickets expired',
  'workflow.revoke': 'a workflow node and its subtree were revoked with their tickets',
  'policy.decision': 'a policy decision (effect, policies, bounded summary)',
  'approval.request': 'an approval was requested for an operation',
  'approval.approve': 'an approver approved (status, approvals against quorum)',
  'approval.deny': 'an approver denied',
  'approval.use': 'an approval was used (a single-use one is spent in the same transaction)',
  'gateway.auth.refused': 'a front-end refused a key or token (keyed fingerprint of what was presented)',
  'gateway.denied': 'policy denied an operation on a front-end',
  'gateway.proxy.refused': 'the forward proxy refused a channel to a host nothing is bound to',
  'gateway.proxy.tunnel':
    'the forward proxy passed an unbound host through uninspected (`unboundHosts: tunnel`)',
  'postgres.query': 'a batch of PostgreSQL statements (class, decision, duration, rows, scrubbed text)',
  'postgres.login.refused': 'a PostgreSQL login was refused',
  'llm.request': 'a request was forwarded to an LLM provider (model, counts, tickets used)',
  'ssh.hostkey.rotated':
    "the SSH front-end's host key was replaced (fingerprints of the new and the previous key)",
  'ssh.hostkey.trusted':
    "an ssh connection with --host-key tofu recorded its upstream's host key at the first connection (later keys must match)",
  'ssh.login.refused': 'an SSH login was refused',
  'ssh.channel':
    'an SSH channel request (exec with its cleaned command line and exit code, shell, sftp, a port forward), carried or refused',
  'mcp.call': 'an MCP tool call, refused or not (tool name and outcome, never arguments)',
  'recording.sealed':
    "a session's full recording was stored (chained hash of its sealed chunks, sizes): `audit verify` checks the stored file against it",
  'recording.degraded':
    'a full recording could not be kept (queue full or write failed): the session was refused, or recorded as metadata only',
  'recording.erased': "a recording's data key was destroyed and its chunks removed (retention or operator)",
  'sessions.pruned':
    'session rows (the metadata of requests and sessions) older than recording.retention.maxAge were deleted; the audit records of what they did stay',
};
