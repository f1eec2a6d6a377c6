import type { SecretValue } from '../core/secret-value.js';
import { CacheEpoch } from '../store/cache-epoch.js';
import type { SecretRecord, Store, StoreChange, TicketRecord } from '../store/types.js';
import type { KnownSecret } from './model.js';

/** A resolved ticket as the exchange path keeps it. */
export interface CachedTicket {
  readonly chain: readonly TicketRecord[]; // [ticket, parent, grandparent, ...]
  readonly secret: SecretRecord;
  readonly value: SecretValue | null;
  readonly cachedAt: number;
  /** The cache epoch the rows were read at (ADR 0013). */
  readonly epoch: number;
}

/** A connection's credential (a secret read by name) as the credential path keeps it. */
export interface CachedCredential {
  readonly secret: SecretRecord;
  readonly value: SecretValue | null;
  readonly cachedAt: number;
  /** The known-secret epoch the row was read at: every change to a secret drops it. */
  readonly epoch: number;
}

/** Most resolved tickets kept before the cache is dropped whole. */
const MAX_CACHED_TICKETS = 100_000;
/** Most credentials kept (a connection names one or a few). */
const MAX_CACHED_CREDENTIALS = 10_000;

/**
 * The vault's caches and their epochs (ADR 0013, ADR 0017): resolved tickets, the list of
 * live secrets the response scanners use, and connections' credentials by secret name (on
 * the known list's epoch: whatever changes a secret changes both). Every fill is
 * versioned: a read during which a change notice arrived (or the feed went stale) is
 * served once and never kept.
 * The services never touch a cache map or an epoch directly; they go through this class.
 */
export class VaultCaches {
  readonly #tickets = new Map<string, CachedTicket>();
  /** Fills of the ticket cache are versioned: a change during a read keeps it out (ADR 0013). */
  readonly #ticketEpoch: CacheEpoch;
  #known: ReadonlyArray<KnownSecret> | null = null;
  readonly #credentials = new Map<string, CachedCredential>();
  #knownAt = -1;
  readonly #knownEpoch: CacheEpoch;
  readonly #unsubscribe: () => void;

  constructor(store: Store) {
    this.#ticketEpoch = new CacheEpoch(store);
    this.#knownEpoch = new CacheEpoch(store);
    this.#unsubscribe = store.subscribe((change) => this.#onChange(change));
  }

  /** Drop cached tickets and make every read in flight unfit to keep. */
  invalidateTickets(): void {
    this.#ticketEpoch.bump();
    this.#tickets.clear();
  }

  /** Drop the known-secret list and the credentials, and make every read of them in flight unfit to keep. */
  invalidateKnown(): void {
    this.#knownEpoch.bump();
    this.#known = null;
    this.#credentials.clear();
  }

  close(): void {
    this.#unsubscribe();
    this.#tickets.clear();
    this.#credentials.clear();
  }

  #onChange(change: StoreChange): void {
    // Approvals and connections do not touch tickets or values; a new secret changes only
    // the known-secret list (found secrets are added on the response path, so the ticket
    // cache must survive them); revocations only the tickets. Anything else — erasures,
    // binding updates, rotations, resyncs, and any change type added later — drops both.
    if (
      change.type === 'approval.changed' ||
      change.type === 'connection.changed' ||
      change.type === 'relay.revoked'
    )
      return;
    // Revocations and ended workflows end tickets, never change a secret: the known-secret
    // list stays (at 100k secrets, reloading it decrypts every value).
    if (
      change.type === 'ticket.revoked' ||
      change.type === 'agent.revoked' ||
      change.type === 'workflow.ended'
    ) {
      this.invalidateTickets();
      return;
    }
    this.invalidateKnown();
    if (change.type === 'secret.added') return;
    this.invalidateTickets();
  }

  /**
   * The ticket whose lookup hash is `hash`: from the cache while it is younger than
   * `maxAgeMs` and no change arrived since it was read; otherwise read by `load` and kept
   * only if no change notice arrived (and the feed stayed current) while reading.
   */
  async ticket(
    hash: string,
    now: number,
    maxAgeMs: number,
    load: () => Promise<Omit<CachedTicket, 'cachedAt' | 'epoch'>>,
  ): Promise<CachedTicket> {
    const cached = this.#tickets.get(hash);
    if (cached !== undefined && now - cached.cachedAt < maxAgeMs && this.#ticketEpoch.mayServe(cached.epoch))
      return cached;
    const token = this.#ticketEpoch.begin();
    const entry: CachedTicket = { ...(await load()), cachedAt: now, epoch: token };
    // Kept only if no change notice arrived (and the feed stayed current) while reading.
    if (this.#ticketEpoch.mayKeep(token)) {
      if (this.#tickets.size > MAX_CACHED_TICKETS) this.#tickets.clear();
      this.#tickets.set(hash, entry);
    }
    return entry;
  }

  /**
   * The secret named `name`, for a connection's credential: from the cache while it is
   * younger than `maxAgeMs` and no secret changed since it was read; otherwise read by
   * `load` (null: no such secret, never kept) and kept only if nothing changed meanwhile.
   */
  async credential(
    name: string,
    now: number,
    maxAgeMs: number,
    load: () => Promise<Omit<CachedCredential, 'cachedAt' | 'epoch'> | null>,
  ): Promise<CachedCredential | null> {
    const cached = this.#credentials.get(name);
    if (cached !== undefined && now - cached.cachedAt < maxAgeMs && this.#knownEpoch.mayServe(cached.epoch))
      return cached;
    const token = this.#knownEpoch.begin();
    const loaded = await load();
    if (loaded === null) return null;
    const entry: CachedCredential = { ...loaded, cachedAt: now, epoch: token };
    if (this.#knownEpoch.mayKeep(token)) {
      if (this.#credentials.size >= MAX_CACHED_CREDENTIALS) this.#credentials.clear();
      this.#credentials.set(name, entry);
    }
    return entry;
  }

  /** The known-secret list: cached until the next change event, else read by `load`. */
  async known(load: () => Promise<KnownSecret[]>): Promise<ReadonlyArray<KnownSecret>> {
    if (this.#known !== null && this.#knownEpoch.mayServe(this.#knownAt)) return this.#known;
    const token = this.#knownEpoch.begin();
    const out = await load();
    if (this.#knownEpoch.mayKeep(token)) {
      this.#known = out;
      this.#knownAt = token;
    }
    return out;
  }
}
