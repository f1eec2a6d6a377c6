import { timingSafeEqual } from 'node:crypto';
import { CoatcheckError, type ErrorCode } from '../core/errors.js';
import type { Principal } from '../core/principal.js';
import type { SecretValue } from '../core/secret-value.js';
import type { Target } from './destinations.js';
import type { Placement } from './placements.js';

/**
 * What the vault's services share: the views and requests they take and return, and the
 * small checks every one of them uses (ADR 0017). No state lives here.
 */

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

export const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function refuse(code: ErrorCode, message: string, details?: Record<string, unknown>): CoatcheckError {
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
export function placementsOf(request: ExchangeRequest): readonly Placement[] {
  const p = request.placement ?? 'credential';
  const list = typeof p === 'string' ? [p] : p;
  return list.length === 0 ? ['credential'] : [...new Set(list)];
}

export function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
