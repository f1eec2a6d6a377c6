import { timingSafeEqual } from 'node:crypto';
import type { AuditGuard, AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError, type ErrorCode } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { type Principal, workflowNodeRef } from '../core/principal.js';
import { SecretValue } from '../core/secret-value.js';
import { assertTicket, mintTicket, TICKET_PATTERN } from '../core/ticket-format.js';
import { CacheEpoch } from '../store/cache-epoch.js';
import type { DeadReason, SecretRecord, Store, StoreChange, TicketRecord } from '../store/types.js';
import {
  coveredByAny,
  type Destination,
  describeTarget,
  matchesTarget,
  normalizeDestinations,
  parseDestination,
  type Target,
} from './destinations.js';
import { keyedHash, newDataKey, open, seal } from './envelope.js';
import { dataKeyAad, type Keyring, sealingKey, unwrapDataKey, valueAad } from './keyring.js';
import { DEFAULT_PLACEMENTS, normalizePlacements, type Placement, placementAllowed } from './placements.js';

/** A live secret, decrypted, as the response scanners and found-secret dedup need it. */
export interface KnownSecret {
  readonly id: string;
  readonly name: string;
  readonly allow: readonly string[];
  readonly fingerprint: string;
  readonly value: SecretValue;
}

export const MAX_SECRET_BYTES = 64 * 1024;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
/** Longest ancestor chain walked; narrowing deeper than this is refused. */
const MAX_CHAIN = 32;

export interface SecretView {
  readonly id: string;
  readonly name: string;
  readonly kind: string;
  readonly allow: readonly string[];
  /** Where a ticket for it may stand (`credential`, `header`, `query`, `body`, `path`, `sql:CONN`). */
  readonly placements: readonly string[];
  readonly fingerprint: string;
  readonly createdAt: string;
}

export type TicketStatus = 'active' | 'revoked' | 'expired' | 'exhausted' | 'erased';

export interface TicketView {
  readonly id: string;
  readonly secretId: string;
  readonly secret: string | null;
  readonly principal: string;
  readonly destinations: readonly string[];
  readonly expiresAt: string | null;
  readonly maxUses: number | null;
  readonly uses: number;
  readonly parentId: string | null;
  readonly createdAt: string;
  readonly revokedAt: string | null;
  readonly status: TicketStatus;
}

export interface IssuedTicket {
  /** The ticket text: shown once, never stored. */
  readonly ticket: string;
  readonly view: TicketView;
}

export interface Exchange {
  readonly ticketId: string;
  readonly secretId: string;
  readonly secretName: string;
  readonly fingerprint: string;
  readonly value: SecretValue;
  /** The record that made this release durable. */
  readonly auditSeq: number;
}

export interface ExchangeRequest {
  readonly principal: Principal;
  readonly target: Target;
  /**
   * Where the ticket stood in the request, checked against the secret's placements.
   * Default `credential` (a login, an Authorization header); front-ends pass what they found.
   */
  readonly placement?: Placement | readonly Placement[];
  /** Non-secret description of what the release is for (`GET /repos`, `postgres login`). */
  readonly operation?: string;
  /** Extra audit fields (session id, workflow). Never secret values. */
  readonly context?: Record<string, unknown>;
}

export interface VaultOptions {
  readonly defaultTicketTtlMs: number;
  readonly maxTicketTtlMs: number;
  /** How long a resolved ticket stays cached; invalidated early on revocation events. */
  readonly cacheMs: number;
  /**
   * Lifetime of a ticket reissued for a secret found in a response that no ticket of the
   * request explains (a detector finding, a vault secret the caller never held). Default:
   * the default ticket lifetime, at most 15 minutes.
   */
  readonly foundTicketTtlMs?: number;
  /** Most new secrets one principal may register from found values per window (default 100 per hour). */
  readonly foundSecretLimit?: { readonly max: number; readonly windowMs: number };
}

/**
 * Where a ticket reissued for a found secret may go, and what it derives from. The ticket
 * is never wider than its parent (the narrowest request ticket that fits) and never wider
 * than the place the content came from.
 */
export interface FoundScope {
  /** Who the ticket is bound to (the caller). */
  readonly principal: string;
  /**
   * Destinations wanted, each kept only if the secret and the parent allow it. Absent or
   * empty with no `target`: the secret's own (content the caller sent itself: a prompt).
   */
  readonly destinations?: readonly string[];
  /**
   * Where the content came from (the connection and host the response was read from): a
   * `conn:` destination for that connection counts as within a host pattern that matches it.
   */
  readonly target?: Target;
  /**
   * Ids of the tickets exchanged for the request whose answer this is: candidate parents
   * (read when a ticket is minted, so a live set of a long session works; at most 256 are read).
   */
  readonly parents?: Iterable<string>;
  /** Extra audit context (front-end, session). */
  readonly context?: Record<string, unknown>;
  /**
   * An operator asked through the admin API (tokenize, a workflow prompt), not a response:
   * a parentless ticket gets the default ticket lifetime, and registrations are not counted
   * against the found-secret limit.
   */
  readonly operator?: boolean;
}

/** Default cap on the lifetime of a found-secret ticket with no parent. */
const FOUND_TICKET_TTL_MS = 15 * 60 * 1000;
/** Candidate parents read per found-secret ticket (the most recent). */
const MAX_PARENT_CANDIDATES = 256;
/** Principals tracked by the found-secret rate limit before old windows are swept. */
const MAX_TRACKED_PRINCIPALS = 10_000;

interface CachedTicket {
  readonly chain: readonly TicketRecord[]; // [ticket, parent, grandparent, ...]
  readonly secret: SecretRecord;
  readonly value: SecretValue | null;
  readonly cachedAt: number;
  /** The cache epoch the rows were read at (ADR 0013). */
  readonly epoch: number;
}

/** A ticket that belongs to a workflow node: recorded with it, in the same transaction. */
export interface TicketLink {
  /** The root workflow id. */
  readonly workflow: string;
  /** The node the ticket belongs to (the root's own id for the root's tickets). */
  readonly subtask: string;
}

/** Subtasks nest at most this deep below their root. */
export const MAX_WORKFLOW_DEPTH = 16;

/** Workflow and subtask ids of a workflow-node principal, for audit records. Empty for anyone else. */
export function workflowTags(principal: Principal): { workflow?: string; subtask?: string } {
  if (principal.kind !== 'subtask') return {};
  const { workflow, subtask } = principal.attributes;
  return {
    ...(typeof workflow === 'string' ? { workflow } : {}),
    ...(typeof subtask === 'string' ? { subtask } : {}),
  };
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

function refuse(code: ErrorCode, message: string, details?: Record<string, unknown>): CoatcheckError {
  return new CoatcheckError(code, message, details === undefined ? undefined : { details });
}

export function validateName(name: string, what: string): void {
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      `${what} name must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit`,
      { details: { field: 'name' } },
    );
  }
}

/** The placements a ticket stood in (it may appear more than once in a request); default credential. */
function placementsOf(request: ExchangeRequest): readonly Placement[] {
  const p = request.placement ?? 'credential';
  const list = typeof p === 'string' ? [p] : p;
  return list.length === 0 ? ['credential'] : [...new Set(list)];
}

function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * The vault: secrets under envelope encryption, and the tickets that stand for them.
 * Every state change commits together with its audit record; a secret is released only
 * after the record of that release is durable.
 */
export class Vault {
  readonly #store: Store;
  readonly #keys: Keyring;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #options: VaultOptions;
  readonly #cache = new Map<string, CachedTicket>();
  /** Fills of the ticket cache are versioned: a change during a read keeps it out (ADR 0013). */
  readonly #epoch: CacheEpoch;
  #known: ReadonlyArray<KnownSecret> | null = null;
  #knownAt = -1;
  readonly #knownEpoch: CacheEpoch;
  readonly #unsubscribe: () => void;
  /** Found-secret registrations per principal in the current window (this replica). */
  readonly #registrations = new Map<string, { start: number; count: number; refused: boolean }>();

  constructor(store: Store, keys: Keyring, audit: AuditLog, clock: Clock, options: VaultOptions) {
    this.#store = store;
    this.#keys = keys;
    this.#audit = audit;
    this.#clock = clock;
    this.#options = options;
    this.#epoch = new CacheEpoch(store);
    this.#knownEpoch = new CacheEpoch(store);
    this.#unsubscribe = store.subscribe((change) => this.#onChange(change));
  }

  /** Drop cached tickets and make every read in flight unfit to keep. */
  #invalidateTickets(): void {
    this.#epoch.bump();
    this.#cache.clear();
  }

  #invalidateKnown(): void {
    this.#knownEpoch.bump();
    this.#known = null;
  }

  close(): void {
    this.#unsubscribe();
    this.#cache.clear();
  }

  #onChange(change: StoreChange): void {
    // Approvals and connections do not touch tickets or values; a new secret changes only
    // the known-secret list (found secrets are added on the response path, so the ticket
    // cache must survive them). Anything else — revocations, erasures, rotations, ended
    // workflows, resyncs, and any change type added later — drops both caches.
    if (change.type === 'approval.changed' || change.type === 'connection.changed') return;
    this.#invalidateKnown();
    if (change.type === 'secret.added') return;
    this.#invalidateTickets();
  }

  ticketHash(ticket: string): string {
    return keyedHash(this.#keys.index.lookup, ticket);
  }

  /** Keyed fingerprint of a value: stable, comparable, useless without the index key. */
  fingerprint(value: Buffer | string): string {
    return `fp_${keyedHash(this.#keys.index.fingerprint, value).slice(0, 24)}`;
  }

  // ---- secrets -------------------------------------------------------------------

  async addSecret(
    input: {
      name: string;
      value: Buffer;
      kind?: string;
      allow: readonly string[];
      /** Placements beyond `credential` (`header`, `query`, `body`, `path`). Default: credential only. */
      placements?: readonly string[];
      /** Connections whose SQL text may carry this secret (`--allow-sql`). */
      allowSql?: readonly string[];
      /** Accept `http://` destinations to hosts that are not loopback. */
      allowPlaintext?: boolean;
    },
    actor: string,
  ): Promise<SecretView> {
    validateName(input.name, 'secret');
    if (input.value.length === 0) throw refuse('CC_ERR_SECRET_EMPTY', 'the secret value is empty');
    if (input.value.length > MAX_SECRET_BYTES) {
      throw refuse(
        'CC_ERR_SECRET_TOO_LARGE',
        `the secret value is ${input.value.length} bytes; the limit is ${MAX_SECRET_BYTES}`,
      );
    }
    const allow = normalizeDestinations(input.allow, '--allow', {
      allowPlaintext: input.allowPlaintext ?? false,
    });
    const placements =
      input.placements === undefined && input.allowSql === undefined
        ? [...DEFAULT_PLACEMENTS]
        : normalizePlacements(input.placements, input.allowSql);
    const id = newId('sec');
    const dataKey = newDataKey();
    // The data key is wrapped inside the transaction, under the key the store names active
    // then (see sealingKey); until then the record carries no wrapped key.
    let record: SecretRecord = {
      id,
      name: input.name,
      kind: input.kind ?? 'generic',
      allow,
      placements,
      wrappedKey: null,
      keyId: null,
      ciphertext: seal(dataKey, input.value, valueAad(id)),
      fingerprint: this.fingerprint(input.value),
      createdAt: this.#clock.now(),
      erasedAt: null,
    };
    await this.#audit
      .append(
        {
          type: 'secret.add',
          actor,
          data: {
            secret: id,
            name: record.name,
            kind: record.kind,
            allow,
            placements,
            fingerprint: record.fingerprint,
          },
        },
        async (tx) => {
          if (await tx.getSecretByName(record.name)) {
            throw refuse('CC_ERR_ALREADY_EXISTS', `a secret named ${record.name} already exists`, {
              name: record.name,
            });
          }
          const master = await sealingKey(tx, this.#keys.masters);
          record = { ...record, wrappedKey: master.wrap(dataKey, dataKeyAad(id)), keyId: master.kid };
          await tx.insertSecret(record);
        },
      )
      .finally(() => dataKey.fill(0));
    this.#invalidateKnown();
    await this.#store.publish({ type: 'secret.added', id });
    return this.#secretView(record);
  }

  #secretView(record: SecretRecord): SecretView {
    return {
      id: record.id,
      name: record.name,
      kind: record.kind,
      allow: record.allow,
      placements: record.placements,
      fingerprint: record.fingerprint,
      createdAt: new Date(record.createdAt).toISOString(),
    };
  }

  /**
   * Change where a secret may be released: its destinations (`--allow`, replacing the
   * list when given) and placements (replacing them when any placement flag is given).
   * Tickets already issued keep their own destinations, and every exchange checks the
   * secret's current ones too, so narrowing takes effect at once.
   */
  async updateSecret(
    name: string,
    input: {
      allow?: readonly string[];
      placements?: readonly string[];
      allowSql?: readonly string[];
      allowPlaintext?: boolean;
    },
    actor: string,
  ): Promise<SecretView> {
    const record = await this.#store.getSecretByName(name);
    if (record === null) throw refuse('CC_ERR_NOT_FOUND', `no secret named ${name}`, { name });
    const allow =
      input.allow === undefined
        ? [...record.allow]
        : normalizeDestinations(input.allow, '--allow', { allowPlaintext: input.allowPlaintext ?? false });
    const placements =
      input.placements === undefined && input.allowSql === undefined
        ? [...record.placements]
        : normalizePlacements(input.placements, input.allowSql);
    // A connection's login credential is used to log in and nowhere else: never in its SQL.
    const loginOf = (await this.#store.listConnections())
      .filter((c) => c.credential === name && placements.includes(`sql:${c.name}`))
      .map((c) => c.name);
    if (loginOf.length > 0) {
      throw refuse(
        'CC_ERR_PLACEMENT_INVALID',
        `secret ${name} is the login credential of connection ${loginOf.join(', ')}; it is never substituted into that connection's SQL`,
        { name, connections: loginOf },
      );
    }
    try {
      await this.#audit.append(
        { type: 'secret.update', actor, data: { secret: record.id, name, allow, placements } },
        async (tx) => {
          if (!(await tx.updateSecretBindings(record.id, allow, placements)))
            throw refuse('CC_ERR_NOT_FOUND', `no secret named ${name}`, { name });
          await tx.notify({ type: 'secret.updated', id: record.id });
        },
      );
    } finally {
      // Even when the outcome is unknown (the commit may have happened): never serve old bindings.
      this.#invalidateTickets();
      this.#invalidateKnown();
    }
    return this.#secretView({ ...record, allow, placements });
  }

  async listSecrets(): Promise<SecretView[]> {
    return (await this.#store.listSecrets()).map((record) => this.#secretView(record));
  }

  /**
   * Erase a secret: its data key and ciphertext are destroyed (crypto-shredding), so
   * every ticket for it stops working for good. Refused while a connection uses it,
   * unless `force`.
   */
  async removeSecret(name: string, actor: string, options: { force?: boolean } = {}): Promise<SecretView> {
    const record = await this.#store.getSecretByName(name);
    if (record === null) throw refuse('CC_ERR_NOT_FOUND', `no secret named ${name}`, { name });
    const users = (await this.#store.listConnections()).filter(
      (c) =>
        c.credential === name || Object.values(c.injectHeaders).some((v) => v.includes(`{{secret:${name}}}`)),
    );
    if (users.length > 0 && !options.force) {
      throw refuse(
        'CC_ERR_SECRET_IN_USE',
        `secret ${name} is used by connection ${users.map((c) => c.name).join(', ')}`,
        {
          connections: users.map((c) => c.name),
        },
      );
    }
    const at = this.#clock.now();
    try {
      await this.#audit.append(
        { type: 'secret.erase', actor, data: { secret: record.id, name, fingerprint: record.fingerprint } },
        async (tx) => {
          if (!(await tx.eraseSecret(record.id, at)))
            throw refuse('CC_ERR_NOT_FOUND', `no secret named ${name}`, { name });
          await tx.notify({ type: 'secret.erased', id: record.id });
        },
      );
    } finally {
      this.#invalidateTickets();
      this.#invalidateKnown();
    }
    return this.#secretView(record);
  }

  /** Decrypt a secret by record, for credential injection and exchange. */
  #decrypt(record: SecretRecord): SecretValue | null {
    if (record.wrappedKey === null || record.ciphertext === null) return null;
    // Unwrapped by the kid the row names: a key this replica lacks is reloaded once, then
    // refused as CC_ERR_MASTER_KEY_UNAVAILABLE naming that kid.
    const dataKey = unwrapDataKey(this.#keys.masters, record);
    const value = open(dataKey, record.ciphertext, valueAad(record.id));
    dataKey.fill(0);
    if (value === null) {
      throw refuse('CC_ERR_STORE_CORRUPT', `the value of secret ${record.id} does not authenticate`, {
        secret: record.id,
      });
    }
    return new SecretValue(value);
  }

  /**
   * Release a secret by name for the gateway's own use (a connection's credential).
   * Audited before release, like an exchange.
   */
  async releaseCredential(name: string, request: ExchangeRequest): Promise<Exchange> {
    const record = await this.#store.getSecretByName(name);
    if (record === null) throw refuse('CC_ERR_NOT_FOUND', `no secret named ${name}`, { name });
    // The secret's allow list binds the connection's own credential too (checked at add,
    // and here again: the secret or the connection may have changed since).
    if (!record.allow.some((d) => matchesTarget(parseDestination(d), request.target))) {
      throw refuse(
        'CC_ERR_CREDENTIAL_DESTINATION',
        `secret ${record.id} may not be released to ${describeTarget(request.target)}`,
        { secret: record.id },
      );
    }
    const value = this.#decrypt(record);
    if (value === null)
      throw refuse('CC_ERR_TICKET_SECRET_ERASED', `secret ${record.id} was erased`, { secret: record.id });
    const audited = await this.#audit.append(
      {
        type: 'credential.inject',
        actor: request.principal.ref,
        data: {
          secret: record.id,
          fingerprint: record.fingerprint,
          target: describeTarget(request.target),
          operation: request.operation ?? null,
          ...workflowTags(request.principal),
          ...request.context,
        },
      },
      undefined,
      this.#releaseGuard(request.principal, [], record.id),
    );
    return {
      ticketId: '',
      secretId: record.id,
      secretName: record.name,
      fingerprint: record.fingerprint,
      value,
      auditSeq: audited.seq,
    };
  }

  /**
   * Every live secret's value, for the response scanners (a known secret in a response
   * becomes a ticket). Cached until the next change event.
   */
  async knownSecrets(): Promise<ReadonlyArray<KnownSecret>> {
    if (this.#known !== null && this.#knownEpoch.mayServe(this.#knownAt)) return this.#known;
    const token = this.#knownEpoch.begin();
    const out: KnownSecret[] = [];
    for (const record of await this.#store.listSecrets()) {
      const value = this.#decrypt(record);
      if (value !== null)
        out.push({
          id: record.id,
          name: record.name,
          allow: record.allow,
          fingerprint: record.fingerprint,
          value,
        });
    }
    if (this.#knownEpoch.mayKeep(token)) {
      this.#known = out;
      this.#knownAt = token;
    }
    return out;
  }

  /**
   * A secret came back in a response: hand the caller a fresh ticket for it instead. The
   * ticket is a child of the narrowest ticket the request exchanged (preferring one for the
   * same secret): destinations within the parent's, the secret's and the place the content
   * came from; expiry no later than the parent chain's; no more uses than the chain has
   * left (uses taken through it count against every ancestor); revoked with the parent.
   * With no parent it is bound to the caller and the given destinations, with a bounded
   * lifetime.
   */
  async reissueForResponse(secretId: string, input: FoundScope, actor: string): Promise<IssuedTicket> {
    const secret = await this.#store.getSecretById(secretId);
    if (secret === null || secret.erasedAt !== null)
      throw refuse('CC_ERR_NOT_FOUND', `no live secret ${secretId}`, { secret: secretId });
    const now = this.#clock.now();
    const parent = await this.#foundParent(secretId, input);
    const target = input.target;
    const within = (outers: readonly Destination[], inner: Destination): boolean =>
      coveredByAny(outers, inner) ||
      // `conn:X` for the connection the content came from is within a host pattern matching X.
      (target !== undefined &&
        inner.kind === 'conn' &&
        target.connection === inner.name &&
        outers.some((outer) => outer.kind === 'host' && matchesTarget(outer, target)));
    const secretDests = secret.allow.map((d) => parseDestination(d));
    const parentRecord = parent === null ? null : parent.chain[0]!;
    const parentDests = parentRecord?.destinations.map((d) => parseDestination(d)) ?? null;
    const wanted =
      input.destinations !== undefined && input.destinations.length > 0
        ? input.destinations
        : target === undefined && parent === null
          ? secret.allow
          : [];
    const destinations = normalizeDestinations(wanted).filter((d) => {
      const dest = parseDestination(d);
      return within(secretDests, dest) && (parentDests === null || within(parentDests, dest));
    });
    let expiresAt: number;
    let maxUses: number | null = null;
    if (parent !== null) {
      expiresAt = Math.min(parent.expiry ?? Number.POSITIVE_INFINITY, now + this.#options.defaultTicketTtlMs);
      maxUses = parent.remaining === null ? null : Math.max(0, parent.remaining);
    } else {
      expiresAt =
        now +
        (input.operator === true
          ? this.#options.defaultTicketTtlMs
          : (this.#options.foundTicketTtlMs ??
            Math.min(this.#options.defaultTicketTtlMs, FOUND_TICKET_TTL_MS)));
    }
    const ticket = mintTicket();
    const record: TicketRecord = {
      id: newId('tkt'),
      hash: this.ticketHash(ticket),
      secretId,
      principal: input.principal,
      destinations,
      expiresAt,
      maxUses,
      uses: 0,
      parentId: parentRecord?.id ?? null,
      createdAt: now,
      revokedAt: null,
    };
    const owner = parentRecord === null ? null : await this.#store.getTicketWorkflow(parentRecord.id);
    await this.#audit.append(
      {
        type: 'token.reissue',
        actor,
        data: {
          ticket: record.id,
          secret: secretId,
          principal: record.principal,
          parent: record.parentId,
          destinations,
          expiresAt: iso(record.expiresAt),
          maxUses,
          ...input.context,
        },
      },
      async (tx) => {
        await tx.insertTicket(record);
        // A child of a workflow node's ticket belongs to that node too (`workflow show` lists it).
        if (owner !== null) await tx.addWorkflowTicket(owner, record.id);
      },
    );
    return { ticket, view: this.#ticketView(parent === null ? [record] : [record, ...parent.chain], secret) };
  }

  /**
   * The narrowest of the request's tickets that can parent a found-secret ticket: bound to
   * the same principal; one for the same secret first, then the earliest expiry, then the
   * fewest uses left. A revoked or expired parent still qualifies: its child is dead with it.
   */
  async #foundParent(
    secretId: string,
    input: FoundScope,
  ): Promise<{ chain: TicketRecord[]; expiry: number | null; remaining: number | null } | null> {
    let best: {
      chain: TicketRecord[];
      expiry: number | null;
      remaining: number | null;
      same: boolean;
    } | null = null;
    const rank = (c: { expiry: number | null; remaining: number | null; same: boolean }) =>
      [
        c.same ? 0 : 1,
        c.expiry ?? Number.POSITIVE_INFINITY,
        c.remaining ?? Number.POSITIVE_INFINITY,
      ] as const;
    for (const id of [...new Set(input.parents ?? [])].slice(-MAX_PARENT_CANDIDATES)) {
      const record = await this.#store.getTicketById(id);
      if (record === null || !sameText(record.principal, input.principal)) continue;
      const chain = await this.#chain(record);
      const expiry = chain.reduce<number | null>(
        (min, t) => (t.expiresAt === null ? min : min === null ? t.expiresAt : Math.min(min, t.expiresAt)),
        null,
      );
      const remaining = chain.reduce<number | null>(
        (min, t) =>
          t.maxUses === null ? min : min === null ? t.maxUses - t.uses : Math.min(min, t.maxUses - t.uses),
        null,
      );
      const candidate = { chain, expiry, remaining, same: record.secretId === secretId };
      if (best === null) {
        best = candidate;
        continue;
      }
      const [a, b] = [rank(candidate), rank(best)];
      if (a[0] < b[0] || (a[0] === b[0] && (a[1] < b[1] || (a[1] === b[1] && a[2] < b[2])))) best = candidate;
    }
    return best;
  }

  /**
   * Count one found-secret registration for `principal`; refuse past the limit. The first
   * refusal in a window is audited (`found.limit`), the rest only counted.
   */
  async #countRegistration(principal: string, actor: string): Promise<void> {
    const limit = this.#options.foundSecretLimit ?? { max: 100, windowMs: 60 * 60 * 1000 };
    const now = this.#clock.now();
    if (this.#registrations.size > MAX_TRACKED_PRINCIPALS) {
      for (const [key, entry] of this.#registrations)
        if (now - entry.start >= limit.windowMs) this.#registrations.delete(key);
    }
    let entry = this.#registrations.get(principal);
    if (entry === undefined || now - entry.start >= limit.windowMs) {
      entry = { start: now, count: 0, refused: false };
      this.#registrations.set(principal, entry);
    }
    if (entry.count >= limit.max) {
      if (!entry.refused) {
        entry.refused = true;
        await this.#audit
          .append({
            type: 'found.limit',
            actor,
            data: { principal, limit: limit.max, windowSeconds: Math.round(limit.windowMs / 1000) },
          })
          .catch(() => undefined); // the refusal stands whether or not it could be recorded
      }
      throw refuse(
        'CC_ERR_FOUND_SECRETS_LIMIT',
        `${principal} registered ${entry.count} found secrets in the last ${Math.round(limit.windowMs / 1000)}s; the limit is ${limit.max}`,
        { principal, limit: limit.max, windowSeconds: Math.round(limit.windowMs / 1000) },
      );
    }
    entry.count += 1;
  }

  /**
   * A secret found in text (a prompt, a log line, a response): register it (once per
   * value: an existing live secret with the same fingerprint is reused) and hand back a
   * ticket scoped as `reissueForResponse` scopes one. The new secret itself may go only to
   * `destinations` (the place it came from). Registrations are capped per principal and
   * window (`CC_ERR_FOUND_SECRETS_LIMIT`); reuse of a registered value is not counted.
   */
  async tokenizeFound(
    value: Buffer,
    input: FoundScope & { destinations: readonly string[]; kind: string; source: string },
    actor: string,
  ): Promise<IssuedTicket> {
    const fingerprint = this.fingerprint(value);
    // The cached known-secret list, not a table scan: this runs on the response path.
    let secretId = (await this.knownSecrets()).find((s) => s.fingerprint === fingerprint)?.id ?? null;
    if (secretId === null) {
      const kind = /^[a-z0-9-]{1,48}$/.test(input.kind) ? input.kind : 'found';
      if (input.operator !== true) await this.#countRegistration(input.principal, actor);
      try {
        const view = await this.addSecret(
          { name: `found-${kind}-${fingerprint.slice(3, 15)}`, value, kind, allow: input.destinations },
          actor,
        );
        secretId = view.id;
      } catch (error) {
        // Two responses found the same value at once: the other one registered it.
        if (!(error instanceof CoatcheckError) || error.code !== 'CC_ERR_ALREADY_EXISTS') throw error;
        this.#invalidateKnown();
        secretId = (await this.knownSecrets()).find((s) => s.fingerprint === fingerprint)?.id ?? null;
        if (secretId === null) throw error;
      }
    }
    return this.reissueForResponse(
      secretId,
      {
        principal: input.principal,
        destinations: input.destinations,
        ...(input.target === undefined ? {} : { target: input.target }),
        ...(input.parents === undefined ? {} : { parents: input.parents }),
        ...(input.operator === undefined ? {} : { operator: input.operator }),
        context: { source: input.source, ...input.context },
      },
      actor,
    );
  }

  // ---- tickets -------------------------------------------------------------------

  #ticketStatus(chain: readonly TicketRecord[], secret: SecretRecord | null, now: number): TicketStatus {
    if (chain.some((t) => t.revokedAt !== null)) return 'revoked';
    if (secret === null || secret.erasedAt !== null) return 'erased';
    if (chain.some((t) => t.expiresAt !== null && t.expiresAt <= now)) return 'expired';
    if (chain.some((t) => t.maxUses !== null && t.uses >= t.maxUses)) return 'exhausted';
    return 'active';
  }

  #ticketView(chain: readonly TicketRecord[], secret: SecretRecord | null): TicketView {
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

  async #chain(ticket: TicketRecord): Promise<TicketRecord[]> {
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
      hash: this.ticketHash(ticket),
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
    return { ticket, view: this.#ticketView([record], secret) };
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
    const record = await this.#store.getTicketByHash(this.ticketHash(ticketOrId));
    if (record === null) throw refuse('CC_ERR_TICKET_UNKNOWN', 'no such ticket in this store');
    return record;
  }

  async inspectTicket(ticketOrId: string): Promise<TicketView & { chain: string[] }> {
    const record = await this.#lookup(ticketOrId);
    const chain = await this.#chain(record);
    const secret = await this.#store.getSecretById(record.secretId);
    return { ...this.#ticketView(chain, secret), chain: chain.map((t) => t.id) };
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
      out.push(this.#ticketView(await this.#chain(record), secrets.get(record.secretId) ?? null));
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
    const chain = await this.#chain(parent);
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
      hash: this.ticketHash(ticket),
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
    return { ticket, view: this.#ticketView([record, ...chain], secret) };
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
      this.#invalidateTickets();
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

  /**
   * What a release depends on, re-checked in the transaction that writes its audit record
   * (ADR 0013): the ticket chain, its secret and the principal (an agent, or a workflow
   * node). Caches may lag a revocation on another replica; this check cannot.
   */
  #releaseGuard(principal: Principal, tickets: readonly string[], secretId: string): AuditGuard {
    const agent =
      principal.kind === 'agent' && principal.ref.startsWith('agent:') ? principal.ref.slice(6) : null;
    const node = principal.kind === 'subtask' ? principal.attributes.subtask : undefined;
    const ids = {
      tickets,
      agents: agent === null ? [] : [agent],
      workflows: typeof node === 'string' ? [node] : [],
      secrets: [secretId],
    };
    return {
      ids,
      refuse: (dead) => {
        const [id, reason] = dead.entries().next().value as [string, DeadReason];
        const details = { checkedAt: 'commit', ...(tickets.length > 0 ? { ticket: tickets[0] } : {}) };
        if (id === agent) {
          const code = reason === 'expired' ? 'CC_ERR_AGENT_EXPIRED' : 'CC_ERR_AGENT_REVOKED';
          return refuse(code, `agent ${id} is no longer live`, { ...details, agent: id });
        }
        if (id === node) {
          const code = reason === 'expired' ? 'CC_ERR_WORKFLOW_EXPIRED' : 'CC_ERR_WORKFLOW_ENDED';
          return refuse(code, `workflow node ${id} is no longer active`, { ...details, subtask: id });
        }
        if (id === secretId)
          return refuse('CC_ERR_TICKET_SECRET_ERASED', `secret ${id} was erased`, { ...details, secret: id });
        const code = reason === 'expired' ? 'CC_ERR_TICKET_EXPIRED' : 'CC_ERR_TICKET_REVOKED';
        return refuse(code, `ticket ${tickets[0]} can no longer be exchanged (${id} is ${reason})`, details);
      },
    };
  }

  async #resolveCached(ticket: string, hash: string): Promise<CachedTicket> {
    const now = this.#clock.now();
    const cached = this.#cache.get(hash);
    if (
      cached !== undefined &&
      now - cached.cachedAt < this.#options.cacheMs &&
      this.#epoch.mayServe(cached.epoch)
    )
      return cached;
    const token = this.#epoch.begin();
    const record = await this.#store.getTicketByHash(hash);
    if (record === null) throw refuse('CC_ERR_TICKET_UNKNOWN', 'no such ticket in this store');
    // The stored hash is an index lookup; compare again in constant time before trusting it.
    if (!sameText(record.hash, this.ticketHash(ticket)))
      throw refuse('CC_ERR_TICKET_UNKNOWN', 'no such ticket in this store');
    const chain = await this.#chain(record);
    const secret = await this.#store.getSecretById(record.secretId);
    if (secret === null)
      throw refuse('CC_ERR_STORE_CORRUPT', `ticket ${record.id} names a missing secret`, {
        ticket: record.id,
      });
    const entry: CachedTicket = { chain, secret, value: this.#decrypt(secret), cachedAt: now, epoch: token };
    // Kept only if no change notice arrived (and the feed stayed current) while reading.
    if (this.#epoch.mayKeep(token)) {
      if (this.#cache.size > 100_000) this.#cache.clear();
      this.#cache.set(hash, entry);
    }
    return entry;
  }

  /**
   * Exchange a ticket for its secret. Checks, in this order: shape and checksum,
   * existence, revocation (the whole chain), erasure, expiry, principal binding,
   * destination binding (ticket and secret), uses left. Every refusal is audited; a
   * release happens only after its audit record is durable.
   */
  async exchange(ticket: string, request: ExchangeRequest): Promise<Exchange> {
    const baseData = {
      target: describeTarget(request.target),
      placement: placementsOf(request).join(','),
      operation: request.operation ?? null,
      ...workflowTags(request.principal),
      ...request.context,
    };
    let ticketId: string | null = null;
    try {
      assertTicket(ticket);
      const hash = this.ticketHash(ticket);
      const { chain, secret, value } = await this.#resolveCached(ticket, hash);
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
        this.#releaseGuard(
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
              presented: ticketId === null ? this.fingerprint(ticket.slice(0, 256)) : null,
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

  /** Every ticket-shaped substring of `text` (for front-ends that look for tickets in bodies). */
  static findTickets(text: string): string[] {
    return text.match(TICKET_PATTERN) ?? [];
  }
}
