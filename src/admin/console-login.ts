import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { CoatcheckError } from '../core/errors.js';
import type { Principal } from '../core/principal.js';
import { OidcVerifier } from '../identity/oidc.js';

/**
 * OIDC login for humans at the console: the authorization code flow with PKCE. A human
 * who signs in at the configured issuer, and is in one of `adminGroups`, gets a console
 * session token (random, in memory only, as long as the ID token and at most 8 hours),
 * which the admin API accepts like the admin key — acting as that human, with their
 * groups, so approvals carry a real approver.
 */
export interface ConsoleOidcConfig {
  readonly issuer: string;
  readonly clientId: string;
  readonly clientSecret?: string;
  /** Where the issuer sends the browser back: `<admin URL>/console/oidc/callback`. */
  readonly redirectUrl: string;
  readonly adminGroups: readonly string[];
  readonly groupsClaim?: string;
}

interface Pending {
  readonly verifier: string;
  readonly nonce: string;
  readonly expires: number;
}

const SESSION_MAX_MS = 8 * 3_600_000;
const PENDING_MS = 10 * 60_000;
const MAX_PENDING = 1000;

const b64url = (bytes: Buffer) => bytes.toString('base64url');

export class ConsoleLogin {
  readonly #config: ConsoleOidcConfig;
  readonly #verifier: OidcVerifier;
  readonly #pending = new Map<string, Pending>();
  readonly #sessions = new Map<string, { principal: Principal; expires: number }>();
  #discovery: Promise<{ authorization_endpoint: string; token_endpoint: string }> | null = null;

  constructor(config: ConsoleOidcConfig) {
    this.#config = config;
    this.#verifier = new OidcVerifier([
      {
        issuer: config.issuer,
        audience: config.clientId,
        groupsClaim: config.groupsClaim ?? 'groups',
        clockSkewSeconds: 60,
      },
    ]);
  }

  #endpoints() {
    this.#discovery ??= (async () => {
      const response = await fetch(
        `${this.#config.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`,
        {
          signal: AbortSignal.timeout(5000),
        },
      );
      const document = (await response.json()) as {
        authorization_endpoint?: unknown;
        token_endpoint?: unknown;
      };
      if (
        typeof document.authorization_endpoint !== 'string' ||
        typeof document.token_endpoint !== 'string'
      ) {
        throw new Error('discovery document lacks endpoints');
      }
      return {
        authorization_endpoint: document.authorization_endpoint,
        token_endpoint: document.token_endpoint,
      };
    })().catch((cause: unknown) => {
      this.#discovery = null;
      throw new CoatcheckError('CC_ERR_OIDC_UNAVAILABLE', "the console's OIDC issuer cannot be reached", {
        cause,
      });
    });
    return this.#discovery;
  }

  /** The principal behind a console session token, or null. */
  session(token: string): Principal | null {
    const entry = this.#sessions.get(token);
    if (entry === undefined) return null;
    if (entry.expires <= Date.now()) {
      this.#sessions.delete(token);
      return null;
    }
    return entry.principal;
  }

  /** Handles `/console/oidc/login` and `/console/oidc/callback`; false for any other path. */
  async handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<boolean> {
    if (req.method !== 'GET') return false;
    if (url.pathname === '/console/oidc/login') {
      const { authorization_endpoint } = await this.#endpoints();
      const state = b64url(randomBytes(24));
      const verifier = b64url(randomBytes(32));
      const nonce = b64url(randomBytes(16));
      if (this.#pending.size >= MAX_PENDING) this.#pending.clear();
      this.#pending.set(state, { verifier, nonce, expires: Date.now() + PENDING_MS });
      const target = new URL(authorization_endpoint);
      target.search = new URLSearchParams({
        response_type: 'code',
        client_id: this.#config.clientId,
        redirect_uri: this.#config.redirectUrl,
        scope: 'openid email profile',
        state,
        nonce,
        code_challenge: b64url(createHash('sha256').update(verifier).digest()),
        code_challenge_method: 'S256',
      }).toString();
      res.writeHead(302, { location: target.toString(), 'cache-control': 'no-store' });
      res.end();
      return true;
    }
    if (url.pathname === '/console/oidc/callback') {
      const state = url.searchParams.get('state') ?? '';
      const code = url.searchParams.get('code') ?? '';
      const pending = this.#pending.get(state);
      this.#pending.delete(state);
      if (pending === undefined || pending.expires <= Date.now() || code === '' || code.length > 4096) {
        throw new CoatcheckError(
          'CC_ERR_ADMIN_UNAUTHORIZED',
          'the console login expired or was not started here; start again',
        );
      }
      const { token_endpoint } = await this.#endpoints();
      const body = new URLSearchParams({
        grant_type: 'authorization_code',
        code,
        redirect_uri: this.#config.redirectUrl,
        client_id: this.#config.clientId,
        code_verifier: pending.verifier,
      });
      if (this.#config.clientSecret !== undefined) body.set('client_secret', this.#config.clientSecret);
      let idToken: unknown;
      try {
        const response = await fetch(token_endpoint, {
          method: 'POST',
          headers: { 'content-type': 'application/x-www-form-urlencoded' },
          body,
          signal: AbortSignal.timeout(5000),
        });
        idToken = ((await response.json()) as { id_token?: unknown }).id_token;
      } catch (cause) {
        throw new CoatcheckError(
          'CC_ERR_OIDC_UNAVAILABLE',
          "the console's OIDC issuer did not answer the code exchange",
          { cause },
        );
      }
      if (typeof idToken !== 'string')
        throw new CoatcheckError('CC_ERR_ADMIN_UNAUTHORIZED', 'the issuer returned no ID token');
      const principal = await this.#verifier.verify(idToken);
      if (principal.attributes.nonce !== pending.nonce) {
        throw new CoatcheckError(
          'CC_ERR_ADMIN_UNAUTHORIZED',
          'the ID token does not answer this login (nonce)',
        );
      }
      if (!principal.groups.some((g) => this.#config.adminGroups.includes(g))) {
        throw new CoatcheckError(
          'CC_ERR_ADMIN_UNAUTHORIZED',
          `${principal.name} is not in a console group (${this.#config.adminGroups.join(', ')})`,
        );
      }
      const token = `ccu_${b64url(randomBytes(32))}`;
      const expires = Math.min(
        principal.expiresAt ?? Date.now() + SESSION_MAX_MS,
        Date.now() + SESSION_MAX_MS,
      );
      this.#sessions.set(token, { principal: { ...principal, kind: 'oidc' }, expires });
      // The token travels in the fragment: it never reaches a server log or a Referer.
      res.writeHead(302, { location: `/console/#/login?session=${token}`, 'cache-control': 'no-store' });
      res.end();
      return true;
    }
    return false;
  }
}
