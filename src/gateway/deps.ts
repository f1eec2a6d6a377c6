import type { Registry } from 'prom-client';
import type { GateServices } from '../approvals/gate.js';
import type { AuditLog } from '../audit/audit-log.js';
import type { Config } from '../config/schema.js';
import type { Connections } from '../connections/connections.js';
import type { Clock } from '../core/clock.js';
import type { Store } from '../store/types.js';
import type { MasterKeys } from '../vault/keyring.js';
import type { Vault } from '../vault/vault.js';
import type { Authenticator } from './pipeline.js';
import type { UpstreamDialer } from './upstream-dial.js';

/**
 * What a front-end may use: the shared services of the data path, its own part of the
 * configuration, and the one metrics registry. Not the server Context: no admin key, no
 * agent or workflow management, no health, no close. The composition root builds it
 * (src/server/gateway-deps.ts); a Context also fits the type, which tests rely on.
 */
export interface FrontendDeps {
  /** The home directory (the PostgreSQL listener keeps its generated certificate there). */
  readonly home: { readonly dir: string };
  readonly config: Pick<Config, 'http' | 'postgres' | 'proxy'>;
  readonly clock: Clock;
  readonly store: Store;
  readonly vault: Vault;
  /** Agent keys, subtask keys and OIDC JWTs: who is asking. */
  readonly identity: Authenticator;
  readonly connections: Connections;
  readonly audit: AuditLog;
  /** Policy, approvals and the hold time: the policy step. */
  readonly gate: GateServices;
  /** The master keys (the forward proxy's CA key is sealed under them). */
  readonly keys: { readonly masters: MasterKeys };
  /** The registry the admin listener serves at /metrics. */
  readonly metrics: Registry;
  /** Opens upstream byte streams: directly, or through the connection's relay (docs/relay.md). */
  readonly upstream: UpstreamDialer;
}
