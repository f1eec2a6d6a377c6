import { createHash } from 'node:crypto';
import type { createRemoteJWKSet, JWTPayload } from 'jose';

/** jose loads on the first token verified: a CLI command or a gateway without OIDC never pays for it. */
type Jose = typeof import('jose');
let joseModule: Promise<Jose> | null = null;
const jose = (): Promise<Jose> => {
  joseModule ??= import('jose');
  return joseModule;
};

import { CoatcheckError, type ErrorCode } from '../core/errors.js';
import type { Principal } from '../core/principal.js';

export interface OidcIssuerConfig {
  readonly issuer: string;
  readonly audience: string | readonly string[];
  /** Claim holding the groups: an array of strings, or one space-separated string. */
  readonly groupsClaim?: string;
  /** Allowed clock skew in seconds. */
  readonly clockSkewSeconds?: number;
  /** Minimum time between JWKS refetches when an unknown key id shows up. */
  readonly jwksCooldownMs?: number;
}

const MAX_TOKEN_LENGTH = 16 * 1024;
const JWT_RE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'];

export function looksLikeJwt(token: string): boolean {
  return token.length <= MAX_TOKEN_LENGTH && JWT_RE.test(token);
}

function fail(code: ErrorCode, message: string, cause?: unknown): CoatcheckError {
  return new CoatcheckError(code, message, cause === undefined ? undefined : { cause });
}

interface IssuerState {
  readonly config: OidcIssuerConfig;
  jwks: ReturnType<typeof createRemoteJWKSet> | null;
  discovery: Promise<ReturnType<typeof createRemoteJWKSet>> | null;
  /** jose's record of the key set it holds (`jwksCache`): each fetch puts a new `jwks` object here. */
  readonly keyCache: { uat?: number; jwks?: unknown };
}

/** A token verified a moment ago (see OidcVerifier.#verified). */
interface VerifiedToken {
  readonly principal: Principal;
  /** The token's `exp`, in ms: never served at or past it (no clock skew on a cached answer). */
  readonly expiresAt: number;
  readonly verifiedAt: number;
  readonly issuer: IssuerState;
  /** The issuer's key set before the signature was checked: a reload since drops the entry. */
  readonly keys: unknown;
}

/** A principal's copy: what one caller does with it cannot reach the next request. */
function copied(principal: Principal): Principal {
  return { ...principal, groups: [...principal.groups], attributes: { ...principal.attributes } };
}

/** How long a verified token is reused before its signature is checked again. */
const VERIFIED_REUSE_MS = 60_000;
const VERIFIED_MAX = 10_000;

/**
 * Verifies JWTs from configured OIDC issuers: discovery document, then the JWKS (cached,
 * refetched when a token names a key id it has not seen, so issuer key rotation is picked
 * up). Each way a token can be wrong has its own code; messages name claims, never values.
 */
export class OidcVerifier {
  readonly #issuers = new Map<string, IssuerState>();
  readonly #now: () => number;
  /**
   * Tokens verified in the last minute, by SHA-256 of the token (the text is not kept): a
   * client presents the same bearer token on every request, and checking its signature
   * costs 125-180 µs of CPU (RS256, ES256, EdDSA here). An entry is served only before the
   * token's `exp` (a cached answer gets no clock skew), for at most VERIFIED_REUSE_MS, and
   * only while the issuer's key set is the one it was checked against.
   */
  readonly #verified = new Map<string, VerifiedToken>();
  /** Tokens accepted with their signature checked, and answers served from the cache (`coatcheck_oidc_tokens_total`). */
  readonly counts = { verified: 0, reused: 0 };

  constructor(issuers: readonly OidcIssuerConfig[], options: { now?: () => number } = {}) {
    for (const config of issuers)
      this.#issuers.set(config.issuer.replace(/\/$/, ''), {
        config,
        jwks: null,
        discovery: null,
        keyCache: {},
      });
    this.#now = options.now ?? Date.now;
  }

  get configured(): boolean {
    return this.#issuers.size > 0;
  }

  async #keySet(state: IssuerState): Promise<ReturnType<typeof createRemoteJWKSet>> {
    if (state.jwks !== null) return state.jwks;
    state.discovery ??= (async () => {
      const issuer = state.config.issuer.replace(/\/$/, '');
      let document: { issuer?: unknown; jwks_uri?: unknown };
      try {
        const response = await fetch(`${issuer}/.well-known/openid-configuration`, {
          signal: AbortSignal.timeout(5000),
        });
        if (!response.ok) throw new Error(`status ${response.status}`);
        document = (await response.json()) as typeof document;
      } catch (cause) {
        throw fail('CC_ERR_OIDC_UNAVAILABLE', `the discovery document of ${issuer} cannot be fetched`, cause);
      }
      if (typeof document.issuer !== 'string' || document.issuer.replace(/\/$/, '') !== issuer) {
        throw fail('CC_ERR_OIDC_UNAVAILABLE', `the discovery document of ${issuer} names another issuer`);
      }
      if (typeof document.jwks_uri !== 'string')
        throw fail('CC_ERR_OIDC_UNAVAILABLE', `the discovery document of ${issuer} has no jwks_uri`);
      const { createRemoteJWKSet, jwksCache } = await jose();
      const jwks = createRemoteJWKSet(new URL(document.jwks_uri), {
        [jwksCache]: state.keyCache,
        cooldownDuration: state.config.jwksCooldownMs ?? 30_000,
        cacheMaxAge: 10 * 60_000,
        timeoutDuration: 5000,
      });
      state.jwks = jwks;
      return jwks;
    })().catch((error: unknown) => {
      state.discovery = null; // try again on the next token
      throw error;
    });
    return state.discovery;
  }

  async verify(token: string): Promise<Principal> {
    if (!looksLikeJwt(token)) throw fail('CC_ERR_OIDC_MALFORMED', 'the bearer token is not a JWT');
    const digest = createHash('sha256').update(token).digest('base64url');
    const now = this.#now();
    const hit = this.#verified.get(digest);
    if (hit !== undefined) {
      if (
        now < hit.expiresAt &&
        now >= hit.verifiedAt &&
        now - hit.verifiedAt < VERIFIED_REUSE_MS &&
        hit.issuer.keyCache.jwks === hit.keys
      ) {
        this.counts.reused += 1;
        return copied(hit.principal);
      }
      this.#verified.delete(digest);
    }
    const { principal, issuer, keys } = await this.#verifySignature(token, now);
    this.counts.verified += 1;
    if (principal.expiresAt !== null && keys !== undefined) {
      if (this.#verified.size >= VERIFIED_MAX) this.#verified.clear();
      this.#verified.set(digest, {
        principal: copied(principal),
        expiresAt: principal.expiresAt,
        verifiedAt: now,
        issuer,
        keys,
      });
    }
    return principal;
  }

  /** The full check: the token's issuer, its key set, the signature and the claims. */
  async #verifySignature(
    token: string,
    now: number,
  ): Promise<{ principal: Principal; issuer: IssuerState; keys: unknown }> {
    const { decodeJwt, jwtVerify, errors } = await jose();
    let unverified: JWTPayload;
    try {
      unverified = decodeJwt(token);
    } catch (cause) {
      throw fail('CC_ERR_OIDC_MALFORMED', 'the bearer token is not a JWT', cause);
    }
    const issuer = typeof unverified.iss === 'string' ? unverified.iss.replace(/\/$/, '') : '';
    const state = this.#issuers.get(issuer);
    if (state === undefined) throw fail('CC_ERR_OIDC_ISSUER', "the token's issuer is not configured");
    const jwks = await this.#keySet(state);
    // Read before the check: a reload while it runs leaves the entry unfit to serve.
    const keys = state.keyCache.jwks;
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, jwks, {
        issuer: state.config.issuer,
        audience: state.config.audience as string | string[],
        clockTolerance: state.config.clockSkewSeconds ?? 60,
        currentDate: new Date(now),
        algorithms: ALGORITHMS,
        requiredClaims: ['sub', 'exp'],
      }));
    } catch (error) {
      throw this.#translate(error, errors);
    }
    const groupsClaim = state.config.groupsClaim ?? 'groups';
    const rawGroups = payload[groupsClaim];
    const groups = Array.isArray(rawGroups)
      ? rawGroups.filter((g): g is string => typeof g === 'string')
      : typeof rawGroups === 'string'
        ? rawGroups.split(/\s+/).filter(Boolean)
        : [];
    const attributes: Record<string, string | number | boolean> = {};
    for (const [key, value] of Object.entries(payload)) {
      if (key === groupsClaim) continue;
      if (
        (typeof value === 'string' && value.length <= 256) ||
        typeof value === 'number' ||
        typeof value === 'boolean'
      )
        attributes[key] = value;
    }
    const name =
      [payload.email, payload.preferred_username, payload.sub].find(
        (v): v is string => typeof v === 'string',
      ) ?? 'unknown';
    const principal: Principal = {
      kind: 'oidc',
      ref: `oidc:${issuer}#${payload.sub}`,
      name,
      groups: groups.slice(0, 256),
      attributes,
      expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 : null,
    };
    return { principal, issuer: state, keys };
  }

  #translate(error: unknown, joseErrors: Jose['errors']): CoatcheckError {
    if (error instanceof CoatcheckError) return error;
    if (error instanceof joseErrors.JWTExpired)
      return fail('CC_ERR_OIDC_EXPIRED', 'the token has expired', error);
    if (error instanceof joseErrors.JWTClaimValidationFailed) {
      if (error.claim === 'aud')
        return fail('CC_ERR_OIDC_AUDIENCE', 'the token is meant for another audience', error);
      if (error.claim === 'iss')
        return fail('CC_ERR_OIDC_ISSUER', "the token's issuer is not configured", error);
      if (error.claim === 'nbf' || error.claim === 'iat')
        return fail('CC_ERR_OIDC_EXPIRED', 'the token is not valid yet', error);
      return fail('CC_ERR_OIDC_SIGNATURE', `the token's ${error.claim} claim is missing or invalid`, error);
    }
    if (error instanceof joseErrors.JWKSNoMatchingKey)
      return fail(
        'CC_ERR_OIDC_UNKNOWN_KEY',
        'the token is signed with a key the issuer does not publish',
        error,
      );
    if (error instanceof joseErrors.JWKSTimeout || error instanceof joseErrors.JWKSInvalid) {
      return fail('CC_ERR_OIDC_UNAVAILABLE', "the issuer's keys cannot be fetched", error);
    }
    if (error instanceof joseErrors.JWSInvalid || error instanceof joseErrors.JWTInvalid)
      return fail('CC_ERR_OIDC_MALFORMED', 'the bearer token is not a valid JWT', error);
    if (error instanceof joseErrors.JOSEError)
      return fail('CC_ERR_OIDC_SIGNATURE', 'the token signature does not verify', error);
    return fail('CC_ERR_OIDC_UNAVAILABLE', "the issuer's keys cannot be fetched", error);
  }
}
