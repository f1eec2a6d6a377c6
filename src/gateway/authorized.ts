/**
 * Fail-closed by construction (ADR 0016, issue 13): the values a front-end must hold to
 * release a secret or forward an operation, which only the exchange pipeline makes.
 *
 * - `Authorized`: policy allowed this operation for this session (approval included). The
 *   decision's audit record may still be in flight: it shares a group commit with the
 *   releases that follow. Ticket exchange and credential release accept nothing else.
 * - `Cleared`: the same, once the decision's audit record is durable. Forwarding accepts
 *   nothing else; `ExchangePipeline.clear` is the one way to get one.
 *
 * Both are checked at run time as well as by type: each is registered when made (a
 * WeakSet: an object literal cast to the type is refused) and names the session it was
 * made for (a value from one session is refused in another).
 */
import { CoatcheckError } from '../core/errors.js';

declare const authorizedBrand: unique symbol;
declare const clearedBrand: unique symbol;

/** A policy allow for one operation of one session (see the file comment). */
export interface Authorized {
  readonly [authorizedBrand]: true;
  readonly session: string;
  readonly action: string;
  readonly connection: string;
  /** Obligations from policy: field or column patterns to mask. */
  readonly mask: readonly string[];
  /** Policy ids (and `approval:ID`), as audited. */
  readonly reasons: readonly string[];
}

/** An `Authorized` whose decision record is durable: the operation may be forwarded. */
export interface Cleared {
  readonly [clearedBrand]: true;
  readonly session: string;
  readonly action: string;
  readonly connection: string;
}

const authorizedMade = new WeakMap<object, Promise<unknown>>();
const clearedMade = new WeakSet<object>();

function forged(what: string, why: string): CoatcheckError {
  // Never the result of agent input: a front-end bug. Refuse rather than release.
  return new CoatcheckError('CC_ERR_INTERNAL', `${what} refused: ${why}`);
}

/** Made by the pipeline's policy step only. `recorded` settles when the decision is durable. */
export function makeAuthorized(
  fields: {
    session: string;
    action: string;
    connection: string;
    mask: readonly string[];
    reasons: readonly string[];
  },
  recorded: Promise<unknown>,
): Authorized {
  const value = Object.freeze({
    ...fields,
    mask: [...fields.mask],
    reasons: [...fields.reasons],
  }) as unknown as Authorized;
  // Awaited by `clear`; a failure there refuses the operation.
  recorded.catch(() => undefined);
  authorizedMade.set(value, recorded);
  return value;
}

/** Throws unless `value` was made by the pipeline for this session. */
export function checkAuthorized(value: Authorized | undefined, session: string, what: string): void {
  if (value === undefined || typeof value !== 'object' || value === null || !authorizedMade.has(value))
    throw forged(what, 'no policy decision was made for it');
  if (value.session !== session) throw forged(what, 'the policy decision was made for another session');
}

/** Wait until the decision's audit record is durable; a failed write refuses (fail closed). */
export async function clearAuthorized(value: Authorized, session: string): Promise<Cleared> {
  checkAuthorized(value, session, 'forwarding');
  await authorizedMade.get(value);
  const cleared = Object.freeze({
    session: value.session,
    action: value.action,
    connection: value.connection,
  }) as unknown as Cleared;
  clearedMade.add(cleared);
  return cleared;
}

/** Throws unless `value` was made by `clear` for this session. */
export function checkCleared(value: Cleared | undefined, session: string): void {
  if (value === undefined || typeof value !== 'object' || value === null || !clearedMade.has(value))
    throw forged('forwarding', 'the policy decision is not recorded');
  if (value.session !== session)
    throw forged('forwarding', 'the policy decision was made for another session');
}
