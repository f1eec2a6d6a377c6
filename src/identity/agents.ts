import type { AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { agentRef, type Principal } from '../core/principal.js';
import { assertAgentKey, mintAgentKey } from '../core/ticket-format.js';
import { CacheEpoch } from '../store/cache-epoch.js';
import type { AgentRecord, AgentSshKeyRecord, Store } from '../store/types.js';
import { KeyedHashMemo, keyedHash } from '../vault/envelope.js';
import { validateName } from '../vault/vault.js';
import { parseSshPublicKey } from './ssh-public-key.js';

export interface AgentView {
  readonly id: string;
  readonly name: string;
  readonly groups: readonly string[];
  readonly createdAt: string;
  readonly expiresAt: string | null;
  readonly revokedAt: string | null;
  readonly status: 'active' | 'expired' | 'revoked';
}

export interface AgentSshKeyView {
  readonly id: string;
  readonly agent: string;
  readonly fingerprint: string;
  readonly type: string;
  readonly comment: string;
  readonly createdAt: string;
  readonly removedAt: string | null;
}

function sshKeyView(agentName: string, record: AgentSshKeyRecord): AgentSshKeyView {
  return {
    id: record.id,
    agent: agentName,
    fingerprint: record.fingerprint,
    type: record.keyType,
    comment: record.comment,
    createdAt: new Date(record.createdAt).toISOString(),
    removedAt: iso(record.removedAt),
  };
}

const GROUP_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;
const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/**
 * Agent identities: a name, groups, and a key shown once at creation. The store keeps
 * only a keyed hash of the key; presenting it yields a Principal of kind 'agent'.
 */
export class Agents {
  readonly #store: Store;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #lookupKey: Buffer;
  /** Hashes of keys already seen: the data path authenticates every request with one. */
  readonly #keyHashes: KeyedHashMemo;
  readonly #maxTtlMs: number;

  constructor(store: Store, audit: AuditLog, clock: Clock, lookupKey: Buffer, options: { maxTtlMs: number }) {
    this.#store = store;
    this.#audit = audit;
    this.#clock = clock;
    this.#lookupKey = lookupKey;
    this.#keyHashes = new KeyedHashMemo(lookupKey);
    this.#maxTtlMs = options.maxTtlMs;
    this.#epoch = new CacheEpoch(store);
    // Revocations (from any replica) and resyncs drop cached keys at once, and keep reads
    // in flight from filling the cache with what they read before (ADR 0013).
    store.subscribe((change) => {
      if (change.type === 'agent.revoked' || change.type === 'resync' || change.type === 'keys.rotated')
        this.#invalidate();
    });
  }

  readonly #epoch: CacheEpoch;

  #invalidate(): void {
    this.#epoch.bump();
    this.#cache.clear();
  }

  /** Agent records by key hash, for a few seconds: the data path authenticates every request. */
  readonly #cache = new Map<string, { record: AgentRecord; at: number; epoch: number }>();
  static readonly CACHE_MS = 5_000;

  #view(record: AgentRecord): AgentView {
    const now = this.#clock.now();
    return {
      id: record.id,
      name: record.name,
      groups: record.groups,
      createdAt: new Date(record.createdAt).toISOString(),
      expiresAt: iso(record.expiresAt),
      revokedAt: iso(record.revokedAt),
      status:
        record.revokedAt !== null
          ? 'revoked'
          : record.expiresAt !== null && record.expiresAt <= now
            ? 'expired'
            : 'active',
    };
  }

  async create(
    input: { name: string; groups?: readonly string[]; ttlMs?: number },
    actor: string,
  ): Promise<{ key: string; agent: AgentView }> {
    validateName(input.name, 'agent');
    const groups = [...new Set(input.groups ?? [])];
    for (const group of groups) {
      if (!GROUP_RE.test(group)) {
        throw new CoatcheckError(
          'CC_ERR_INVALID_ARGUMENT',
          '--group must be 1-64 letters, digits or . _ : -',
          { details: { field: '--group' } },
        );
      }
    }
    if (input.ttlMs !== undefined && input.ttlMs > this.#maxTtlMs) {
      throw new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        `--ttl exceeds the maximum agent key lifetime (${this.#maxTtlMs / 1000}s)`,
        {
          details: { field: '--ttl' },
        },
      );
    }
    const now = this.#clock.now();
    const key = mintAgentKey();
    const record: AgentRecord = {
      id: newId('agt'),
      name: input.name,
      groups,
      keyHash: keyedHash(this.#lookupKey, key),
      createdAt: now,
      expiresAt: now + (input.ttlMs ?? this.#maxTtlMs),
      revokedAt: null,
    };
    await this.#audit.append(
      {
        type: 'agent.create',
        actor,
        data: { agent: record.id, name: record.name, groups, expiresAt: iso(record.expiresAt) },
      },
      async (tx) => {
        if (await tx.getAgentByName(record.name)) {
          throw new CoatcheckError('CC_ERR_ALREADY_EXISTS', `an agent named ${record.name} already exists`, {
            details: { name: record.name },
          });
        }
        await tx.insertAgent(record);
      },
    );
    return { key, agent: this.#view(record) };
  }

  async list(): Promise<AgentView[]> {
    return (await this.#store.listAgents()).map((record) => this.#view(record));
  }

  /** The live agent with this name. */
  async get(name: string): Promise<AgentView> {
    const record = await this.#store.getAgentByName(name);
    if (record === null) {
      throw new CoatcheckError('CC_ERR_AGENT_UNKNOWN', `no agent named ${name}`, { details: { name } });
    }
    return this.#view(record);
  }

  async revoke(name: string, actor: string): Promise<AgentView> {
    const record = await this.#store.getAgentByName(name);
    if (record === null)
      throw new CoatcheckError('CC_ERR_AGENT_UNKNOWN', `no agent named ${name}`, { details: { name } });
    const at = this.#clock.now();
    try {
      // The revocation, its record and its change notice commit together (ADR 0013).
      await this.#audit.append(
        { type: 'agent.revoke', actor, data: { agent: record.id, name } },
        async (tx) => {
          await tx.revokeAgent(record.id, at);
          await tx.notify({ type: 'agent.revoked', id: record.id });
        },
      );
    } finally {
      this.#invalidate();
    }
    return this.#view({ ...record, revokedAt: at });
  }

  // ---- SSH public keys (ADR 0023) ---------------------------------------------------

  async #liveAgent(name: string): Promise<AgentRecord> {
    const record = await this.#store.getAgentByName(name);
    if (record === null)
      throw new CoatcheckError('CC_ERR_AGENT_UNKNOWN', `no agent named ${name}`, { details: { name } });
    if (record.expiresAt !== null && record.expiresAt <= this.#clock.now())
      throw new CoatcheckError('CC_ERR_AGENT_EXPIRED', `the key of agent ${record.id} has expired`, {
        details: { agent: record.id },
      });
    return record;
  }

  /**
   * Register an SSH public key to a live agent: it then logs in to the SSH front-end with
   * it. A key is live for one agent at a time. Audited (`agent.sshkey.add`).
   */
  async addSshKey(name: string, publicKeyText: string, actor: string): Promise<AgentSshKeyView> {
    const agent = await this.#liveAgent(name);
    const key = await parseSshPublicKey(publicKeyText);
    const record: AgentSshKeyRecord = {
      id: newId('ssk'),
      agentId: agent.id,
      fingerprint: key.fingerprint,
      keyType: key.type,
      publicKey: key.blob.toString('base64'),
      comment: key.comment,
      createdAt: this.#clock.now(),
      removedAt: null,
    };
    await this.#audit.append(
      {
        type: 'agent.sshkey.add',
        actor,
        data: { agent: agent.id, name, key: record.id, fingerprint: key.fingerprint, keyType: key.type },
      },
      async (tx) => {
        const existing = await tx.getLiveAgentSshKey(key.fingerprint);
        if (existing !== null) {
          throw new CoatcheckError(
            'CC_ERR_ALREADY_EXISTS',
            `SSH key ${key.fingerprint} is already registered${existing.agentId === agent.id ? ` to agent ${name}` : ' to another agent'}; a key identifies one agent`,
            { details: { fingerprint: key.fingerprint } },
          );
        }
        await tx.insertAgentSshKey(record);
      },
    );
    return sshKeyView(name, record);
  }

  async listSshKeys(name: string, all = false): Promise<AgentSshKeyView[]> {
    const agent = await this.#store.getAgentByName(name);
    if (agent === null)
      throw new CoatcheckError('CC_ERR_AGENT_UNKNOWN', `no agent named ${name}`, { details: { name } });
    return (await this.#store.listAgentSshKeys(agent.id, all)).map((record) => sshKeyView(name, record));
  }

  /**
   * Remove an agent's key (by `SHA256:` fingerprint or id): it no longer logs in, and live
   * SSH sessions that logged in with it end on every replica. Audited (`agent.sshkey.remove`).
   */
  async removeSshKey(name: string, key: string, actor: string): Promise<AgentSshKeyView> {
    const agent = await this.#store.getAgentByName(name);
    if (agent === null)
      throw new CoatcheckError('CC_ERR_AGENT_UNKNOWN', `no agent named ${name}`, { details: { name } });
    const record = (await this.#store.listAgentSshKeys(agent.id, false)).find(
      (k) => k.id === key || k.fingerprint === key,
    );
    if (record === undefined)
      throw new CoatcheckError('CC_ERR_NOT_FOUND', `agent ${name} has no live SSH key ${key.slice(0, 64)}`, {
        details: { agent: agent.id },
      });
    const at = this.#clock.now();
    await this.#audit.append(
      {
        type: 'agent.sshkey.remove',
        actor,
        data: { agent: agent.id, name, key: record.id, fingerprint: record.fingerprint },
      },
      async (tx) => {
        if (!(await tx.removeAgentSshKey(record.id, at)))
          throw new CoatcheckError(
            'CC_ERR_NOT_FOUND',
            `agent ${name} has no live SSH key ${record.fingerprint}`,
          );
        await tx.notify({ type: 'agent.sshkey.removed', id: record.id });
      },
    );
    return sshKeyView(name, { ...record, removedAt: at });
  }

  /** Authenticate a presented agent key. Errors name the agent id where known, never the key. */
  async authenticate(key: string): Promise<Principal> {
    assertAgentKey(key);
    const hash = this.#keyHashes.hash(key);
    const now = this.#clock.now();
    const hit = this.#cache.get(hash);
    let record: AgentRecord | null;
    if (hit !== undefined && now - hit.at < Agents.CACHE_MS && this.#epoch.mayServe(hit.epoch))
      record = hit.record;
    else {
      const token = this.#epoch.begin();
      record = await this.#store.getAgentByKeyHash(hash);
      if (record !== null && this.#epoch.mayKeep(token)) {
        if (this.#cache.size >= 10_000) this.#cache.clear();
        this.#cache.set(hash, { record, at: now, epoch: token });
      }
    }
    if (record === null) throw new CoatcheckError('CC_ERR_AGENT_UNKNOWN', 'the agent key is not known');
    if (record.revokedAt !== null) {
      throw new CoatcheckError('CC_ERR_AGENT_REVOKED', `agent ${record.id} was revoked`, {
        details: { agent: record.id },
      });
    }
    if (record.expiresAt !== null && record.expiresAt <= this.#clock.now()) {
      throw new CoatcheckError('CC_ERR_AGENT_EXPIRED', `the key of agent ${record.id} has expired`, {
        details: { agent: record.id },
      });
    }
    return {
      kind: 'agent',
      ref: agentRef(record.id),
      name: record.name,
      groups: record.groups,
      attributes: {},
      expiresAt: record.expiresAt,
    };
  }
}
