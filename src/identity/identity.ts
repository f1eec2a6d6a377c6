import { CoatcheckError } from '../core/errors.js';
import type { Principal } from '../core/principal.js';
import { AGENT_KEY_PREFIX, SUBTASK_KEY_PREFIX } from '../core/ticket-format.js';
import type { Agents } from './agents.js';
import { looksLikeJwt, type OidcVerifier } from './oidc.js';

/** Subtask keys (`ccs_…`) of workflow nodes: src/workflows/workflows.ts. */
export interface SubtaskAuthenticator {
  authenticate(key: string): Promise<Principal>;
}

/**
 * One entry point for "who is this?": an agent key (`cca_…`) or an OIDC JWT. Front-ends
 * call this wherever a bearer credential arrives (Proxy-Authorization, a PostgreSQL
 * password), and get the same Principal shape either way.
 */
export class Identity {
  readonly #agents: Agents;
  readonly #oidc: OidcVerifier;
  readonly #subtasks: SubtaskAuthenticator | null;

  constructor(agents: Agents, oidc: OidcVerifier, subtasks: SubtaskAuthenticator | null = null) {
    this.#agents = agents;
    this.#oidc = oidc;
    this.#subtasks = subtasks;
  }

  async authenticate(credential: string): Promise<Principal> {
    if (credential.startsWith(AGENT_KEY_PREFIX)) return this.#agents.authenticate(credential);
    if (credential.startsWith(SUBTASK_KEY_PREFIX) && this.#subtasks !== null)
      return this.#subtasks.authenticate(credential);
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
