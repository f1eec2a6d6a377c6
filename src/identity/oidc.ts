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
}

/**
 * Verifies JWTs from configured OIDC issuers: discovery document, then the JWKS (cached,
 * refetched when a token names a key id it has not seen, so issuer key rotation is picked
 * up). Each way a token can be wrong has its own code; messages name claims, never values.
 */
export class OidcVerifier {
  readonly #issuers = new Map<string, IssuerState>();

  constructor(issuers: readonly OidcIssuerConfig[]) {
    for (const config of issuers)
      this.#issuers.set(config.issuer.replace(/\/$/, ''), { config, jwks: null, discovery: null });
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
      const { createRemoteJWKSet } = await jose();
      const jwks = createRemoteJWKSet(new URL(document.jwks_uri), {
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
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, jwks, {
        issuer: state.config.issuer,
        audience: state.config.audience as string | string[],
        clockTolerance: state.config.clockSkewSeconds ?? 60,
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
    return {
      kind: 'oidc',
      ref: `oidc:${issuer}#${payload.sub}`,
      name,
      groups: groups.slice(0, 256),
      attributes,
      expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 : null,
    };
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
