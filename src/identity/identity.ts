import { CoatcheckError } from '../core/errors.js';
import type { Principal } from '../core/principal.js';
import { AGENT_KEY_PREFIX } from '../core/ticket-format.js';
import type { Agents } from './agents.js';
import { looksLikeJwt, type OidcVerifier } from './oidc.js';

/**
 * One entry point for "who is this?": an agent key (`cca_…`) or an OIDC JWT. Front-ends
 * call this wherever a bearer credential arrives (Proxy-Authorization, a PostgreSQL
 * password), and get the same Principal shape either way.
 */
export class Identity {
  readonly #agents: Agents;
  readonly #oidc: OidcVerifier;

  constructor(agents: Agents, oidc: OidcVerifier) {
    this.#agents = agents;
    this.#oidc = oidc;
  }

  async authenticate(credential: string): Promise<Principal> {
    if (credential.startsWith(AGENT_KEY_PREFIX)) return this.#agents.authenticate(credential);
    if (looksLikeJwt(credential)) {
      if (!this.#oidc.configured)
        throw new CoatcheckError('CC_ERR_OIDC_ISSUER', 'no OIDC issuer is configured');
      return this.#oidc.verify(credential);
    }
    throw new CoatcheckError(
      'CC_ERR_AGENT_KEY_MALFORMED',
      'the credential is neither an agent key nor a JWT',
    );
  }
}
