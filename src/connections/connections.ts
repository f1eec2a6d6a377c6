import type { AuditLog } from '../audit/audit-log.js';
import { CONNECTION_TYPES } from '../config/defaults.js';
import type { ConnectionConfig } from '../config/schema.js';
import type { Clock } from '../core/clock.js';
import { CoatcheckError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { CacheEpoch } from '../store/cache-epoch.js';
import type { ConnectionRecord, Store } from '../store/types.js';
import { isConnectionName, matchesTarget, parseDestination, type Target } from '../vault/destinations.js';

export type ConnectionType = (typeof CONNECTION_TYPES)[number];

export interface ConnectionView {
  readonly name: string;
  readonly type: string;
  readonly url: string;
  readonly credential: string | null;
  readonly injectHeaders: Readonly<Record<string, string>>;
  /** Statement rules for the PostgreSQL front-end (readOnly, blockDdl, rowLimit, maskColumns, ...). */
  readonly rules: Readonly<Record<string, unknown>>;
  /** The relay its upstream sockets go through (docs/relay.md); null: the gateway dials the upstream itself. */
  readonly via: string | null;
  /** Where it is declared: the config file, or the store (`connection add`). */
  readonly source: 'config' | 'store';
}

const SECRET_REF_RE = /\{\{\s*secret:([A-Za-z0-9][A-Za-z0-9_.-]{0,127})\s*\}\}/g;
const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$/;
const SCHEMES: Record<ConnectionType, readonly string[]> = {
  http: ['http:', 'https:'],
  postgres: ['postgres:', 'postgresql:'],
  mysql: ['mysql:'],
  ssh: ['ssh:'],
  mcp: ['http:', 'https:', 'stdio:'],
  llm: ['http:', 'https:'],
  kubernetes: ['https:', 'http:'],
};
/** Connection types a front-end serves today (the others are reserved names). */
const SERVED_TYPES: ReadonlySet<ConnectionType> = new Set<ConnectionType>([
  'http',
  'postgres',
  'mcp',
  'llm',
  'kubernetes',
  'ssh',
]);
/** Connection types whose front-end dials its upstream through `via` (src/gateway/upstream-dial.ts). */
const RELAYED_TYPES: ReadonlySet<ConnectionType> = new Set<ConnectionType>([
  'http',
  'postgres',
  'llm',
  'mcp',
  'kubernetes',
  'ssh',
]);
/** Headers the gateway owns; a connection may not set them. */
const RESERVED_HEADERS = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'proxy-authorization',
  'upgrade',
]);

function invalid(field: string, message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_INVALID_ARGUMENT', `${field}: ${message}`, { details: { field } });
}

/** Default ports of the URL schemes connections use (others name no port). */
const DEFAULT_PORTS: Readonly<Record<string, number>> = {
  'https:': 443,
  'http:': 80,
  'postgres:': 5432,
  'postgresql:': 5432,
  'ssh:': 22,
};

/**
 * Where a connection sends: the target every release to it is checked against (the
 * pipeline's exchanges and the connection's own credential alike).
 */
export function connectionTarget(connection: { name: string; url: string }): Target {
  let url: URL;
  try {
    url = new URL(connection.url);
  } catch {
    return { connection: connection.name };
  }
  const scheme = url.protocol === 'https:' ? 'https' : url.protocol === 'http:' ? 'http' : undefined;
  const port = url.port !== '' ? Number(url.port) : DEFAULT_PORTS[url.protocol];
  return { connection: connection.name, scheme, host: url.hostname.replace(/^\[|\]$/g, ''), port };
}

/** The secret names a header template refers to (`{{secret:NAME}}`). */
export function secretRefs(template: string): string[] {
  return [...template.matchAll(SECRET_REF_RE)].map((m) => m[1]!);
}

/** Check a connection's shape; returns the secret names it depends on. */
export function validateConnection(input: ConnectionConfig): string[] {
  if (!isConnectionName(input.name))
    throw invalid('name', 'must be letters, digits, _ or -, at most 63, and contain no dot');
  if (!(CONNECTION_TYPES as readonly string[]).includes(input.type)) {
    throw invalid('--type', `must be one of ${CONNECTION_TYPES.join(', ')}`);
  }
  if (!SERVED_TYPES.has(input.type as ConnectionType)) {
    // A connection nothing serves would look configured and never work.
    throw invalid(
      '--type',
      `no front-end serves ${input.type} connections yet (served: ${[...SERVED_TYPES].join(', ')})`,
    );
  }
  let url: URL;
  try {
    url = new URL(input.url);
  } catch {
    throw invalid('--url', 'is not a URL');
  }
  if (!SCHEMES[input.type as ConnectionType].includes(url.protocol)) {
    throw invalid(
      '--url',
      `a ${input.type} connection needs a ${SCHEMES[input.type as ConnectionType].join(' or ')} URL`,
    );
  }
  // A database or SSH URL names the user the gateway logs in as (postgres://USER@HOST/DB,
  // ssh://USER@HOST:PORT); never a password.
  const userAllowed = input.type === 'postgres' || input.type === 'mysql' || input.type === 'ssh';
  if (url.password !== '' || (url.username !== '' && !userAllowed)) {
    // A literal credential in a URL would be stored and shown in clear: it belongs in the vault.
    throw invalid(
      '--url',
      'must not contain a user or password; store it with `secret add` and pass --credential',
    );
  }
  // `recording` applies to every type; the others are each type's own.
  const ruleNames = Object.keys(input.rules ?? {}).filter((key) => key !== 'recording');
  if (input.type === 'kubernetes') {
    if (ruleNames.some((r) => r !== 'ca'))
      throw invalid('rules', 'a kubernetes connection takes only --ca (statement rules are for postgres)');
    if (Object.keys(input.injectHeaders ?? {}).length > 0)
      throw invalid(
        '--inject-header',
        'a kubernetes connection sends the credential of the ticket it is used with; it injects no headers',
      );
  } else if (input.rules?.ca !== undefined) {
    throw invalid('--ca', 'applies to kubernetes connections only');
  }
  if (input.type === 'ssh') {
    if (ruleNames.some((r) => r !== 'hostKey'))
      throw invalid('rules', 'an ssh connection takes only --host-key');
    if (input.rules?.hostKey === undefined) {
      throw invalid(
        '--host-key',
        "an ssh connection needs the upstream's host key pinned (a line of `ssh-keyscan -t ed25519 HOST`, or its SHA256: fingerprint), or --host-key tofu to trust the key presented at the first connection",
      );
    }
    if (url.username === '')
      throw invalid('--url', 'an ssh connection names the upstream user: ssh://USER@HOST:PORT');
    if (url.pathname !== '' && url.pathname !== '/') throw invalid('--url', 'an ssh URL has no path');
  } else if (ruleNames.length > 0 && input.type !== 'postgres' && input.type !== 'kubernetes') {
    throw invalid(
      'rules',
      'statement rules (--read-only, --block-ddl, --mask-column, ...) apply to postgres connections only',
    );
  }
  if (input.via !== undefined) {
    if (!RELAYED_TYPES.has(input.type as ConnectionType))
      throw invalid(
        '--via',
        `${input.type} connections do not go through a relay yet (relayed: ${[...RELAYED_TYPES].join(', ')})`,
      );
    if (url.protocol === 'stdio:')
      throw invalid('--via', 'a stdio MCP server runs beside the gateway; it has no upstream to relay');
  }
  const refs: string[] = [];
  if (input.credential !== undefined) refs.push(input.credential);
  for (const [name, template] of Object.entries(input.injectHeaders ?? {})) {
    if (!HEADER_NAME_RE.test(name) || RESERVED_HEADERS.has(name.toLowerCase())) {
      throw invalid('--inject-header', `${name.slice(0, 64)} is not a header the gateway can inject`);
    }
    if (/[\r\n\0]/.test(template))
      throw invalid('--inject-header', `the value of ${name} contains a line break`);
    const found = secretRefs(template);
    if (found.length === 0) {
      throw invalid(
        '--inject-header',
        `the value of ${name} names no secret; use {{secret:NAME}} (literal credentials are not stored)`,
      );
    }
    refs.push(...found);
  }
  return [...new Set(refs)];
}

/** Most stored connections kept in the lookup cache (a bound, not a working-set guess). */
const CACHED_CONNECTIONS = 1024;

export class Connections {
  readonly #store: Store;
  readonly #audit: AuditLog;
  readonly #clock: Clock;
  readonly #declared: readonly ConnectionConfig[];
  /**
   * Stored connections by name, so a request does not read the store to find its
   * connection. Filled and served under the versioned-cache rules (ADR 0013): any
   * `connection.changed` notice (this replica's or another's) or `resync` empties it (a
   * change is rare; dropping everything is simpler than tracking names), and nothing is
   * served while the change feed is stale.
   */
  readonly #cache = new Map<string, { view: ConnectionView; token: number }>();
  readonly #epoch: CacheEpoch;
  readonly #unsubscribe: () => void;

  constructor(store: Store, audit: AuditLog, clock: Clock, declared: readonly ConnectionConfig[]) {
    this.#store = store;
    this.#audit = audit;
    this.#clock = clock;
    this.#declared = declared;
    this.#epoch = new CacheEpoch(store);
    this.#unsubscribe = store.subscribe((change) => {
      if (change.type === 'connection.changed' || change.type === 'resync') {
        this.#epoch.bump();
        this.#cache.clear();
      }
    });
  }

  /** This replica's own change: drop it at once, before the notice comes back. */
  #forget(name: string): void {
    this.#epoch.bump();
    this.#cache.delete(name);
  }

  close(): void {
    this.#unsubscribe();
    this.#cache.clear();
  }

  #fromConfig(c: ConnectionConfig): ConnectionView {
    return {
      name: c.name,
      type: c.type,
      url: c.url,
      credential: c.credential ?? null,
      injectHeaders: c.injectHeaders ?? {},
      rules: c.rules ?? {},
      via: c.via ?? null,
      source: 'config',
    };
  }

  #fromStore(r: ConnectionRecord): ConnectionView {
    return {
      name: r.name,
      type: r.type,
      url: r.url,
      credential: r.credential,
      injectHeaders: r.injectHeaders,
      rules: r.rules,
      via: r.via,
      source: 'store',
    };
  }

  /**
   * The secrets a connection releases (its credential, its injected headers) must allow
   * that connection: a secret's allow list is the boundary for every release path, not
   * only for tickets. Checked here and again at each use (either side can change).
   */
  async #checkSecretsExist(names: readonly string[], connection?: ConnectionConfig): Promise<void> {
    for (const name of names) {
      const secret = await this.#store.getSecretByName(name);
      if (secret !== null && connection !== undefined) {
        const target = connectionTarget(connection);
        if (!secret.allow.some((d) => matchesTarget(parseDestination(d), target))) {
          throw new CoatcheckError(
            'CC_ERR_CREDENTIAL_DESTINATION',
            `secret ${name} may not be released to connection ${connection.name}: add conn:${connection.name} (or its host) to the secret's allowed destinations with \`secret update ${name} --allow …\``,
            { details: { secret: name, connection: connection.name } },
          );
        }
      }
      if (secret === null) {
        throw new CoatcheckError(
          'CC_ERR_NOT_FOUND',
          `no secret named ${name} (add it with \`coatcheck secret add ${name}\`)`,
          {
            details: { name },
          },
        );
      }
    }
  }

  /** Check the config-declared connections against the vault (at `serve` start). */
  async checkDeclared(): Promise<void> {
    for (const declared of this.#declared)
      await this.#checkSecretsExist(validateConnection(declared), declared);
  }

  async add(input: ConnectionConfig, actor: string): Promise<ConnectionView> {
    const refs = validateConnection(input);
    if (this.#declared.some((c) => c.name === input.name)) {
      throw new CoatcheckError(
        'CC_ERR_ALREADY_EXISTS',
        `connection ${input.name} is declared in the config file`,
        {
          details: { name: input.name },
        },
      );
    }
    await this.#checkSecretsExist(refs, input);
    const record: ConnectionRecord = {
      id: newId('con'),
      name: input.name,
      type: input.type,
      url: input.url,
      credential: input.credential ?? null,
      injectHeaders: input.injectHeaders ?? {},
      rules: input.rules ?? {},
      via: input.via ?? null,
      createdAt: this.#clock.now(),
    };
    await this.#audit.append(
      {
        type: 'connection.add',
        actor,
        data: {
          connection: record.id,
          name: record.name,
          type: record.type,
          url: record.url,
          credential: record.credential,
          secrets: refs,
          rules: record.rules,
          ...(record.via === null ? {} : { via: record.via }),
        },
      },
      async (tx) => {
        if (record.via !== null && (await tx.getRelayByName(record.via)) === null) {
          throw new CoatcheckError(
            'CC_ERR_NOT_FOUND',
            `no relay named ${record.via} (create it with \`coatcheck relay create ${record.via}\`)`,
            { details: { relay: record.via } },
          );
        }
        if (await tx.getConnection(record.name)) {
          throw new CoatcheckError(
            'CC_ERR_ALREADY_EXISTS',
            `a connection named ${record.name} already exists`,
            { details: { name: record.name } },
          );
        }
        await tx.insertConnection(record);
      },
    );
    this.#forget(record.name);
    await this.#store.publish({ type: 'connection.changed', name: record.name });
    return this.#fromStore(record);
  }

  async list(): Promise<ConnectionView[]> {
    const stored = (await this.#store.listConnections()).map((r) => this.#fromStore(r));
    return [...this.#declared.map((c) => this.#fromConfig(c)), ...stored].sort((a, b) =>
      a.name.localeCompare(b.name),
    );
  }

  async get(name: string): Promise<ConnectionView | null> {
    const declared = this.#declared.find((c) => c.name === name);
    if (declared !== undefined) return this.#fromConfig(declared);
    const hit = this.#cache.get(name);
    if (hit !== undefined && this.#epoch.mayServe(hit.token)) return hit.view;
    const token = this.#epoch.begin();
    const record = await this.#store.getConnection(name);
    if (record === null) return null;
    const view = this.#fromStore(record);
    if (this.#epoch.mayKeep(token)) {
      if (this.#cache.size >= CACHED_CONNECTIONS) this.#cache.clear();
      this.#cache.set(name, { view, token });
    }
    return view;
  }

  async remove(name: string, actor: string): Promise<void> {
    if (this.#declared.some((c) => c.name === name)) {
      throw new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        `connection ${name} is declared in the config file; remove it there`,
        {
          details: { name },
        },
      );
    }
    await this.#audit.append({ type: 'connection.remove', actor, data: { name } }, async (tx) => {
      if (!(await tx.deleteConnection(name))) {
        throw new CoatcheckError('CC_ERR_NOT_FOUND', `no connection named ${name}`, { details: { name } });
      }
    });
    this.#forget(name);
    await this.#store.publish({ type: 'connection.changed', name });
  }
}
