import type { AuditLog } from '../audit/audit-log.js';
import type { Clock } from '../core/clock.js';
import { TICKET_PATTERN } from '../core/ticket-format.js';
import type { Store } from '../store/types.js';
import type { Target } from './destinations.js';
import { FoundSecretService } from './found-secret-service.js';
import { KeyService } from './key-service.js';
import type { Keyring } from './keyring.js';
import type {
  Exchange,
  ExchangeRequest,
  FoundScope,
  IssuedTicket,
  KnownSecret,
  SecretView,
  TicketView,
  VaultOptions,
} from './model.js';
import { SecretService } from './secret-service.js';
import { TicketService } from './ticket-service.js';
import { VaultCaches } from './vault-caches.js';

export type {
  Exchange,
  ExchangeRequest,
  FoundScope,
  IssuedTicket,
  KnownSecret,
  SecretView,
  TicketLink,
  TicketStatus,
  TicketView,
  VaultOptions,
} from './model.js';
export { MAX_SECRET_BYTES, MAX_WORKFLOW_DEPTH, validateName, workflowTags } from './model.js';

/**
 * The vault: secrets under envelope encryption, and the tickets that stand for them.
 * Every state change commits together with its audit record; a secret is released only
 * after the record of that release is durable.
 *
 * A facade over four services that share one keyring door and one set of versioned
 * caches (ADR 0017): `secrets`, `tickets`, `found` (found-secret tickets, ADR 0010), and
 * the key service and caches it keeps to itself. Its methods keep their names and
 * behaviour; new code may call a service directly.
 */
export class Vault {
  readonly #keys: KeyService;
  readonly #caches: VaultCaches;
  /** Secrets: add, update, list, erase, credential release, the known-secret list. */
  readonly secrets: SecretService;
  /** Tickets: issue, narrow, inspect, list, revoke, exchange. */
  readonly tickets: TicketService;
  /** Found secrets: reissue for a response, tokenize found values (rate-limited). */
  readonly found: FoundSecretService;

  constructor(store: Store, keys: Keyring, audit: AuditLog, clock: Clock, options: VaultOptions) {
    this.#keys = new KeyService(keys);
    this.#caches = new VaultCaches(store);
    this.secrets = new SecretService(store, this.#keys, audit, clock, this.#caches);
    this.tickets = new TicketService(store, this.#keys, audit, clock, options, this.#caches);
    this.found = new FoundSecretService({
      store,
      keys: this.#keys,
      audit,
      clock,
      options,
      caches: this.#caches,
      secrets: this.secrets,
      tickets: this.tickets,
    });
  }

  readonly #onClose: Array<() => void> = [];

  /** Run `fn` when the vault closes (what was built over it: the shared known-secret index). */
  onClose(fn: () => void): void {
    this.#onClose.push(fn);
  }

  close(): void {
    this.#caches.close();
    for (const fn of this.#onClose.splice(0)) fn();
  }

  ticketHash(ticket: string): string {
    return this.#keys.ticketHash(ticket);
  }

  /** Keyed fingerprint of a value: stable, comparable, useless without the index key. */
  fingerprint(value: Buffer | string): string {
    return this.#keys.fingerprint(value);
  }

  // ---- secrets -------------------------------------------------------------------

  addSecret(...args: Parameters<SecretService['addSecret']>): Promise<SecretView> {
    return this.secrets.addSecret(...args);
  }

  updateSecret(...args: Parameters<SecretService['updateSecret']>): Promise<SecretView> {
    return this.secrets.updateSecret(...args);
  }

  listSecrets(): Promise<SecretView[]> {
    return this.secrets.listSecrets();
  }

  removeSecret(...args: Parameters<SecretService['removeSecret']>): Promise<SecretView> {
    return this.secrets.removeSecret(...args);
  }

  releaseCredential(name: string, request: ExchangeRequest): Promise<Exchange> {
    return this.secrets.releaseCredential(name, request);
  }

  knownSecrets(): Promise<ReadonlyArray<KnownSecret>> {
    return this.secrets.knownSecrets();
  }

  knownSecret(id: string): Promise<KnownSecret | null> {
    return this.secrets.knownSecret(id);
  }

  // ---- found secrets -------------------------------------------------------------

  /** A secret came back in a response: a fresh ticket for it, never wider than its parent (FoundSecretService). */
  reissueForResponse(secretId: string, input: FoundScope, actor: string): Promise<IssuedTicket> {
    return this.found.reissueForResponse(secretId, input, actor);
  }

  /** A secret found in text: register it once per value and hand back a ticket (FoundSecretService). */
  tokenizeFound(...args: Parameters<FoundSecretService['tokenizeFound']>): Promise<IssuedTicket> {
    return this.found.tokenizeFound(...args);
  }

  // ---- tickets -------------------------------------------------------------------

  issueTicket(...args: Parameters<TicketService['issueTicket']>): Promise<IssuedTicket> {
    return this.tickets.issueTicket(...args);
  }

  inspectTicket(ticketOrId: string): Promise<TicketView & { chain: string[] }> {
    return this.tickets.inspectTicket(ticketOrId);
  }

  listTickets(...args: Parameters<TicketService['listTickets']>): Promise<TicketView[]> {
    return this.tickets.listTickets(...args);
  }

  narrowTicket(...args: Parameters<TicketService['narrowTicket']>): Promise<IssuedTicket> {
    return this.tickets.narrowTicket(...args);
  }

  narrowForSubtask(...args: Parameters<TicketService['narrowForSubtask']>): Promise<IssuedTicket> {
    return this.tickets.narrowForSubtask(...args);
  }

  revokeTicket(ticketOrId: string, actor: string): Promise<{ id: string; revoked: string[] }> {
    return this.tickets.revokeTicket(ticketOrId, actor);
  }

  /**
   * Exchange a ticket for its secret (see TicketService.exchange): every refusal is
   * audited; a release happens only after its audit record is durable.
   */
  exchange(ticket: string, request: ExchangeRequest): Promise<Exchange> {
    return this.tickets.exchange(ticket, request);
  }

  /** Exchange a ticket the principal holds, by id (see TicketService.exchangeHeld). */
  exchangeHeld(ticketId: string, request: ExchangeRequest): Promise<Exchange> {
    return this.tickets.exchangeHeld(ticketId, request);
  }

  /** Live tickets of `principal` for a secret releasable to `target`, best first. */
  heldTickets(principal: string, secretName: string, target: Target): Promise<string[]> {
    return this.tickets.heldTickets(principal, secretName, target);
  }

  /** Every ticket-shaped substring of `text` (for front-ends that look for tickets in bodies). */
  static findTickets(text: string): string[] {
    return text.match(TICKET_PATTERN) ?? [];
  }
}
