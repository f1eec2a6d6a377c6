import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { CoatcheckError } from '../../core/errors.js';
import type { FrontendDeps } from '../../gateway/deps.js';
import { chainInspectors, createDetectorInspector } from '../../gateway/detector-inspector.js';
import { type Frontend, GatewayDriver, type Mount } from '../../gateway/driver.js';
import { createIndexedInspector, sharedKnownSecretIndex } from '../../gateway/known-secret-index.js';
import type { Decide, ExchangePipeline } from '../../gateway/pipeline.js';
import { createPolicyDecide } from '../../gateway/policy-decide.js';
import type { Recorder } from '../../gateway/session.js';
import { type OutputIndex, outputIndexOver } from './backend-inspect.js';
import { PostgresEngine } from './engine.js';
import { DEFAULT_MAX_MESSAGE_BYTES } from './protocol/framer.js';
import {
  DEFAULT_MAX_STATEMENT_BYTES,
  DEFAULT_MAX_STATEMENTS,
  loadParser,
  SqlClassifier,
} from './sql/classify.js';
import { createStatementPolicy } from './statement-policy.js';
import { listenerTls, secureContext, type TlsFiles } from './tls.js';
import { toErrorResponse } from './wire-errors.js';

export interface PostgresOptions {
  readonly tlsCert?: string | undefined;
  readonly tlsKey?: string | undefined;
  readonly maxMessageBytes: number;
  readonly maxConnections: number;
  readonly loginTimeoutMs: number;
  readonly upstreamTimeoutMs: number;
  readonly auditStatements: boolean;
  readonly classifierCacheSize: number;
  /** Longest query text classified; longer ones are refused before parsing (parsing blocks the event loop). */
  readonly maxStatementBytes: number;
  /** Most statements (semicolons) in one query text. */
  readonly maxStatementsPerQuery: number;
  /** Connections still logging in: in total (beyond it the oldest is closed) and per source address (beyond it refused). */
  readonly maxPendingLogins: number;
  readonly maxPendingLoginsPerSource: number;
}

export const DEFAULT_POSTGRES_OPTIONS: PostgresOptions = {
  maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
  maxConnections: 1000,
  loginTimeoutMs: 5_000,
  upstreamTimeoutMs: 10_000,
  auditStatements: true,
  classifierCacheSize: 10_000,
  maxStatementBytes: DEFAULT_MAX_STATEMENT_BYTES,
  maxStatementsPerQuery: DEFAULT_MAX_STATEMENTS,
  maxPendingLogins: 256,
  maxPendingLoginsPerSource: 32,
};

export interface PostgresFrontend {
  readonly server: Server;
  readonly host: string;
  readonly port: number;
  readonly tls: TlsFiles;
  readonly engine: PostgresEngine;
  readonly pipeline: ExchangePipeline;
  readonly recorder: Recorder;
  /** Stop accepting, end live sessions (after `drainMs`, default at once), flush recordings. */
  close(drainMs?: number): Promise<void>;
}

export interface PostgresFrontendOverrides {
  readonly decide?: Decide;
  readonly options?: Partial<PostgresOptions>;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

/** Start the PostgreSQL front-end on a driver of its own (tests, embedding). */
export async function startPostgresFrontend(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  log: Logger,
  overrides: PostgresFrontendOverrides = {},
): Promise<PostgresFrontend> {
  const driver = new GatewayDriver({ registry: deps.metrics, log, store: deps.store, clock: deps.clock });
  return driver.start(postgresFrontend(deps, listen, overrides));
}

/**
 * The PostgreSQL front-end as the driver runs it: the adapter is the engine (handshake,
 * login, relay); the driver owns the listener, the connection limit, the session hooks,
 * unexpected failures and shutdown. Wiring faults (parser, certificate) fail at start.
 */
export function postgresFrontend(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  overrides: PostgresFrontendOverrides = {},
): Frontend<PostgresFrontend> {
  return { name: 'postgres', start: (mount) => mountPostgres(mount, deps, listen, overrides) };
}

async function mountPostgres(
  mount: Mount,
  deps: FrontendDeps,
  listen: { host: string; port: number },
  overrides: PostgresFrontendOverrides,
): Promise<PostgresFrontend> {
  const log = mount.log;
  const configured = deps.config.postgres;
  const options: PostgresOptions = { ...DEFAULT_POSTGRES_OPTIONS, ...configured, ...overrides.options };
  await loadParser();
  const tls = listenerTls(deps.home.dir, { cert: options.tlsCert, key: options.tlsKey });
  const context = secureContext(tls);
  // The process's one registry (served at /metrics), told apart by frontend="postgres".
  const metrics = mount.metrics;
  const pipeline = mount.pipeline('postgres', {
    vault: deps.vault,
    agents: deps.identity,
    connections: deps.connections,
    audit: deps.audit,
    store: deps.store,
    clock: deps.clock,
    // Known secrets and detector findings (AKIA…, ghp_…) in server output become tickets, as on the HTTP path.
    inspector: chainInspectors(
      createIndexedInspector(sharedKnownSecretIndex(deps.vault, deps.store)),
      createDetectorInspector(),
    ),
    // Logins are decided by policy (action sql:session): with policies configured, default deny.
    decide: overrides.decide ?? createPolicyDecide(deps.gate),
  });
  // The process's one known-secret index (ADR 0021), updated secret by secret from the
  // store's change notices. While a change cannot be applied it is stale: every statement
  // and every output frame is refused (the session ends with CC_ERR_GATEWAY_INSPECTION_FAILED)
  // until a reload, retried every second, succeeds.
  const index = sharedKnownSecretIndex(deps.vault, deps.store, {
    onError: (error) =>
      log.error({ errName: (error as Error)?.name }, 'postgres: secret patterns refresh failed'),
  });
  const outputIndex: OutputIndex = outputIndexOver(index.outputForms());
  await index.current();
  await index.formsReady();
  // A session starts a new response scan when the output index it is handed changes (a
  // secret added since is in the index, so it must be in the scan too): one view of the
  // shared index per pattern set.
  let view: { readonly set: unknown; readonly index: OutputIndex } | null = null;
  const outputIndexNow = (): OutputIndex => {
    const set = index.patterns();
    if (view === null || view.set !== set) view = { set, index: { ...outputIndex } };
    return view.index;
  };
  const engine = new PostgresEngine(
    {
      pipeline,
      classifier: new SqlClassifier({
        capacity: options.classifierCacheSize,
        maxStatementBytes: options.maxStatementBytes,
        maxStatements: options.maxStatementsPerQuery,
      }),
      store: deps.store,
      audit: deps.audit,
      log,
      patterns: () => index.patterns(),
      outputIndex: outputIndexNow,
      now: () => deps.clock.now(),
      clock: deps.clock,
      metrics,
      statementPolicy: createStatementPolicy(deps.gate),
      // An agent key opens a session only under a configured policy (which then decides sql:session).
      keyLoginPermitted: () => overrides.decide !== undefined || deps.gate.policy.engine.source !== 'builtin',
      fail: (error) => mount.fail(error),
    },
    {
      maxMessageBytes: options.maxMessageBytes,
      loginTimeoutMs: options.loginTimeoutMs,
      upstreamTimeoutMs: options.upstreamTimeoutMs,
      tls: context,
      requireTls: !isLoopback(listen.host),
      auditStatements: options.auditStatements,
      dial: deps.upstream,
    },
  );
  // Connections still logging in, oldest first, and how many per source address.
  const pending = new Map<Socket, string>();
  const pendingBySource = new Map<string, number>();
  const settle = (socket: Socket) => {
    const source = pending.get(socket);
    if (source === undefined) return;
    pending.delete(socket);
    const left = (pendingBySource.get(source) ?? 1) - 1;
    if (left <= 0) pendingBySource.delete(source);
    else pendingBySource.set(source, left);
  };
  const refuse = (socket: Socket, error: CoatcheckError) => {
    socket.end(toErrorResponse(error, 'FATAL'));
    setTimeout(() => socket.destroy(), 1000).unref();
  };
  const server = createServer((socket) => {
    const source = socket.remoteAddress ?? '?';
    if ((pendingBySource.get(source) ?? 0) >= options.maxPendingLoginsPerSource) {
      refuse(
        socket,
        new CoatcheckError(
          'CC_ERR_PG_LOGIN_PENDING_LIMIT',
          'coatcheck: too many logins in progress from this address',
        ),
      );
      return;
    }
    if (pending.size >= options.maxPendingLogins) {
      // A real login completes in milliseconds: make room by closing the oldest one still pending.
      const oldest = pending.keys().next().value!;
      settle(oldest);
      oldest.destroy();
    }
    pending.set(socket, source);
    pendingBySource.set(source, (pendingBySource.get(source) ?? 0) + 1);
    socket.once('close', () => settle(socket));
    const client = engine.client(socket);
    client.onAuthenticated = () => settle(socket);
    // One unit of work per connection: the driver refuses it while stopping and maps what escapes.
    void mount.serve(
      (error) => {
        engine.sendError(client, error);
        setTimeout(() => socket.destroy(), 1000).unref();
      },
      () => engine.handle(client),
    );
  });
  // At the drain deadline, live relays end (their sessions are recorded) before sockets are destroyed.
  mount.onDeadline(() => {
    for (const relay of engine.live) relay.close();
  });
  const address = await mount.listen(server, listen, {
    maxConnections: options.maxConnections,
    tooMany: () =>
      new CoatcheckError('CC_ERR_PG_TOO_MANY_CONNECTIONS', 'coatcheck: too many connections', {}),
    refuse,
    listenError: (error) =>
      new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        `--listen-postgres: cannot listen on ${listen.host}:${listen.port}`,
        { cause: error, details: { field: '--listen-postgres' } },
      ),
  });
  return {
    server,
    host: listen.host,
    port: address.port,
    tls,
    engine,
    pipeline,
    recorder: mount.recorder,
    close: (drainMs = 0) => mount.stop(drainMs),
  };
}
