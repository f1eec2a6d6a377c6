import type { AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { workflowNodeRef } from '../core/principal.js';
import { assertTicket, mintTicket } from '../core/ticket-format.js';
import type { SecretRecord, Store, TicketRecord } from '../store/types.js';
import type { Target } from './destinations.js';
import {
  coveredByAny,
  describeTarget,
  matchesTarget,
  normalizeDestinations,
  parseDestination,
} from './destinations.js';
import type { KeyService } from './key-service.js';
import {
  type Exchange,
  type ExchangeRequest,
  type IssuedTicket,
  iso,
  MAX_WORKFLOW_DEPTH,
  placementsOf,
  refuse,
  sameText,
  type TicketLink,
  type TicketStatus,
  type TicketView,
  type VaultOptions,
  workflowTags,
} from './model.js';
import { placementAllowed } from './placements.js';
import { releaseGuard } from './release-guard.js';
import type { CachedTicket, VaultCaches } from './vault-caches.js';

/** Longest ancestor chain walked; narrowing deeper than this is refused. */
const MAX_CHAIN = 32;

/**
 * Tickets (ADR 0017): issue, narrow (a child is never wider than its parent: destinations
 * within, expiry no later, uses no more than the chain has left, same principal unless a
 * workflow node below the parent's), inspect, list, revoke a tree, and exchange. An
 * exchange reads through the versioned ticket cache and is checked again at commit time
 * (`releaseGuard`: `deadAmong` in the audit transaction), so a revocation committed first
 * always wins, whatever the cache said.
 */
export class TicketService {
  readonly #store: Store;
  readonly #keys: KeyService;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #options: VaultOptions;
  readonly #caches: VaultCaches;

  constructor(
    store: Store,
    keys: KeyService,
    audit: AuditLog,
    clock: Clock,
    options: VaultOptions,
    caches: VaultCaches,
  ) {
    this.#store = store;
    this.#keys = keys;
    this.#audit = audit;
    this.#clock = clock;
    this.#options = options;
    this.#caches = caches;
  }

  #ticketStatus(chain: readonly TicketRecord[], secret: SecretRecord | null, now: number): TicketStatus {
    if (chain.some((t) => t.revokedAt !== null)) return 'revoked';
    if (secret === null || secret.erasedAt !== null) return 'erased';
    if (chain.some((t) => t.expiresAt !== null && t.expiresAt <= now)) return 'expired';
    if (chain.some((t) => t.maxUses !== null && t.uses >= t.maxUses)) return 'exhausted';
    return 'active';
  }

  /** The view of `chain[0]` (its status from the whole chain); the found-secret service uses it too. */
  view(chain: readonly TicketRecord[], secret: SecretRecord | null): TicketView {
    const t = chain[0]!;
    return {
      id: t.id,
      secretId: t.secretId,
      secret: secret?.name ?? null,
      principal: t.principal,
      destinations: t.destinations,
      expiresAt: iso(t.expiresAt),
      maxUses: t.maxUses,
      uses: t.uses,
      parentId: t.parentId,
      createdAt: new Date(t.createdAt).toISOString(),
      revokedAt: iso(t.revokedAt),
      status: this.#ticketStatus(chain, secret, this.#clock.now()),
    };
  }

  /** The ticket and its ancestors, nearest first; refused as corrupt past MAX_CHAIN or at a missing parent. */
  async chain(ticket: TicketRecord): Promise<TicketRecord[]> {
    const chain = [ticket];
    let parentId = ticket.parentId;
    while (parentId !== null) {
      if (chain.length > MAX_CHAIN)
        throw refuse(
          'CC_ERR_STORE_CORRUPT',
          `ticket ${ticket.id} has an ancestor chain longer than ${MAX_CHAIN}`,
        );
      const parent = await this.#store.getTicketById(parentId);
      if (parent === null)
        throw refuse('CC_ERR_STORE_CORRUPT', `ticket ${ticket.id} names a missing parent`, {
          ticket: ticket.id,
        });
      chain.push(parent);
      parentId = parent.parentId;
    }
    return chain;
  }

  #checkTtl(ttlMs: number | undefined): number {
    const ttl = ttlMs ?? this.#options.defaultTicketTtlMs;
    if (ttl > this.#options.maxTicketTtlMs) {
      throw refuse(
        'CC_ERR_INVALID_ARGUMENT',
        `--ttl exceeds the maximum ticket lifetime (${this.#options.maxTicketTtlMs / 1000}s)`,
        {
          field: '--ttl',
        },
      );
    }
    return ttl;
  }

  #checkUses(uses: number | undefined): void {
    if (uses !== undefined && (!Number.isSafeInteger(uses) || uses < 1)) {
      throw refuse('CC_ERR_INVALID_ARGUMENT', '--uses must be a whole number of at least 1', {
        field: '--uses',
      });
    }
  }

  /** Issue a ticket for `secretName`, bound to `principalRef`, within the secret's destinations. */
  async issueTicket(
    input: {
      secret: string;
      principal: string;
      destinations?: readonly string[];
      ttlMs?: number;
      maxUses?: number;
    },
    actor: string,
    link?: TicketLink,
  ): Promise<IssuedTicket> {
    const secret = await this.#store.getSecretByName(input.secret);
    if (secret === null)
      throw refuse('CC_ERR_NOT_FOUND', `no secret named ${input.secret}`, { name: input.secret });
    this.#checkUses(input.maxUses);
    const ttl = this.#checkTtl(input.ttlMs);
    const secretDests = secret.allow.map((d) => parseDestination(d));
    const destinations =
      input.destinations === undefined || input.destinations.length === 0
        ? [...secret.allow]
        : normalizeDestinations(input.destinations, '--dest');
    for (const dest of destinations) {
      if (!coveredByAny(secretDests, parseDestination(dest))) {
        throw refuse(
          'CC_ERR_TICKET_WIDENING',
          `destination ${dest} is not within secret ${secret.name}'s allowed destinations`,
          {
            destination: dest,
            allowed: secret.allow,
          },
        );
      }
    }
    const now = this.#clock.now();
    const ticket = mintTicket();
    const record: TicketRecord = {
      id: newId('tkt'),
      hash: this.#keys.ticketHash(ticket),
      secretId: secret.id,
      principal: input.principal,
      destinations,
      expiresAt: now + ttl,
      maxUses: input.maxUses ?? null,
      uses: 0,
      parentId: null,
      createdAt: now,
      revokedAt: null,
    };
    await this.#audit.append(
      {
        type: 'token.issue',
        actor,
        data: {
          ticket: record.id,
          secret: secret.id,
          principal: record.principal,
          destinations,
          expiresAt: iso(record.expiresAt),
          maxUses: record.maxUses,
          ...link,
        },
      },
      async (tx) => {
        const live = await tx.getSecretById(secret.id);
        if (live === null || live.erasedAt !== null)
          throw refuse('CC_ERR_NOT_FOUND', `no secret named ${secret.name}`);
        await tx.insertTicket(record);
        if (link !== undefined) await tx.addWorkflowTicket(link.subtask, record.id);
      },
    );
    return { ticket, view: this.view([record], secret) };
  }

  /** Find a ticket by its text (checksum first) or by its id. */
  async #lookup(ticketOrId: string): Promise<TicketRecord> {
    if (ticketOrId.startsWith('tkt_')) {
      const byId = await this.#store.getTicketById(ticketOrId);
      if (byId === null)
        throw refuse('CC_ERR_TICKET_UNKNOWN', `no ticket ${ticketOrId}`, { ticket: ticketOrId });
      return byId;
    }
    assertTicket(ticketOrId);
    const record = await this.#store.getTicketByHash(this.#keys.ticketHash(ticketOrId));
    if (record === null) throw refuse('CC_ERR_TICKET_UNKNOWN', 'no such ticket in this store');
    return record;
  }

  async inspectTicket(ticketOrId: string): Promise<TicketView & { chain: string[] }> {
    const record = await this.#lookup(ticketOrId);
    const chain = await this.chain(record);
    const secret = await this.#store.getSecretById(record.secretId);
    return { ...this.view(chain, secret), chain: chain.map((t) => t.id) };
  }

  async listTickets(
    filter: { secret?: string; principal?: string; all?: boolean } = {},
  ): Promise<TicketView[]> {
    let secretId: string | undefined;
    if (filter.secret !== undefined) {
      const secret = await this.#store.getSecretByName(filter.secret);
      if (secret === null)
        throw refuse('CC_ERR_NOT_FOUND', `no secret named ${filter.secret}`, { name: filter.secret });
      secretId = secret.id;
    }
    const records = await this.#store.listTickets({
      secretId,
      principal: filter.principal,
      includeInactive: filter.all ?? false,
      now: this.#clock.now(),
    });
    const secrets = new Map<string, SecretRecord | null>();
    const out: TicketView[] = [];
    for (const record of records) {
      if (!secrets.has(record.secretId))
        secrets.set(record.secretId, await this.#store.getSecretById(record.secretId));
      out.push(this.view(await this.chain(record), secrets.get(record.secretId) ?? null));
    }
    return out;
  }

  /**
   * Derive a child ticket that can only be narrower than its parent: destinations within
   * the parent's, expiry no later, uses no more than the parent has left. Uses taken
   * through the child also count against the parent.
   */
  async narrowTicket(
    parentTicket: string,
    input: { destinations?: readonly string[]; ttlMs?: number; maxUses?: number; principal?: string },
    actor: string,
  ): Promise<IssuedTicket> {
    assertTicket(parentTicket);
    const parent = await this.#lookup(parentTicket);
    return this.#narrowFrom(parent, input, input.principal ?? parent.principal, actor, null);
  }

  /**
   * Derive a child ticket for a workflow node (a subtask) from a ticket that belongs to
   * one of its ancestors. The one way a narrowed ticket gets a principal other than its
   * parent's: only a node strictly below the node holding the parent ticket qualifies,
   * never an unrelated principal. Every other narrowing rule holds, and uses taken
   * through the child still count against every ancestor ticket.
   */
  async narrowForSubtask(
    parentTicketId: string,
    subtaskId: string,
    input: { destinations?: readonly string[]; ttlMs?: number; maxUses?: number },
    actor: string,
  ): Promise<IssuedTicket> {
    const parent = await this.#lookup(parentTicketId);
    const owner = await this.#store.getTicketWorkflow(parent.id);
    const child = await this.#store.getWorkflow(subtaskId);
    let below = false;
    let cursor = child;
    for (let depth = 0; cursor !== null && cursor.parentId !== null && depth <= MAX_WORKFLOW_DEPTH; depth++) {
      if (cursor.parentId === owner) {
        below = true;
        break;
      }
      cursor = await this.#store.getWorkflow(cursor.parentId);
    }
    const ownerNode = owner === null ? null : await this.#store.getWorkflow(owner);
    if (
      ownerNode === null ||
      child === null ||
      !below ||
      child.rootId !== ownerNode.rootId ||
      // The parent ticket must be bound to the node it belongs to (defence in depth).
      parent.principal !== workflowNodeRef(ownerNode.id, ownerNode.parentId === null)
    ) {
      throw refuse(
        'CC_ERR_WORKFLOW_NOT_DESCENDANT',
        `ticket ${parent.id} does not belong to an ancestor of ${subtaskId}`,
        { ticket: parent.id, subtask: subtaskId },
      );
    }
    return this.#narrowFrom(parent, input, workflowNodeRef(child.id, child.parentId === null), actor, {
      workflow: child.rootId,
      subtask: child.id,
    });
  }

  async #narrowFrom(
    parent: TicketRecord,
    input: { destinations?: readonly string[]; ttlMs?: number; maxUses?: number },
    principal: string,
    actor: string,
    link: TicketLink | null,
  ): Promise<IssuedTicket> {
    const chain = await this.chain(parent);
    const secret = await this.#store.getSecretById(parent.secretId);
    const now = this.#clock.now();
    const status = this.#ticketStatus(chain, secret, now);
    if (status !== 'active') throw this.#statusError(status, parent.id);
    this.#checkUses(input.maxUses);

    const parentDests = parent.destinations.map((d) => parseDestination(d));
    const destinations =
      input.destinations === undefined || input.destinations.length === 0
        ? [...parent.destinations]
        : normalizeDestinations(input.destinations, '--dest');
    for (const dest of destinations) {
      if (!coveredByAny(parentDests, parseDestination(dest))) {
        throw refuse(
          'CC_ERR_TICKET_WIDENING',
          `destination ${dest} is not within the parent ticket's destinations`,
          {
            destination: dest,
            parent: parent.id,
          },
        );
      }
    }
    const parentExpiry = chain.reduce<number | null>(
      (min, t) => (t.expiresAt === null ? min : min === null ? t.expiresAt : Math.min(min, t.expiresAt)),
      null,
    );
    let expiresAt = parentExpiry;
    if (input.ttlMs !== undefined) {
      const requested = now + this.#checkTtl(input.ttlMs);
      if (parentExpiry !== null && requested > parentExpiry) {
        throw refuse(
          'CC_ERR_TICKET_WIDENING',
          `the requested lifetime ends after the parent ticket expires (${iso(parentExpiry)})`,
          {
            parent: parent.id,
          },
        );
      }
      expiresAt = requested;
    }
    const remaining = chain.reduce<number | null>(
      (min, t) =>
        t.maxUses === null ? min : min === null ? t.maxUses - t.uses : Math.min(min, t.maxUses - t.uses),
      null,
    );
    if (input.maxUses !== undefined && remaining !== null && input.maxUses > remaining) {
      throw refuse(
        'CC_ERR_TICKET_WIDENING',
        `the parent ticket has ${remaining} uses left; cannot grant ${input.maxUses}`,
        {
          parent: parent.id,
        },
      );
    }
    if (link === null && principal !== parent.principal) {
      throw refuse('CC_ERR_TICKET_WIDENING', "a narrowed ticket stays bound to its parent's principal", {
        parent: parent.id,
      });
    }
    const ticket = mintTicket();
    const record: TicketRecord = {
      id: newId('tkt'),
      hash: this.#keys.ticketHash(ticket),
      secretId: parent.secretId,
      principal,
      destinations,
      expiresAt,
      maxUses: input.maxUses ?? remaining,
      uses: 0,
      parentId: parent.id,
      createdAt: now,
      revokedAt: null,
    };
    await this.#audit.append(
      {
        type: 'token.narrow',
        actor,
        data: {
          ticket: record.id,
          parent: parent.id,
          secret: record.secretId,
          principal: record.principal,
          destinations,
          expiresAt: iso(expiresAt),
          maxUses: record.maxUses,
          ...link,
        },
      },
      async (tx) => {
        const current = await tx.getTicketById(parent.id);
        if (current === null || current.revokedAt !== null) throw this.#statusError('revoked', parent.id);
        if (link !== null) {
          const node = await tx.getWorkflow(link.subtask);
          if (node === null || node.status !== 'active') {
            throw refuse('CC_ERR_WORKFLOW_INACTIVE', `workflow node ${link.subtask} is no longer active`, {
              subtask: link.subtask,
            });
          }
        }
        await tx.insertTicket(record);
        if (link !== null) await tx.addWorkflowTicket(link.subtask, record.id);
      },
    );
    return { ticket, view: this.view([record, ...chain], secret) };
  }

  /** Revoke a ticket (by text or id) and all its descendants. */
  async revokeTicket(ticketOrId: string, actor: string): Promise<{ id: string; revoked: string[] }> {
    const record = await this.#lookup(ticketOrId);
    let revoked: string[] = [];
    const at = this.#clock.now();
    // One transaction: the revocation, both its records and its change notice commit
    // together or not at all (ADR 0013).
    try {
      await this.#audit.append({ type: 'token.revoke', actor, data: { ticket: record.id } }, async (tx) => {
        revoked = await tx.revokeTicketTree(record.id, at);
        await tx.notify({ type: 'ticket.revoked', ids: revoked.length > 0 ? revoked : [record.id] });
        // The record above names the root; the descendants revoked with it get their own record.
        return revoked.length > 0
          ? [{ type: 'token.revoke.tree', actor, data: { ticket: record.id, revoked } }]
          : undefined;
      });
    } finally {
      // Whatever the outcome (an error may follow a commit): this replica keeps nothing it read before.
      this.#caches.invalidateTickets();
    }
    return { id: record.id, revoked };
  }

  #statusError(status: Exclude<TicketStatus, 'active'>, ticketId: string): CoatcheckError {
    switch (status) {
      case 'revoked':
        return refuse('CC_ERR_TICKET_REVOKED', `ticket ${ticketId} was revoked`, { ticket: ticketId });
      case 'expired':
        return refuse('CC_ERR_TICKET_EXPIRED', `ticket ${ticketId} has expired`, { ticket: ticketId });
      case 'exhausted':
        return refuse('CC_ERR_TICKET_EXHAUSTED', `ticket ${ticketId} has no uses left`, { ticket: ticketId });
      case 'erased':
        return refuse('CC_ERR_TICKET_SECRET_ERASED', `the secret behind ticket ${ticketId} was erased`, {
          ticket: ticketId,
        });
    }
  }

  #resolveCached(ticket: string, hash: string): Promise<CachedTicket> {
    return this.#caches.ticket(hash, this.#clock.now(), this.#options.cacheMs, async () => {
      const record = await this.#store.getTicketByHash(hash);
      if (record === null) throw refuse('CC_ERR_TICKET_UNKNOWN', 'no such ticket in this store');
      // The stored hash is an index lookup; compare again in constant time before trusting it.
      if (!sameText(record.hash, this.#keys.ticketHash(ticket)))
        throw refuse('CC_ERR_TICKET_UNKNOWN', 'no such ticket in this store');
      const chain = await this.chain(record);
      const secret = await this.#store.getSecretById(record.secretId);
      if (secret === null)
        throw refuse('CC_ERR_STORE_CORRUPT', `ticket ${record.id} names a missing secret`, {
          ticket: record.id,
        });
      return { chain, secret, value: this.#keys.decrypt(secret) };
    });
  }

  /**
   * Exchange a ticket for its secret. Checks, in this order: shape and checksum,
   * existence, revocation (the whole chain), erasure, expiry, principal binding,
   * destination binding (ticket and secret), uses left. Every refusal is audited; a
   * release happens only after its audit record is durable.
   */
  async exchange(ticket: string, request: ExchangeRequest): Promise<Exchange> {
    return this.#exchangeResolved(
      () => {
        assertTicket(ticket);
        return this.#resolveCached(ticket, this.#keys.ticketHash(ticket));
      },
      () => this.#keys.fingerprint(ticket.slice(0, 256)),
      request,
    );
  }

  /**
   * Exchange a ticket the principal holds, named by its id rather than presented (an SSH
   * login with a key registered to the agent: ADR 0023). The id is not a credential: the
   * caller has authenticated the principal, and every check of `exchange` applies (the
   * ticket must be bound to that principal and to the target, live, with a use left).
   * Read from the store, not the cache; the commit-time check guards it as any exchange.
   */
  async exchangeHeld(ticketId: string, request: ExchangeRequest): Promise<Exchange> {
    return this.#exchangeResolved(
      async () => {
        const record = await this.#store.getTicketById(ticketId);
        if (record === null) throw refuse('CC_ERR_TICKET_UNKNOWN', `no ticket ${ticketId.slice(0, 64)}`);
        const chain = await this.chain(record);
        const secret = await this.#store.getSecretById(record.secretId);
        if (secret === null)
          throw refuse('CC_ERR_STORE_CORRUPT', `ticket ${record.id} names a missing secret`, {
            ticket: record.id,
          });
        return { chain, secret, value: this.#keys.decrypt(secret) };
      },
      () => null,
      request,
    );
  }

  /**
   * The live tickets bound to `principal` for the secret named `secretName` that may be
   * released to `target`, best first (latest expiry, then newest). For `exchangeHeld`.
   */
  async heldTickets(principal: string, secretName: string, target: Target): Promise<string[]> {
    const secret = await this.#store.getSecretByName(secretName);
    if (secret === null) return [];
    const now = this.#clock.now();
    const records = await this.#store.listTickets({ secretId: secret.id, principal, now, limit: 1000 });
    const live: { id: string; expiresAt: number; createdAt: number }[] = [];
    for (const record of records) {
      if (!record.destinations.some((d) => matchesTarget(parseDestination(d), target))) continue;
      const chain = await this.chain(record);
      if (this.#ticketStatus(chain, secret, now) !== 'active') continue;
      const expiresAt = Math.min(...chain.map((t) => t.expiresAt ?? Number.MAX_SAFE_INTEGER));
      live.push({ id: record.id, expiresAt, createdAt: record.createdAt });
    }
    live.sort((a, b) => b.expiresAt - a.expiresAt || b.createdAt - a.createdAt);
    return live.map((t) => t.id);
  }

  async #exchangeResolved(
    resolve: () => Promise<Pick<CachedTicket, 'chain' | 'secret' | 'value'>>,
    presented: () => string | null,
    request: ExchangeRequest,
  ): Promise<Exchange> {
    const baseData = {
      target: describeTarget(request.target),
      placement: placementsOf(request).join(','),
      operation: request.operation ?? null,
      ...workflowTags(request.principal),
      ...request.context,
    };
    let ticketId: string | null = null;
    try {
      const { chain, secret, value } = await resolve();
      const record = chain[0]!;
      ticketId = record.id;
      const now = this.#clock.now();
      if (chain.some((t) => t.revokedAt !== null)) throw this.#statusError('revoked', record.id);
      if (secret.erasedAt !== null || value === null) throw this.#statusError('erased', record.id);
      if (chain.some((t) => t.expiresAt !== null && t.expiresAt <= now))
        throw this.#statusError('expired', record.id);
      if (!sameText(record.principal, request.principal.ref)) {
        throw refuse('CC_ERR_TICKET_WRONG_PRINCIPAL', `ticket ${record.id} is bound to another principal`, {
          ticket: record.id,
        });
      }
      const allowedByTicket = record.destinations.some((d) =>
        matchesTarget(parseDestination(d), request.target),
      );
      const allowedBySecret = secret.allow.some((d) => matchesTarget(parseDestination(d), request.target));
      if (!allowedByTicket || !allowedBySecret) {
        throw refuse(
          'CC_ERR_TICKET_WRONG_DESTINATION',
          `ticket ${record.id} may not be released to ${describeTarget(request.target)}`,
          {
            ticket: record.id,
          },
        );
      }
      const placement = placementsOf(request).find(
        (p) => !placementAllowed(secret.placements, p, request.target),
      );
      if (placement !== undefined) {
        throw refuse(
          'CC_ERR_TICKET_PLACEMENT',
          `ticket ${record.id} stands in the ${placement} of the request; secret ${secret.id} may be released only in: ${secret.placements.join(', ')}`,
          { ticket: record.id, placement },
        );
      }
      const limited = chain.filter((t) => t.maxUses !== null).map((t) => t.id);
      const audited = await this.#audit.append(
        {
          type: 'token.exchange',
          actor: request.principal.ref,
          data: { ticket: record.id, secret: secret.id, fingerprint: secret.fingerprint, ...baseData },
        },
        limited.length === 0
          ? undefined
          : async (tx) => {
              if (!(await tx.consumeUses(limited))) throw this.#statusError('exhausted', record.id);
            },
        releaseGuard(
          request.principal,
          chain.map((t) => t.id),
          secret.id,
        ),
        // Taking uses locks the ticket rows (ADR 0015): no global lock is needed for it.
        { rowLocked: true },
      );
      return {
        ticketId: record.id,
        secretId: secret.id,
        secretName: secret.name,
        fingerprint: secret.fingerprint,
        value,
        auditSeq: audited.seq,
      };
    } catch (error) {
      const refusal =
        error instanceof CoatcheckError
          ? error
          : new CoatcheckError('CC_ERR_INTERNAL', 'exchange failed', { cause: error });
      if (refusal.code !== 'CC_ERR_AUDIT_UNAVAILABLE') {
        await this.#audit
          .append({
            type: 'token.refused',
            actor: request.principal.ref,
            data: {
              code: refusal.code,
              ticket: ticketId,
              // A keyed fingerprint of what was presented: correlates repeats, reveals nothing.
              presented: ticketId === null ? presented() : null,
              // Refused by the check in the audit transaction: a cache had not yet heard of the change.
              ...(refusal.details?.checkedAt === 'commit' ? { checkedAt: 'commit' } : {}),
              ...baseData,
            },
          })
          .catch(() => undefined); // the refusal stands whether or not it could be recorded
      }
      throw refusal;
    }
  }
}
