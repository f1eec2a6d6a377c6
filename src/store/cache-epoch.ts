import type { Store } from './types.js';

/**
 * Versioned cache fills (ADR 0013). A cache that must never outlive a revocation bumps
 * its epoch on every change notice that concerns it (and on this replica's own changes,
 * whether or not they succeeded). A read started at epoch E may fill the cache only if
 * the epoch is still E when it finishes and the change feed stayed current: a notice
 * that arrives while a row is being read makes that row unfit to keep, whatever the
 * order in which the read and the notice complete. While the feed is stale (a missed
 * heartbeat), nothing is served from cache and nothing is kept.
 */
export class CacheEpoch {
  #epoch = 0;
  readonly #store: Pick<Store, 'feedCurrent'>;

  constructor(store: Pick<Store, 'feedCurrent'>) {
    this.#store = store;
  }

  /** Something changed: every read in flight is unfit to keep. */
  bump(): void {
    this.#epoch++;
  }

  /** Take before reading from the store; -1 when the feed is stale (never kept). */
  begin(): number {
    return this.#store.feedCurrent() ? this.#epoch : -1;
  }

  /** Whether a read begun at `token` may be kept. */
  mayKeep(token: number): boolean {
    return token === this.#epoch && this.#store.feedCurrent();
  }

  /**
   * Whether an entry filled at `token` may be served now: the feed is current and no
   * change arrived since the fill (checking the feed may itself deliver one: SQLite's
   * foreign-commit check emits `resync` synchronously).
   */
  mayServe(token: number): boolean {
    return this.#store.feedCurrent() && token === this.#epoch;
  }
}
