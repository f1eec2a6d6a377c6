import { existsSync, unlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { basename, isAbsolute, join, resolve } from 'node:path';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { Approvals } from '../approvals/approvals.js';
import type { GateServices } from '../approvals/gate.js';
import { createPreviewScrubber } from '../approvals/preview.js';
import { createWebhookNotifier } from '../approvals/webhook.js';
import { AuditLog } from '../audit/audit-log.js';
import { DEFAULT_CONFIG_YAML } from '../config/defaults.js';
import {
  adminKeyHash,
  ensureHomeDir,
  envAdminKey,
  envMasterKey,
  existingKeyFiles,
  type Home,
  keysDirOf,
  loadMasterKeys,
  masterKeyFromEnv,
  newAdminKey,
  writeFileDurably,
  writeFileExclusive,
} from '../config/home.js';
import { loadConfigFile, parseConfig } from '../config/load-config.js';
import type { Config } from '../config/schema.js';
import { Connections } from '../connections/connections.js';
import { type Clock, systemClock } from '../core/clock.js';
import { parseDuration } from '../core/duration.js';
import { CoatcheckError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { createUpstreamDialer, type UpstreamDialer } from '../gateway/upstream-dial.js';
import { Agents } from '../identity/agents.js';
import { Identity } from '../identity/identity.js';
import { OidcVerifier } from '../identity/oidc.js';
import { PolicyHolder } from '../policy/policy-holder.js';
import { RelayHub } from '../relay/hub.js';
import { Relays } from '../relay/relays.js';
import { openStore } from '../store/open-store.js';
import type { Store } from '../store/types.js';
import { MasterKey } from '../vault/envelope.js';
import { initializeKeyring, isInitialized, type Keyring, MasterKeys, openKeyring } from '../vault/keyring.js';
import { Vault } from '../vault/vault.js';
import { Workflows } from '../workflows/workflows.js';

/**
 * The composition root's shared services. Every front-end and the admin API receive
 * this one object; nothing is constructed twice.
 */
export interface Context {
  readonly home: Home;
  readonly config: Config;
  readonly clock: Clock;
  readonly store: Store;
  readonly keys: Keyring;
  readonly audit: AuditLog;
  readonly vault: Vault;
  readonly agents: Agents;
  readonly connections: Connections;
  /** Relay identities and keys (docs/relay.md). */
  readonly relays: Relays;
  /** This process's live relay sessions (made on first use: only `serve` needs it). */
  readonly relayHub: RelayHub;
  /** Opens upstream byte streams for the front-ends: directly, or through a connection's relay. */
  readonly upstream: UpstreamDialer;
  /** Agent keys, subtask keys and OIDC JWTs: who is asking. */
  readonly identity: Identity;
  /** Workflow runs and their subtasks (a tree of principals with narrowed tickets). */
  readonly workflows: Workflows;
  /** Where this process's front-ends listen (set by `serve`), for the environments handed to subtasks. */
  readonly endpoints: { http?: string | null; proxy?: string | null; kubernetes?: string | null };
  /** The policy set in force (reloadable). */
  readonly policy: PolicyHolder;
  /** Just-in-time approvals of exact operations. */
  readonly approvals: Approvals;
  /** What a front-end needs for the policy step: policy, approvals, audit, hold time. */
  readonly gate: GateServices;
  /** Whether this replica can serve: the store answers, the audit log is writable, the policy set is loaded. */
  health(): Promise<HealthReport>;
  /** The gateway logger (pino JSON on stderr, every line scrubbed). */
  readonly log: Logger;
  /** Where the first master key came from (COATCHECK_MASTER_KEY or master.key); rotated keys are files. */
  readonly masterKeySource: 'env' | 'file';
  /** The directory rotation writes new master key files to (and every replica reads). */
  readonly keysDir: string;
  /** Prometheus registry shared by the front-ends; the admin listener serves it at GET /metrics. */
  readonly metrics: Registry;
  close(): Promise<void>;
}

export const ADMIN_KEY_META = 'admin_key_hash';

/** The SQLite store file of a home (store.path, relative to the home unless absolute). */
export function sqlitePath(home: Home, config: Config): string {
  return isAbsolute(config.store.path) ? config.store.path : join(home.dir, config.store.path);
}

async function openConfiguredStore(home: Home, config: Config, create: boolean): Promise<Store> {
  if (!create && config.store.driver === 'sqlite' && !existsSync(sqlitePath(home, config))) {
    throw new CoatcheckError(
      'CC_ERR_STORE_MISSING',
      `the store ${sqlitePath(home, config)} does not exist; restore it (a new empty store is never created in its place)`,
      { details: { path: sqlitePath(home, config) } },
    );
  }
  const store = await openStore(
    config.store.driver === 'postgres'
      ? { driver: 'postgres', url: config.store.url! }
      : { driver: 'sqlite', path: sqlitePath(home, config) },
  );
  try {
    await store.migrate();
  } catch (error) {
    await store.close().catch(() => undefined);
    throw error;
  }
  return store;
}

export interface HealthReport {
  readonly ok: boolean;
  readonly checks: {
    readonly store: 'ok' | 'unavailable' | 'timeout';
    readonly audit: 'ok' | 'failing';
    /** The policy set in force was loaded and validated (serve loads it before any listener opens). */
    readonly policy: 'ok' | 'not-loaded';
  };
}

/** A failed audit write this recent makes the replica unhealthy (until a write succeeds). */
const AUDIT_FAILURE_WINDOW_MS = 30_000;
const STORE_PROBE_TIMEOUT_MS = 2_000;

async function checkHealth(
  store: Store,
  audit: AuditLog,
  policy: PolicyHolder,
  clock: Clock,
): Promise<HealthReport> {
  let timer: NodeJS.Timeout | undefined;
  const storeState = await Promise.race([
    store.getMeta(ADMIN_KEY_META).then(
      (v) => (v === null ? ('unavailable' as const) : ('ok' as const)),
      () => 'unavailable' as const,
    ),
    new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), STORE_PROBE_TIMEOUT_MS);
    }),
  ]).finally(() => clearTimeout(timer));
  const failure = audit.lastFailure;
  const auditState =
    failure !== null && clock.now() - failure.at < AUDIT_FAILURE_WINDOW_MS ? 'failing' : 'ok';
  const policyState = policy.loaded ? 'ok' : 'not-loaded';
  return {
    ok: storeState === 'ok' && auditState === 'ok' && policyState === 'ok',
    checks: { store: storeState, audit: auditState, policy: policyState },
  };
}

function buildContext(
  home: Home,
  config: Config,
  clock: Clock,
  store: Store,
  keys: Keyring,
  masterKeySource: 'env' | 'file',
): Context {
  const audit = new AuditLog(store, keys.index.audit, clock, config.audit);
  const vault = new Vault(store, keys, audit, clock, {
    defaultTicketTtlMs: parseDuration(config.tickets.defaultTtl),
    maxTicketTtlMs: parseDuration(config.tickets.maxTtl),
    cacheMs: config.tickets.cacheMs,
    foundTicketTtlMs: parseDuration(config.tickets.foundTtl),
    foundSecretLimit: {
      max: config.foundSecrets.maxPerPrincipal,
      windowMs: parseDuration(config.foundSecrets.window),
    },
  });
  const agents = new Agents(store, audit, clock, keys.index.lookup, {
    maxTtlMs: parseDuration(config.agents.maxTtl),
  });
  const connections = new Connections(store, audit, clock, config.connections);
  const relays = new Relays(store, audit, clock, keys.index.lookup);
  let relayHub: RelayHub | null = null;
  const hub = (): RelayHub => {
    relayHub ??= new RelayHub(store, relays, audit, log, {
      maxStreamsPerSession: config.relay.maxStreamsPerSession,
      openTimeoutMs: config.relay.openTimeoutMs,
    });
    return relayHub;
  };
  const upstream = createUpstreamDialer({ open: (...args) => hub().open(...args) });
  const oidc = new OidcVerifier(
    config.identity.oidc.map((issuer) => ({
      issuer: issuer.issuer,
      audience: issuer.audience,
      groupsClaim: issuer.groupsClaim,
      clockSkewSeconds: parseDuration(issuer.clockSkew) / 1000,
    })),
  );
  const listen = config.listen as { http?: string | null; proxy?: string | null };
  const endpoints: { http?: string | null; proxy?: string | null; kubernetes?: string | null } = {};
  const workflows = new Workflows(store, audit, vault, clock, keys.index.lookup, {
    defaultTtlMs: parseDuration(config.tickets.defaultTtl),
    maxTtlMs: parseDuration(config.tickets.maxTtl),
    endpoints: () => ({
      http: endpoints.http ?? (listen.http ? `http://${listen.http}` : null),
      proxy: endpoints.proxy ?? (listen.proxy ? `http://${listen.proxy}` : null),
    }),
  });
  const identity = new Identity(agents, oidc, workflows);
  // Every log line passes the detector: known vault secrets (any encoding) and secret
  // formats are masked before the line is written. The known secrets come from the
  // process's one index (ADR 0021), updated secret by secret as the vault changes. The
  // detector and the index load with the first line logged (a CLI command that logs
  // nothing does not pay for them, nor reveal every secret to fill the index); lines wait.
  const log = createLogger({
    level: config.log.level,
    loadScrub: async () => {
      const [{ createDetector }, { createLogScrubber }, index] = await Promise.all([
        import('../detect/detector.js'),
        import('../detect/scrub.js'),
        import('../gateway/known-secret-index.js'),
      ]);
      const known = index.sharedKnownSecretIndex(vault, store);
      // The vault's secrets are in the index before the first line is written.
      await known.settled().catch(() => undefined);
      // While the index is stale (a change it could not apply), lines are scrubbed conservatively.
      return createLogScrubber({
        detector: createDetector({ knownSecrets: known.secretMatcher() }),
        stale: () => known.stale,
      });
    },
  });
  audit.onFailure = (cause) =>
    log.error(
      {
        code: 'CC_ERR_AUDIT_UNAVAILABLE',
        errName: (cause as Error)?.name,
        errCode: (cause as { code?: unknown })?.code,
      },
      'audit write failed: the operations waiting on it were refused',
    );
  audit.onCheckpointFailure = (cause) =>
    log.warn(
      {
        code: 'CC_ERR_AUDIT_UNAVAILABLE',
        errName: (cause as Error)?.name,
        errCode: (cause as { code?: unknown })?.code,
        failures: audit.checkpointFailures,
      },
      "audit checkpoint failed: this replica chain's latest records are not yet named on the main chain (retried)",
    );
  workflows.onRollbackFailure = (node, cause) =>
    log.error(
      {
        workflow: node,
        code: (cause as { code?: unknown })?.code ?? 'CC_ERR_INTERNAL',
        errName: (cause as Error)?.name,
      },
      'workflow rollback failed: a partly started node stays active until revoked',
    );
  const { webhookUrl, consoleUrl } = config.approvals;
  const approvals = new Approvals(store, audit, clock, {
    pendingTtlMs: parseDuration(config.approvals.pendingTtl),
    useWindowMs: parseDuration(config.approvals.useWindow),
    notify: webhookUrl === null ? undefined : createWebhookNotifier({ url: webhookUrl, consoleUrl, log }),
    // Approvers read the held operation cleaned: tickets by id, vault secrets and detector findings masked.
    scrubPreview: createPreviewScrubber(vault, async () => {
      // The shared index (ADR 0021), loaded with the first preview (CLI commands never build one).
      const { currentKnownSecrets, sharedKnownSecretIndex } = await import(
        '../gateway/known-secret-index.js'
      );
      return currentKnownSecrets(sharedKnownSecretIndex(vault, store));
    }),
  });
  const policy = new PolicyHolder(config.policy.path, {
    timeZone: config.policy.timeZone,
    baseDir: home.dir,
  });
  // Any revocation or change may alter a cached decision's inputs.
  const unsubscribe = store.subscribe((change) => {
    policy.invalidate();
    if (change.type === 'keys.rotated' || change.type === 'resync') {
      // A rotation elsewhere may have added a key: pick it up without restart. A key
      // still missing is reloaded again when first needed, then refused by kid.
      try {
        keys.masters.reload();
      } catch (error) {
        log.error(
          { code: (error as { code?: unknown })?.code ?? 'CC_ERR_MASTER_KEY_INVALID' },
          'reloading the master keys failed; the keys already loaded stay in use',
        );
      }
    }
  });
  let registry: Registry | null = null;
  const gate: GateServices = {
    policy,
    approvals,
    audit,
    holdTimeoutMs: parseDuration(config.approvals.holdTimeout),
    detailKey: keys.index.lookup,
  };
  return {
    home,
    config,
    clock,
    store,
    keys,
    audit,
    vault,
    agents,
    connections,
    relays,
    get relayHub(): RelayHub {
      return hub();
    },
    upstream,
    identity,
    workflows,
    endpoints,
    policy,
    approvals,
    gate,
    log,
    masterKeySource,
    keysDir: keysDirOf(home, config.keys.dir),
    // Made on first use (front-ends, the admin listener): the CLI never loads prom-client.
    get metrics(): Registry {
      if (registry === null) {
        const prom = createRequire(import.meta.url)('prom-client') as typeof import('prom-client');
        registry = new prom.Registry();
        new prom.Counter({
          name: 'coatcheck_audit_checkpoint_failures_total',
          help: 'Audit checkpoints (a replica chain named on the main chain) that could not be written.',
          registers: [registry],
          collect() {
            this.reset();
            this.inc(audit.checkpointFailures);
          },
        });
        new prom.Counter({
          name: 'coatcheck_audit_batches_total',
          help: 'Audit batches committed (one store transaction each; operations / batches is the group-commit size).',
          registers: [registry],
          collect() {
            this.reset();
            this.inc(audit.batchesCommitted);
          },
        });
        new prom.Counter({
          name: 'coatcheck_audit_operations_total',
          help: 'Audited operations committed in those batches.',
          registers: [registry],
          collect() {
            this.reset();
            this.inc(audit.operationsCommitted);
          },
        });
        new prom.Counter({
          name: 'coatcheck_oidc_tokens_total',
          help: 'OIDC bearer tokens accepted: signature checked (verified), or a checked token presented again within its reuse window (reused).',
          labelNames: ['outcome'],
          registers: [registry],
          collect() {
            this.reset();
            this.inc({ outcome: 'verified' }, oidc.counts.verified);
            this.inc({ outcome: 'reused' }, oidc.counts.reused);
          },
        });
        new prom.Counter({
          name: 'coatcheck_workflow_rollback_failures_total',
          help: 'Partly started workflow nodes whose rollback (revocation) failed; each stays active until revoked.',
          registers: [registry],
          collect() {
            this.reset();
            this.inc(workflows.rollbackFailures);
          },
        });
      }
      return registry;
    },
    health: () => checkHealth(store, audit, policy, clock),
    async close() {
      unsubscribe();
      await relayHub?.close();
      policy.close();
      // Closes what was built over the vault too (the shared known-secret index).
      vault.close();
      connections.close();
      await audit.close().catch(() => undefined);
      await store.close();
    },
  };
}

/** Open an initialized home: config, store, master key, services. */
export async function openContext(
  home: Home,
  options: {
    clock?: Clock;
    env?: NodeJS.ProcessEnv;
    policyPath?: string;
  } = {},
): Promise<Context> {
  const env = options.env ?? process.env;
  if (!existsSync(home.configFile)) {
    throw new CoatcheckError(
      'CC_ERR_HOME_MISSING',
      `no coatcheck home at ${home.dir} (run \`coatcheck init\`)`,
      { details: { dir: home.dir } },
    );
  }
  const config = await loadConfigFile(home.configFile, env);
  if (options.policyPath !== undefined)
    config.policy = { ...config.policy, path: resolve(options.policyPath) };
  const keysDir = keysDirOf(home, config.keys.dir);
  const masters = new MasterKeys(() => loadMasterKeys(home, env, keysDir));
  const store = await openConfiguredStore(home, config, false);
  try {
    const keys = await openKeyring(store, masters);
    return buildContext(
      home,
      config,
      options.clock ?? systemClock,
      store,
      keys,
      masterKeyFromEnv(env) ? 'env' : 'file',
    );
  } catch (error) {
    await store.close().catch(() => undefined);
    throw error;
  }
}

/**
 * Whether a home with its config from COATCHECK_CONFIG still needs `init`: its store is
 * not initialized yet (a SQLite file that does not exist, or a database without the
 * keyring). `serve --init` asks this on every start of a container.
 */
export async function storeInitialized(home: Home, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  const config = await loadConfigFile(home.configFile, env);
  if (config.store.driver === 'sqlite' && !existsSync(sqlitePath(home, config))) return false;
  const store = await openConfiguredStore(home, config, false);
  try {
    return await isInitialized(store);
  } finally {
    await store.close();
  }
}

/**
 * Wait until another process's init of this store is complete (its admin key is set, the
 * last thing init writes before its audit record): replicas started together on one store
 * with `serve --init` — the ones that lost the race must not serve a half-made store.
 */
export async function waitForStoreInit(home: Home, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<void> {
  const config = await loadConfigFile(home.configFile, env);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let lastError: unknown = null;
    try {
      const store = await openConfiguredStore(home, config, false);
      try {
        if ((await isInitialized(store)) && (await store.getMeta(ADMIN_KEY_META)) !== null) return;
      } finally {
        await store.close();
      }
    } catch (error) {
      // Tables not made yet by the initializing process (its migrations run first): not ready.
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new CoatcheckError(
        'CC_ERR_HOME_EXISTS',
        `the store ${config.store.driver} is being initialized by another process, which did not finish in ${Math.round(timeoutMs / 1000)} s`,
        { details: { dir: home.dir, reason: 'init-unfinished' }, cause: lastError ?? undefined },
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

export interface InitResult {
  readonly home: Home;
  readonly adminKey: string;
  readonly masterKeySource: 'env' | 'file';
  /** COATCHECK_ADMIN_KEY (no file written) or the generated admin.key. */
  readonly adminKeySource: 'env' | 'file';
  readonly store: string;
}

/** Create a home: config file, master key (unless from env), admin key, initialized store. */
export async function initHome(
  home: Home,
  options: { env?: NodeJS.ProcessEnv; clock?: Clock } = {},
): Promise<InitResult> {
  const env = options.env ?? process.env;
  // Check everything before writing anything: a home with data but no config file must
  // never get a new master key (the old one is the only way into its vault).
  if (!home.configExternal && existsSync(home.configFile)) {
    throw new CoatcheckError('CC_ERR_HOME_EXISTS', `a coatcheck home already exists at ${home.dir}`, {
      details: { dir: home.dir },
    });
  }
  const keyFiles = existingKeyFiles(home);
  if (keyFiles.length > 0) {
    throw new CoatcheckError(
      'CC_ERR_HOME_EXISTS',
      `${home.dir} has key material (${keyFiles.map((f) => basename(f)).join(', ')}) but no ${basename(home.configFile)}: restore the config file instead of running init`,
      { details: { dir: home.dir } },
    );
  }
  const envMaster = envMasterKey(env);
  const fromEnv = envMaster !== null;
  const master = envMaster ?? MasterKey.generate();
  const envAdmin = envAdminKey(env);
  // The config file is written last: it is what marks a home as complete. A config from
  // COATCHECK_CONFIG is read, never written; the initialized store marks completion then.
  const config = home.configExternal
    ? await loadConfigFile(home.configFile, env)
    : await parseConfig(DEFAULT_CONFIG_YAML, home.configFile, env);
  ensureHomeDir(home);
  const store = await openConfiguredStore(home, config, true);
  try {
    if (await isInitialized(store)) {
      throw new CoatcheckError(
        'CC_ERR_HOME_EXISTS',
        `the store ${store.location} is already initialized: restore ${basename(home.configFile)} and the master key instead of running init`,
        { details: { dir: home.dir, reason: 'store-initialized' } },
      );
    }
    if (!fromEnv && !writeFileExclusive(home.masterKeyFile, `${master.toBase64()}\n`, 0o600)) {
      throw new CoatcheckError('CC_ERR_HOME_EXISTS', `${home.masterKeyFile} appeared while init ran`, {
        details: { dir: home.dir },
      });
    }
    let keys: Keyring;
    try {
      const masters = new MasterKeys(() => loadMasterKeys(home, env, keysDirOf(home, config.keys.dir)));
      keys = await initializeKeyring(store, masters, master);
    } catch (error) {
      // The store was not sealed under the key just written (another init won the race,
      // or the store failed): that key protects nothing, remove it so init can be rerun.
      if (!fromEnv) unlinkSync(home.masterKeyFile);
      throw error;
    }
    // The forward proxy's CA: its key sealed under the master key, never on disk in clear.
    // (Loaded here, not at the top: only init makes them, and ssh2 is costly to load.)
    const [{ ensureProxyCa }, { ensureSshHostKey }] = await Promise.all([
      import('../vault/proxy-ca.js'),
      import('../vault/ssh-host-key.js'),
    ]);
    await ensureProxyCa(store, keys.masters);
    // The SSH front-end's host key, sealed the same way.
    await ensureSshHostKey(store, keys.masters);
    const adminKey = envAdmin ?? newAdminKey();
    await store.setMeta(ADMIN_KEY_META, adminKeyHash(keys.index.lookup, adminKey));
    if (envAdmin === null && !writeFileExclusive(home.adminKeyFile, `${adminKey}\n`, 0o600)) {
      throw new CoatcheckError('CC_ERR_HOME_EXISTS', `${home.adminKeyFile} appeared while init ran`, {
        details: { dir: home.dir },
      });
    }
    const context = buildContext(
      home,
      config,
      options.clock ?? systemClock,
      store,
      keys,
      fromEnv ? 'env' : 'file',
    );
    await context.audit.append({
      type: 'home.init',
      actor: 'admin:cli',
      data: { store: store.driver, masterKey: master.kid, masterKeySource: fromEnv ? 'env' : 'file' },
    });
    await context.audit.close();
    context.vault.close();
    if (!home.configExternal) writeFileDurably(home.configFile, DEFAULT_CONFIG_YAML, 0o600);
    return {
      home,
      adminKey,
      masterKeySource: fromEnv ? 'env' : 'file',
      adminKeySource: envAdmin === null ? 'file' : 'env',
      store: store.location,
    };
  } finally {
    await store.close();
  }
}
