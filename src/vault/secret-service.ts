import type { AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { newId } from '../core/ids.js';
import type { SecretRecord, Store } from '../store/types.js';
import { describeTarget, matchesTarget, normalizeDestinations, parseDestination } from './destinations.js';
import type { KeyService } from './key-service.js';
import {
  type Exchange,
  type ExchangeRequest,
  type KnownSecret,
  MAX_SECRET_BYTES,
  refuse,
  type SecretView,
  validateName,
  workflowTags,
} from './model.js';
import { DEFAULT_PLACEMENTS, normalizePlacements } from './placements.js';
import { releaseGuard } from './release-guard.js';
import type { VaultCaches } from './vault-caches.js';

/** How long a connection's credential is served from the cache (any change to a secret drops it sooner). */
const CREDENTIAL_CACHE_MS = 5_000;

/**
 * Secrets (ADR 0017): add, change where they may go, list, erase (crypto-shredding), the
 * gateway's own credential release, and the list of live values the response scanners
 * use. Every change commits with its audit record and drops the caches it affects, even
 * when its outcome is unknown.
 */
export class SecretService {
  readonly #store: Store;
  readonly #keys: KeyService;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #caches: VaultCaches;

  constructor(store: Store, keys: KeyService, audit: AuditLog, clock: Clock, caches: VaultCaches) {
    this.#store = store;
    this.#keys = keys;
    this.#audit = audit;
    this.#clock = clock;
    this.#caches = caches;
  }

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
    const { dataKey, ciphertext } = this.#keys.sealValue(id, input.value);
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
      ciphertext,
      fingerprint: this.#keys.fingerprint(input.value),
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
          record = { ...record, ...(await this.#keys.wrapDataKey(tx, id, dataKey)) };
          await tx.insertSecret(record);
        },
      )
      .finally(() => dataKey.fill(0));
    this.#caches.invalidateKnown();
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
      this.#caches.invalidateTickets();
      this.#caches.invalidateKnown();
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
      this.#caches.invalidateTickets();
      this.#caches.invalidateKnown();
    }
    return this.#secretView(record);
  }

  /**
   * Release a secret by name for the gateway's own use (a connection's credential).
   * Audited before release, like an exchange.
   */
  async releaseCredential(name: string, request: ExchangeRequest): Promise<Exchange> {
    // A connection's credential is released on every request through it: the row and its
    // value come from a cache every change to a secret drops (an erasure is checked again
    // in the audit transaction below, as for tickets).
    const cached = await this.#caches.credential(name, this.#clock.now(), CREDENTIAL_CACHE_MS, async () => {
      const secret = await this.#store.getSecretByName(name);
      return secret === null ? null : { secret, value: this.#keys.decrypt(secret) };
    });
    if (cached === null) throw refuse('CC_ERR_NOT_FOUND', `no secret named ${name}`, { name });
    const record = cached.secret;
    // The secret's allow list binds the connection's own credential too (checked at add,
    // and here again: the secret or the connection may have changed since).
    if (!record.allow.some((d) => matchesTarget(parseDestination(d), request.target))) {
      throw refuse(
        'CC_ERR_CREDENTIAL_DESTINATION',
        `secret ${record.id} may not be released to ${describeTarget(request.target)}`,
        { secret: record.id },
      );
    }
    const value = cached.value;
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
      releaseGuard(request.principal, [], record.id),
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
   * One live secret's value (null once erased or unknown), read from the store: the
   * known-secret index adds the secret a change notice names without reading every other.
   */
  async knownSecret(id: string): Promise<KnownSecret | null> {
    const record = await this.#store.getSecretById(id);
    if (record === null || record.erasedAt !== null) return null;
    const value = this.#keys.decrypt(record);
    return value === null
      ? null
      : { id: record.id, name: record.name, allow: record.allow, fingerprint: record.fingerprint, value };
  }

  /**
   * Every live secret's value, for the response scanners (a known secret in a response
   * becomes a ticket). Cached until the next change event.
   */
  knownSecrets(): Promise<ReadonlyArray<KnownSecret>> {
    return this.#caches.known(async () => {
      const out: KnownSecret[] = [];
      let n = 0;
      for (const record of await this.#store.listSecrets()) {
        // Each value is unwrapped and decrypted here: at 100k secrets that is seconds of
        // work, done in slices so that requests go on meanwhile.
        if (++n % 64 === 0) await new Promise<void>((resolve) => setImmediate(resolve));
        const value = this.#keys.decrypt(record);
        if (value !== null)
          out.push({
            id: record.id,
            name: record.name,
            allow: record.allow,
            fingerprint: record.fingerprint,
            value,
          });
      }
      return out;
    });
  }
}
