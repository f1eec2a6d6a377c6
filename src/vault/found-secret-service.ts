import type { AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { mintTicket } from '../core/ticket-format.js';
import type { Store, TicketRecord } from '../store/types.js';
import {
  coveredByAny,
  type Destination,
  matchesTarget,
  normalizeDestinations,
  parseDestination,
} from './destinations.js';
import type { KeyService } from './key-service.js';
import { type FoundScope, type IssuedTicket, iso, refuse, sameText, type VaultOptions } from './model.js';
import type { SecretService } from './secret-service.js';
import type { TicketService } from './ticket-service.js';
import type { VaultCaches } from './vault-caches.js';

/** Default cap on the lifetime of a found-secret ticket with no parent. */
const FOUND_TICKET_TTL_MS = 15 * 60 * 1000;
/** Candidate parents read per found-secret ticket (the most recent). */
const MAX_PARENT_CANDIDATES = 256;
/** Principals tracked by the found-secret rate limit before old windows are swept. */
const MAX_TRACKED_PRINCIPALS = 10_000;

/**
 * Found secrets (ADR 0010, ADR 0017): a secret that comes back in a response, or is found
 * in text an operator hands over, is registered once per value and replaced by a fresh
 * ticket. That ticket derives from the narrowest ticket of the request and is never wider
 * than it (destinations, expiry, uses), nor than the secret's own destinations and the
 * place the content came from. Registrations are capped per principal and window.
 */
export class FoundSecretService {
  readonly #store: Store;
  readonly #keys: KeyService;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #options: VaultOptions;
  readonly #caches: VaultCaches;
  readonly #secrets: SecretService;
  readonly #tickets: TicketService;
  /** Found-secret registrations per principal in the current window (this replica). */
  readonly #registrations = new Map<string, { start: number; count: number; refused: boolean }>();

  constructor(services: {
    store: Store;
    keys: KeyService;
    audit: AuditLog;
    clock: Clock;
    options: VaultOptions;
    caches: VaultCaches;
    secrets: SecretService;
    tickets: TicketService;
  }) {
    this.#store = services.store;
    this.#keys = services.keys;
    this.#audit = services.audit;
    this.#clock = services.clock;
    this.#options = services.options;
    this.#caches = services.caches;
    this.#secrets = services.secrets;
    this.#tickets = services.tickets;
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
      hash: this.#keys.ticketHash(ticket),
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
    return {
      ticket,
      view: this.#tickets.view(parent === null ? [record] : [record, ...parent.chain], secret),
    };
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
      const chain = await this.#tickets.chain(record);
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
        // Marked while the record is written (concurrent refusals do not write it twice);
        // unmarked if it could not be, so the next refusal in the window tries again. The
        // refusal stands either way.
        entry.refused = true;
        const marked = entry;
        await this.#audit
          .append({
            type: 'found.limit',
            actor,
            data: { principal, limit: limit.max, windowSeconds: Math.round(limit.windowMs / 1000) },
          })
          .catch(() => {
            marked.refused = false;
          });
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
    const fingerprint = this.#keys.fingerprint(value);
    // The cached known-secret list, not a table scan: this runs on the response path.
    let secretId =
      (await this.#secrets.knownSecrets()).find((s) => s.fingerprint === fingerprint)?.id ?? null;
    if (secretId === null) {
      const kind = /^[a-z0-9-]{1,48}$/.test(input.kind) ? input.kind : 'found';
      if (input.operator !== true) await this.#countRegistration(input.principal, actor);
      try {
        const view = await this.#secrets.addSecret(
          { name: `found-${kind}-${fingerprint.slice(3, 15)}`, value, kind, allow: input.destinations },
          actor,
        );
        secretId = view.id;
      } catch (error) {
        // Two responses found the same value at once: the other one registered it.
        if (!(error instanceof CoatcheckError) || error.code !== 'CC_ERR_ALREADY_EXISTS') throw error;
        this.#caches.invalidateKnown();
        secretId =
          (await this.#secrets.knownSecrets()).find((s) => s.fingerprint === fingerprint)?.id ?? null;
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
}
