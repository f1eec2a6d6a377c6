import { hostname } from 'node:os';
import type { AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { assertRelayKey, mintRelayKey } from '../core/ticket-format.js';
import type { RelayRecord, Store } from '../store/types.js';
import { keyedHash } from '../vault/envelope.js';

/** A relay session sends its heartbeat this often; `relay list` calls it connected within twice that. */
export const RELAY_HEARTBEAT_MS = 15_000;

export interface RelayView {
  readonly id: string;
  readonly name: string;
  readonly createdAt: string;
  readonly revokedAt: string | null;
  readonly lastSeenAt: string | null;
  readonly lastAddress: string | null;
  /** The gateway replica that session was on (`HOST/PID`). */
  readonly lastReplica: string | null;
  /** `connected`: a session was seen within two heartbeats (on any replica). */
  readonly status: 'connected' | 'offline' | 'never-connected' | 'revoked';
  /** Sessions of this relay open on the replica that answered (absent when no gateway is serving). */
  readonly sessions?: number;
}

/** Relay names: as connection names (letters, digits, _ or -, at most 63), so `--via` can name one. */
export const RELAY_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/**
 * Relay identities (docs/relay.md): a name and a key shown once at creation. The store
 * keeps only a keyed hash of the key, as for agent keys. A relay key lets its holder carry
 * upstream connections the gateway opens; it releases nothing.
 */
export class Relays {
  readonly #store: Store;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #lookupKey: Buffer;
  /** This replica's name in `relay list` and the console: the host name and the process id. */
  readonly replica: string = `${hostname()}/${process.pid}`;
  /** Sessions open on this replica, by relay id (the hub reports them). */
  sessionsOf: (relayId: string) => number | undefined = () => undefined;

  constructor(store: Store, audit: AuditLog, clock: Clock, lookupKey: Buffer) {
    this.#store = store;
    this.#audit = audit;
    this.#clock = clock;
    this.#lookupKey = lookupKey;
  }

  #view(record: RelayRecord): RelayView {
    const now = this.#clock.now();
    const sessions = this.sessionsOf(record.id);
    return {
      id: record.id,
      name: record.name,
      createdAt: new Date(record.createdAt).toISOString(),
      revokedAt: iso(record.revokedAt),
      lastSeenAt: iso(record.lastSeenAt),
      lastAddress: record.lastAddress,
      lastReplica: record.lastReplica,
      status:
        record.revokedAt !== null
          ? 'revoked'
          : (sessions ?? 0) > 0 ||
              (record.lastSeenAt !== null && now - record.lastSeenAt <= 2 * RELAY_HEARTBEAT_MS)
            ? 'connected'
            : record.lastSeenAt === null
              ? 'never-connected'
              : 'offline',
      ...(sessions === undefined ? {} : { sessions }),
    };
  }

  async create(name: string, actor: string): Promise<{ key: string; relay: RelayView }> {
    if (!RELAY_NAME_RE.test(name)) {
      throw new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        'a relay name must be letters, digits, _ or -, at most 63',
        {
          details: { field: 'name' },
        },
      );
    }
    const key = mintRelayKey();
    const record: RelayRecord = {
      id: newId('rly'),
      name,
      keyHash: keyedHash(this.#lookupKey, key),
      createdAt: this.#clock.now(),
      revokedAt: null,
      lastSeenAt: null,
      lastAddress: null,
      lastReplica: null,
    };
    await this.#audit.append(
      { type: 'relay.create', actor, data: { relay: record.id, name } },
      async (tx) => {
        if (await tx.getRelayByName(name)) {
          throw new CoatcheckError('CC_ERR_ALREADY_EXISTS', `a relay named ${name} already exists`, {
            details: { name },
          });
        }
        await tx.insertRelay(record);
      },
    );
    return { key, relay: this.#view(record) };
  }

  async list(): Promise<RelayView[]> {
    return (await this.#store.listRelays()).map((record) => this.#view(record));
  }

  /**
   * Revoke a relay: its record, the audit record and the change notice commit together;
   * every replica's hub drops the relay's sessions when the notice arrives, and its key is
   * refused from then on.
   */
  async revoke(name: string, actor: string): Promise<RelayView> {
    const record = await this.#store.getRelayByName(name);
    if (record === null)
      throw new CoatcheckError('CC_ERR_RELAY_UNKNOWN', `no relay named ${name}`, { details: { name } });
    const at = this.#clock.now();
    await this.#audit.append(
      { type: 'relay.revoke', actor, data: { relay: record.id, name } },
      async (tx) => {
        await tx.revokeRelay(record.id, at);
        await tx.notify({ type: 'relay.revoked', id: record.id });
      },
    );
    return this.#view({ ...record, revokedAt: at });
  }

  /**
   * The live relay a presented key belongs to. Always read from the store (a relay
   * authenticates once per session, not per request). Errors never echo the key.
   */
  async authenticate(key: string): Promise<RelayRecord> {
    assertRelayKey(key);
    const record = await this.#store.getRelayByKeyHash(keyedHash(this.#lookupKey, key));
    if (record === null) throw new CoatcheckError('CC_ERR_RELAY_UNKNOWN', 'the relay key is not known');
    if (record.revokedAt !== null) {
      throw new CoatcheckError('CC_ERR_RELAY_REVOKED', `relay ${record.id} was revoked`, {
        details: { relay: record.id },
      });
    }
    return record;
  }

  /** Whether the relay is still live (checked again at each heartbeat). */
  async isLive(id: string, keyHash: string): Promise<boolean> {
    const record = await this.#store.getRelayByKeyHash(keyHash);
    return record !== null && record.id === id && record.revokedAt === null;
  }

  touch(id: string, address: string): Promise<void> {
    return this.#store.touchRelay(id, this.#clock.now(), address, this.replica);
  }
}
