import type { AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError, type ErrorCode } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { type Principal, workflowNodeRef } from '../core/principal.js';
import { assertSubtaskKey, mintSubtaskKey } from '../core/ticket-format.js';
import { CacheEpoch } from '../store/cache-epoch.js';
import type { AgentRecord, AuditRecord, Store, WorkflowRecord } from '../store/types.js';
import { KeyedHashMemo, keyedHash } from '../vault/envelope.js';
import { MAX_WORKFLOW_DEPTH, type TicketView, type Vault, validateName } from '../vault/vault.js';

/** A node's status: the stored one, or `expired` once its deadline (or an ancestor's) has passed. */
export type WorkflowStatus = 'active' | 'ended' | 'revoked' | 'expired';

export interface WorkflowView {
  readonly id: string;
  readonly name: string;
  readonly parentId: string | null;
  readonly rootId: string;
  /** The principal ref the node's tickets are bound to (`workflow:wfl_…`, `subtask:wfl_…`). */
  readonly principal: string;
  readonly startedBy: string;
  readonly groups: readonly string[];
  readonly status: WorkflowStatus;
  readonly expiresAt: string | null;
  readonly createdAt: string;
  readonly endedAt: string | null;
}

export interface NodeTicket {
  /** The ticket text: shown once, never stored. */
  readonly ticket: string;
  readonly id: string;
  readonly secret: string;
  /** The environment variable `env` puts it in. */
  readonly envName: string;
  readonly destinations: readonly string[];
  readonly expiresAt: string | null;
  readonly maxUses: number | null;
}

/** What start and spawn hand back: the node, its key (shown once), its tickets, and an environment. */
export interface StartedNode {
  readonly workflow: WorkflowView;
  /** The node's subtask key (`ccs_…`), shown once: its credential at the gateway. */
  readonly key: string;
  readonly tickets: readonly NodeTicket[];
  /** KEY=VALUE pairs for a child process: the key, the tickets, the gateway and proxy settings. */
  readonly env: Readonly<Record<string, string>>;
}

export interface WorkflowEvent {
  readonly seq: number;
  readonly at: string;
  /**
   * `exchange`, `refused`, `credential` (a connection credential injected), `denied` (policy),
   * `reissued` (a secret in a response or prompt became a new ticket bound to the node).
   */
  readonly kind: 'exchange' | 'refused' | 'credential' | 'denied' | 'reissued';
  readonly ticket: string | null;
  readonly secret: string | null;
  readonly target: string | null;
  readonly operation: string | null;
  readonly code: string | null;
  /** When the ticket presented belongs to another node (a refusal): that node's id. */
  readonly ticketOwner: string | null;
  /** Who acted: the node's own principal, or (someone presenting the node's ticket) another one. */
  readonly actor: string;
}

export interface WorkflowTreeNode extends WorkflowView {
  readonly depth: number;
  readonly tickets: readonly TicketView[];
  readonly events: readonly WorkflowEvent[];
}

export interface WorkflowTree {
  readonly root: WorkflowView;
  /** The node asked for and every node below it, depth-first, parents before children. */
  readonly nodes: readonly WorkflowTreeNode[];
}

export interface WorkflowEndpoints {
  /** The HTTP front-end's base URL (`http://127.0.0.1:7080`). */
  readonly http?: string | null;
  /** The forward proxy's URL (`http://127.0.0.1:7090`). */
  readonly proxy?: string | null;
}

export interface WorkflowsOptions {
  readonly defaultTtlMs: number;
  readonly maxTtlMs: number;
  /** Where the gateway listens, for the environment handed to subtasks (read when asked). */
  readonly endpoints: () => WorkflowEndpoints;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/** Names an environment must never take from a secret name: they change how the child runs. */
const RESERVED_ENV = new Set([
  'PATH',
  'HOME',
  'SHELL',
  'USER',
  'PWD',
  'TMPDIR',
  'LANG',
  'NODE_OPTIONS',
  'NODE_PATH',
  'NODE_EXTRA_CA_CERTS',
  'LD_PRELOAD',
  'LD_LIBRARY_PATH',
  'DYLD_INSERT_LIBRARIES',
  'PYTHONPATH',
  'HTTP_PROXY',
  'HTTPS_PROXY',
  'NO_PROXY',
  'ALL_PROXY',
  'SSL_CERT_FILE',
]);

/** `github-token` → `GITHUB_TOKEN`; names that would collide with the runtime's own get a `SECRET_` prefix. */
export function envNameFor(secret: string): string {
  let name = secret.replace(/[^A-Za-z0-9]+/g, '_').toUpperCase();
  if (/^[0-9]/.test(name)) name = `_${name}`;
  if (RESERVED_ENV.has(name) || name.startsWith('COATCHECK_') || name.startsWith('LD_'))
    name = `SECRET_${name}`;
  return name;
}

function refuse(code: ErrorCode, message: string, details?: Record<string, unknown>): CoatcheckError {
  return new CoatcheckError(code, message, details === undefined ? undefined : { details });
}

/** What a subtask key's check reads, as cached (see Workflows.#keys). */
interface KeyStanding {
  /** The key's node, then its ancestors, nearest first. */
  readonly chain: readonly WorkflowRecord[];
  /** The agent that started the run (null: no longer in the store); undefined when no agent did. */
  readonly starter: AgentRecord | null | undefined;
  readonly at: number;
  readonly epoch: number;
}

/**
 * Workflow runs and their subtasks: a tree of principals. Each node has its own key and
 * its own tickets, derived from its parent's (never wider: the vault's narrowing rules).
 * Ending a node expires its tickets and those of every node below it; revoking does the
 * same with revocation. See docs/workflows.md and docs/adr/0006-workflows-and-subtasks.md.
 */
export class Workflows {
  readonly #store: Store;
  readonly #audit: AuditLog;
  readonly #vault: Vault;
  readonly #clock: Clock;
  readonly #lookupKey: Buffer;
  readonly #options: WorkflowsOptions;
  /** Partly started nodes whose rollback (revocation) failed: they stay active until revoked by hand. */
  rollbackFailures = 0;
  /** Told of every failed rollback (the server logs it and counts it in its metrics). */
  onRollbackFailure: (node: string, error: unknown) => void = () => undefined;

  constructor(
    store: Store,
    audit: AuditLog,
    vault: Vault,
    clock: Clock,
    lookupKey: Buffer,
    options: WorkflowsOptions,
  ) {
    this.#store = store;
    this.#audit = audit;
    this.#vault = vault;
    this.#clock = clock;
    this.#lookupKey = lookupKey;
    this.#options = options;
    this.#keyHashes = new KeyedHashMemo(lookupKey);
    this.#epoch = new CacheEpoch(store);
    // What a subtask key's standing is read from changes only by these notices (a node's
    // tree ended or revoked, the starting agent revoked) or by a change the feed may have
    // missed: each drops every cached key at once, and keeps reads in flight out (ADR 0013).
    store.subscribe((change) => {
      if (
        change.type === 'workflow.ended' ||
        change.type === 'agent.revoked' ||
        change.type === 'resync' ||
        change.type === 'keys.rotated'
      ) {
        this.#epoch.bump();
        this.#keys.clear();
      }
    });
  }

  /** Hashes of subtask keys already seen: every request of a subtask presents its key. */
  readonly #keyHashes: KeyedHashMemo;
  readonly #epoch: CacheEpoch;
  /**
   * What a subtask key's check reads (its node, the node's ancestors, the agent that started
   * the run), by key hash, for a few seconds: a subtask authenticates every request, and a
   * node three levels down took five store reads. Deadlines and the agent's expiry are
   * checked against the clock on every use; every change that can end a node or the agent
   * drops the whole cache.
   */
  readonly #keys = new Map<string, KeyStanding>();
  static readonly KEY_CACHE_MS = 5_000;
  static readonly KEY_CACHE_MAX = 10_000;

  /** The records a subtask key's check needs, from the cache or the store (null: no such key). */
  async #standing(hash: string, now: number): Promise<KeyStanding | null> {
    const hit = this.#keys.get(hash);
    if (hit !== undefined && now - hit.at < Workflows.KEY_CACHE_MS && this.#epoch.mayServe(hit.epoch))
      return hit;
    const token = this.#epoch.begin();
    const record = await this.#store.getWorkflowByKeyHash(hash);
    if (record === null) return null;
    const chain = await this.#chain(record);
    const starter = record.startedBy.startsWith('agent:')
      ? await this.#store.getAgentById(record.startedBy.slice('agent:'.length))
      : undefined;
    const standing: KeyStanding = { chain, starter, at: now, epoch: token };
    if (this.#epoch.mayKeep(token)) {
      if (this.#keys.size >= Workflows.KEY_CACHE_MAX) this.#keys.clear();
      this.#keys.set(hash, standing);
    }
    return standing;
  }

  /** The node's status now, taking its ancestors (and their deadlines) into account. */
  #status(chain: readonly WorkflowRecord[], now: number): WorkflowStatus {
    if (chain.some((n) => n.status === 'revoked')) return 'revoked';
    if (chain.some((n) => n.status === 'ended')) return 'ended';
    if (chain.some((n) => n.expiresAt !== null && n.expiresAt <= now)) return 'expired';
    return 'active';
  }

  #view(record: WorkflowRecord, chain: readonly WorkflowRecord[]): WorkflowView {
    return {
      id: record.id,
      name: record.name,
      parentId: record.parentId,
      rootId: record.rootId,
      principal: workflowNodeRef(record.id, record.parentId === null),
      startedBy: record.startedBy,
      groups: record.groups,
      status: this.#status(chain, this.#clock.now()),
      expiresAt: iso(record.expiresAt),
      createdAt: new Date(record.createdAt).toISOString(),
      endedAt: iso(record.endedAt),
    };
  }

  /** The node and its ancestors, nearest first. */
  async #chain(record: WorkflowRecord): Promise<WorkflowRecord[]> {
    const chain = [record];
    let parentId = record.parentId;
    while (parentId !== null) {
      if (chain.length > MAX_WORKFLOW_DEPTH + 1) {
        throw refuse('CC_ERR_STORE_CORRUPT', `workflow node ${record.id} has too many ancestors`, {
          workflow: record.id,
        });
      }
      const parent = await this.#store.getWorkflow(parentId);
      if (parent === null) {
        throw refuse('CC_ERR_STORE_CORRUPT', `workflow node ${record.id} names a missing parent`, {
          workflow: record.id,
        });
      }
      chain.push(parent);
      parentId = parent.parentId;
    }
    return chain;
  }

  async #get(id: string): Promise<WorkflowRecord> {
    const record = /^wfl_[0-9A-Za-z]{1,32}$/.test(id) ? await this.#store.getWorkflow(id) : null;
    if (record === null) throw refuse('CC_ERR_NOT_FOUND', `no workflow or subtask ${id}`, { id });
    return record;
  }

  /** Workflow runs (roots), newest first, with each run's status now. */
  async list(limit = 100): Promise<WorkflowView[]> {
    const roots = await this.#store.listWorkflowRuns(Math.max(1, Math.min(limit, 500)));
    return roots.map((r) => this.#view(r, [r]));
  }

  async get(id: string): Promise<WorkflowView> {
    const record = await this.#get(id);
    return this.#view(record, await this.#chain(record));
  }

  #env(record: WorkflowRecord, key: string, tickets: readonly NodeTicket[]): Record<string, string> {
    const env: Record<string, string> = {
      COATCHECK_SUBTASK_KEY: key,
      COATCHECK_WORKFLOW: record.rootId,
      COATCHECK_SUBTASK: record.id,
    };
    for (const t of tickets) env[t.envName] = t.ticket;
    const endpoints = this.#options.endpoints();
    if (endpoints.http) env.COATCHECK_GATEWAY_URL = endpoints.http;
    if (endpoints.proxy) {
      env.HTTP_PROXY = endpoints.proxy;
      env.HTTPS_PROXY = endpoints.proxy;
      env.http_proxy = endpoints.proxy;
      env.https_proxy = endpoints.proxy;
    }
    return env;
  }

  /** Give each ticket a distinct environment name. */
  #named(tickets: Array<Omit<NodeTicket, 'envName'>>): NodeTicket[] {
    const used = new Set<string>();
    return tickets.map((t) => {
      const base = envNameFor(t.secret);
      let name = base;
      for (let n = 2; used.has(name); n++) name = `${base}_${n}`;
      used.add(name);
      return { ...t, envName: name };
    });
  }

  #checkTtl(ttlMs: number | undefined): void {
    if (
      ttlMs !== undefined &&
      (!Number.isSafeInteger(ttlMs) || ttlMs <= 0 || ttlMs > this.#options.maxTtlMs)
    ) {
      throw refuse(
        'CC_ERR_INVALID_ARGUMENT',
        `--ttl must be positive and at most the maximum ticket lifetime (${this.#options.maxTtlMs / 1000}s)`,
        { field: '--ttl' },
      );
    }
  }

  async #insertNode(
    record: WorkflowRecord,
    actor: string,
    data: { readonly secrets: readonly string[] },
  ): Promise<void> {
    await this.#audit.append(
      {
        type: record.parentId === null ? 'workflow.start' : 'workflow.spawn',
        actor,
        data: {
          workflow: record.rootId,
          subtask: record.id,
          parent: record.parentId,
          name: record.name,
          principal: workflowNodeRef(record.id, record.parentId === null),
          startedBy: record.startedBy,
          expiresAt: iso(record.expiresAt),
          ...data,
        },
      },
      async (tx) => {
        if (record.parentId !== null) {
          const parent = await tx.getWorkflow(record.parentId);
          if (parent === null || parent.status !== 'active') {
            throw refuse('CC_ERR_WORKFLOW_INACTIVE', `workflow node ${record.parentId} is no longer active`, {
              parent: record.parentId,
            });
          }
        }
        await tx.insertWorkflow(record);
      },
    );
  }

  /**
   * Start a workflow run for `principal` (an agent ref): a root node with its own key, and
   * one ticket per secret, bound to the root (`workflow:<id>`), within `destinations`.
   */
  async start(
    input: {
      name: string;
      principal: string;
      groups: readonly string[];
      secrets: readonly string[];
      destinations?: readonly string[];
      ttlMs?: number;
    },
    actor: string,
  ): Promise<StartedNode> {
    validateName(input.name, 'workflow');
    this.#checkTtl(input.ttlMs);
    const now = this.#clock.now();
    const key = mintSubtaskKey();
    const id = newId('wfl');
    const record: WorkflowRecord = {
      id,
      name: input.name,
      parentId: null,
      rootId: id,
      startedBy: input.principal,
      groups: [...input.groups],
      keyHash: keyedHash(this.#lookupKey, key),
      status: 'active',
      expiresAt: now + (input.ttlMs ?? this.#options.defaultTtlMs),
      createdAt: now,
      endedAt: null,
    };
    const secrets = [...new Set(input.secrets)];
    await this.#insertNode(record, actor, { secrets });
    const issued: Array<Omit<NodeTicket, 'envName'>> = [];
    try {
      for (const secret of secrets) {
        const { ticket, view } = await this.#vault.issueTicket(
          {
            secret,
            principal: workflowNodeRef(id, true),
            destinations: input.destinations,
            ttlMs: Math.max(1, record.expiresAt! - this.#clock.now()),
          },
          actor,
          { workflow: id, subtask: id },
        );
        issued.push({
          ticket,
          id: view.id,
          secret,
          destinations: view.destinations,
          expiresAt: view.expiresAt,
          maxUses: view.maxUses,
        });
      }
    } catch (error) {
      // All or nothing: a run that could not get every ticket it asked for does not start.
      return this.#rollback(id, actor, error);
    }
    const tickets = this.#named(issued);
    return { workflow: this.#view(record, [record]), key, tickets, env: this.#env(record, key, tickets) };
  }

  /**
   * Spawn a subtask under a workflow or subtask: its own key, and tickets narrowed from
   * the parent's for the secrets asked for (default: every secret the parent holds).
   */
  async spawn(
    input: {
      parent: string;
      name: string;
      secrets?: readonly string[];
      destinations?: readonly string[];
      ttlMs?: number;
      maxUses?: number;
    },
    actor: string,
  ): Promise<StartedNode> {
    validateName(input.name, 'subtask');
    this.#checkTtl(input.ttlMs);
    const parent = await this.#get(input.parent);
    const chain = await this.#chain(parent);
    const now = this.#clock.now();
    const status = this.#status(chain, now);
    if (status !== 'active') {
      throw refuse('CC_ERR_WORKFLOW_INACTIVE', `workflow node ${parent.id} is ${status}`, {
        parent: parent.id,
        status,
      });
    }
    if (chain.length > MAX_WORKFLOW_DEPTH) {
      throw refuse('CC_ERR_WORKFLOW_TOO_DEEP', `subtasks nest at most ${MAX_WORKFLOW_DEPTH} levels deep`, {
        parent: parent.id,
      });
    }
    // The parent's live tickets, newest per secret.
    const held = new Map<string, TicketView>();
    for (const ticketId of await this.#store.listWorkflowTickets(parent.id)) {
      const view = await this.#vault.inspectTicket(ticketId);
      if (view.status === 'active' && view.secret !== null) held.set(view.secret, view);
    }
    const wanted =
      input.secrets === undefined || input.secrets.length === 0
        ? [...held.keys()]
        : [...new Set(input.secrets)];
    for (const secret of wanted) {
      if (!held.has(secret)) {
        throw refuse(
          'CC_ERR_WORKFLOW_NOT_HELD',
          `workflow node ${parent.id} holds no live ticket for secret ${secret}`,
          {
            parent: parent.id,
            secret,
          },
        );
      }
    }
    // A deadline within the parent's (never later); default: the parent's.
    const parentDeadline = chain.reduce<number | null>(
      (min, n) => (n.expiresAt === null ? min : min === null ? n.expiresAt : Math.min(min, n.expiresAt)),
      null,
    );
    let expiresAt = parentDeadline;
    if (input.ttlMs !== undefined) {
      const requested = now + input.ttlMs;
      if (parentDeadline !== null && requested > parentDeadline) {
        throw refuse(
          'CC_ERR_TICKET_WIDENING',
          `the requested deadline falls after the parent's (${iso(parentDeadline)})`,
          { parent: parent.id },
        );
      }
      expiresAt = requested;
    }
    const key = mintSubtaskKey();
    const record: WorkflowRecord = {
      id: newId('wfl'),
      name: input.name,
      parentId: parent.id,
      rootId: parent.rootId,
      startedBy: parent.startedBy,
      groups: parent.groups,
      keyHash: keyedHash(this.#lookupKey, key),
      status: 'active',
      expiresAt,
      createdAt: now,
      endedAt: null,
    };
    await this.#insertNode(record, actor, { secrets: wanted });
    const issued: Array<Omit<NodeTicket, 'envName'>> = [];
    try {
      for (const secret of wanted) {
        const parentTicket = held.get(secret)!;
        const ttlMs =
          expiresAt !== null && (parentDeadline === null || expiresAt < parentDeadline)
            ? Math.max(1, expiresAt - this.#clock.now())
            : undefined;
        const { ticket, view } = await this.#vault.narrowForSubtask(
          parentTicket.id,
          record.id,
          { destinations: input.destinations, ttlMs, maxUses: input.maxUses },
          actor,
        );
        issued.push({
          ticket,
          id: view.id,
          secret,
          destinations: view.destinations,
          expiresAt: view.expiresAt,
          maxUses: view.maxUses,
        });
      }
    } catch (error) {
      return this.#rollback(record.id, actor, error);
    }
    const tickets = this.#named(issued);
    return {
      workflow: this.#view(record, [record, ...chain]),
      key,
      tickets,
      env: this.#env(record, key, tickets),
    };
  }

  /**
   * Undo a node that could not get every ticket it asked for: revoke it (and what it was
   * issued), then throw what stopped it. A revocation that fails too is not swallowed: it
   * is counted and reported, and the error thrown says the node is still active and how to
   * revoke it (its tickets were never handed out, but they and the node stay live until then).
   */
  async #rollback(id: string, actor: string, cause: unknown): Promise<never> {
    try {
      await this.revoke(id, actor);
    } catch (failure) {
      this.rollbackFailures += 1;
      try {
        this.onRollbackFailure(id, failure);
      } catch {
        // A failing logger must not hide the error below.
      }
      const original = cause instanceof CoatcheckError ? cause : null;
      throw new CoatcheckError(
        original?.code ?? 'CC_ERR_INTERNAL',
        `${original?.message ?? 'the workflow node could not be started'}; it could not be rolled back either: ${id} stays active until revoked (coatcheck workflow revoke ${id})`,
        {
          cause,
          details: {
            ...(original?.details ?? {}),
            rollback: 'failed',
            node: id,
            rollbackCode: failure instanceof CoatcheckError ? failure.code : 'CC_ERR_INTERNAL',
          },
        },
      );
    }
    throw cause;
  }

  /** Ticket ids of every node in `nodes`. */
  async #ticketsOf(nodes: readonly WorkflowRecord[]): Promise<string[]> {
    const out: string[] = [];
    for (const node of nodes) out.push(...(await this.#store.listWorkflowTickets(node.id)));
    return out;
  }

  /**
   * End a workflow or subtask and everything below it: the nodes are marked ended, their
   * keys stop working, and their tickets expire now (tickets narrowed from them with them).
   */
  async end(id: string, actor: string): Promise<{ id: string; ended: string[]; tickets: string[] }> {
    return this.#finish(id, 'ended', actor);
  }

  /** Revoke a workflow or subtask and everything below it: nodes and tickets are revoked. */
  async revoke(id: string, actor: string): Promise<{ id: string; ended: string[]; tickets: string[] }> {
    return this.#finish(id, 'revoked', actor);
  }

  async #finish(
    id: string,
    status: 'ended' | 'revoked',
    actor: string,
  ): Promise<{ id: string; ended: string[]; tickets: string[] }> {
    const node = await this.#get(id);
    const subtree = await this.#store.listWorkflowSubtree(node.id);
    const ticketIds = await this.#ticketsOf(subtree);
    const at = this.#clock.now();
    let ended: string[] = [];
    let tickets: string[] = [];
    await this.#audit.append(
      {
        type: status === 'ended' ? 'workflow.end' : 'workflow.revoke',
        actor,
        data: { workflow: node.rootId, subtask: node.id, nodes: subtree.map((n) => n.id) },
      },
      async (tx) => {
        ended = await tx.endWorkflowTree(node.id, status, at);
        if (status === 'ended') {
          tickets = await tx.expireTickets(ticketIds, at);
        } else {
          const revoked = new Set<string>();
          for (const ticketId of ticketIds)
            for (const r of await tx.revokeTicketTree(ticketId, at)) revoked.add(r);
          tickets = [...revoked];
        }
        // The notices commit with the change (ADR 0013). Caches on every replica drop
        // these tickets, and live sessions that used them end.
        if (tickets.length > 0 || ended.length > 0)
          await tx.notify({ type: 'ticket.revoked', ids: tickets.length > 0 ? tickets : ticketIds });
        // Live sessions opened with the nodes' keys end too, on every replica.
        if (ended.length > 0) await tx.notify({ type: 'workflow.ended', ids: ended });
      },
    );
    return { id: node.id, ended, tickets };
  }

  /**
   * Authenticate a subtask key: the node and every ancestor must be active and within its
   * deadline, and the agent that started the run must still be live.
   */
  async authenticate(key: string): Promise<Principal> {
    assertSubtaskKey(key);
    const now = this.#clock.now();
    const standing = await this.#standing(this.#keyHashes.hash(key), now);
    if (standing === null) throw refuse('CC_ERR_WORKFLOW_UNKNOWN', 'the subtask key is not known');
    const { chain, starter } = standing;
    const record = chain[0]!;
    const status = this.#status(chain, now);
    const details = { workflow: record.rootId, subtask: record.id };
    if (status === 'revoked')
      throw refuse('CC_ERR_WORKFLOW_REVOKED', `workflow node ${record.id} was revoked`, details);
    if (status === 'ended')
      throw refuse('CC_ERR_WORKFLOW_ENDED', `workflow node ${record.id} has ended`, details);
    if (status === 'expired')
      throw refuse(
        'CC_ERR_WORKFLOW_EXPIRED',
        `the deadline of workflow node ${record.id} has passed`,
        details,
      );
    // `starter` is undefined when the run was not started by an agent, null when its agent is gone.
    if (starter !== undefined) {
      if (
        starter === null ||
        starter.revokedAt !== null ||
        (starter.expiresAt !== null && starter.expiresAt <= now)
      ) {
        throw refuse(
          'CC_ERR_WORKFLOW_REVOKED',
          `the agent that started workflow ${record.rootId} is no longer live`,
          details,
        );
      }
    }
    const expiresAt = chain.reduce<number | null>(
      (min, n) => (n.expiresAt === null ? min : min === null ? n.expiresAt : Math.min(min, n.expiresAt)),
      null,
    );
    return {
      kind: 'subtask',
      ref: workflowNodeRef(record.id, record.parentId === null),
      name: record.name,
      groups: record.groups,
      attributes: { workflow: record.rootId, subtask: record.id, startedBy: record.startedBy },
      expiresAt,
    };
  }

  /** The first audit seq worth reading for a run created at `createdAt` (records are roughly in time order). */
  async #firstSeqNear(createdAt: number): Promise<number> {
    const head = await this.#store.auditHead();
    if (head === null) return 0;
    // Binary search on time, with a margin for clocks of several replicas.
    const target = createdAt - 60_000;
    let lo = 0;
    let hi = head.seq;
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      const [record] = await this.#store.readAudit(mid, 1);
      if (record === undefined || record.ts >= target) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /**
   * The tree under a node, with each node's tickets and what happened with them: every
   * exchange, refusal, injected credential and policy denial, from the audit log.
   */
  async show(id: string): Promise<WorkflowTree> {
    const node = await this.#get(id);
    const chain = await this.#chain(node);
    const root = chain.at(-1)!;
    const subtree = await this.#store.listWorkflowSubtree(node.id);
    const byId = new Map(subtree.map((n) => [n.id, n]));
    const ticketOwner = new Map<string, string>();
    const tickets = new Map<string, TicketView[]>();
    for (const n of subtree) {
      const views: TicketView[] = [];
      for (const ticketId of await this.#store.listWorkflowTickets(n.id)) {
        views.push(await this.#vault.inspectTicket(ticketId));
        ticketOwner.set(ticketId, n.id);
      }
      tickets.set(n.id, views);
    }
    const refs = new Map(subtree.map((n) => [workflowNodeRef(n.id, n.parentId === null), n.id]));
    const secretNames = new Map<string, string>();
    for (const views of tickets.values())
      for (const v of views) if (v.secret !== null) secretNames.set(v.secretId, v.secret);
    const events = new Map<string, WorkflowEvent[]>(subtree.map((n) => [n.id, []]));
    const kinds: Record<string, WorkflowEvent['kind']> = {
      'token.exchange': 'exchange',
      'token.refused': 'refused',
      'credential.inject': 'credential',
      'gateway.denied': 'denied',
      'gateway.auth.refused': 'refused',
      'token.reissue': 'reissued',
    };
    const text = (value: unknown) => (typeof value === 'string' ? value : null);
    let after = await this.#firstSeqNear(root.createdAt);
    for (;;) {
      const page: AuditRecord[] = await this.#store.readAudit(after, 1000);
      for (const record of page) {
        const kind = kinds[record.type];
        if (kind === undefined) continue;
        const data = record.data;
        const ticket = text(data.ticket);
        // Who did it: the node named in the record (nodes outside this subtree are not shown),
        // else the node whose principal acted, else (anyone else presenting a node's ticket)
        // the node the ticket belongs to.
        const named = text(data.subtask);
        const isNode = record.actor.startsWith('workflow:') || record.actor.startsWith('subtask:');
        const boundTo = kind === 'reissued' ? text(data.principal) : null;
        const nodeId =
          boundTo !== null
            ? (refs.get(boundTo) ?? null)
            : named !== null
              ? byId.has(named)
                ? named
                : null
              : (refs.get(record.actor) ??
                (!isNode && ticket !== null ? (ticketOwner.get(ticket) ?? null) : null));
        if (nodeId === null || !byId.has(nodeId)) continue;
        const secretId = text(data.secret);
        const owner = ticket === null ? null : (ticketOwner.get(ticket) ?? null);
        events.get(nodeId)!.push({
          seq: record.seq,
          at: new Date(record.ts).toISOString(),
          kind,
          ticket,
          secret: secretId === null ? null : (secretNames.get(secretId) ?? secretId),
          target: text(data.target) ?? text(data.connection),
          operation: text(data.operation),
          code: text(data.code),
          ticketOwner: owner !== null && owner !== nodeId ? owner : null,
          actor: record.actor,
        });
      }
      if (page.length < 1000) break;
      after = page.at(-1)!.seq;
    }
    // Depth-first order, parents before children, siblings oldest first.
    const children = new Map<string | null, WorkflowRecord[]>();
    for (const n of subtree) {
      const key = n.id === node.id ? null : n.parentId;
      children.set(key, [...(children.get(key) ?? []), n]);
    }
    const ordered: WorkflowTreeNode[] = [];
    const chainOf = new Map<string, WorkflowRecord[]>([[node.id, chain]]);
    const visit = (n: WorkflowRecord, depth: number) => {
      const nChain = chainOf.get(n.id)!;
      ordered.push({
        ...this.#view(n, nChain),
        depth,
        tickets: tickets.get(n.id) ?? [],
        events: events.get(n.id) ?? [],
      });
      for (const child of children.get(n.id) ?? []) {
        chainOf.set(child.id, [child, ...nChain]);
        visit(child, depth + 1);
      }
    };
    visit(node, 0);
    return { root: this.#view(root, [root]), nodes: ordered };
  }
}
