import { createServer, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { CoatcheckError } from '../../core/errors.js';
import { chainInspectors, createDetectorInspector } from '../../gateway/detector-inspector.js';
import { buildPatterns, createKnownSecretInspector, type PatternSet } from '../../gateway/inspector.js';
import { gatewayMetricsFor } from '../../gateway/metrics.js';
import { type Decide, ExchangePipeline } from '../../gateway/pipeline.js';
import { createPolicyDecide } from '../../gateway/policy-decide.js';
import { createStoreRecorder, type Recorder } from '../../gateway/session.js';
import type { Context } from '../../server/context.js';
import { createOutputIndex, type OutputIndex } from './backend-inspect.js';
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

/** How long close() waits for sessions to end before it stops waiting (sockets are destroyed at once). */
const CLOSE_GRACE_MS = 2_000;

export interface PostgresFrontend {
  readonly server: Server;
  readonly host: string;
  readonly port: number;
  readonly tls: TlsFiles;
  readonly engine: PostgresEngine;
  readonly pipeline: ExchangePipeline;
  readonly recorder: Recorder;
  /** Stop accepting, end live sessions, flush recordings. */
  close(): Promise<void>;
}

export interface PostgresFrontendOverrides {
  readonly decide?: Decide;
  readonly options?: Partial<PostgresOptions>;
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

/** Start the PostgreSQL front-end. Wiring faults (parser, certificate, missing services) fail here. */
export async function startPostgresFrontend(
  ctx: Context,
  listen: { host: string; port: number },
  log: Logger,
  overrides: PostgresFrontendOverrides = {},
): Promise<PostgresFrontend> {
  const configured = ctx.config.postgres;
  const options: PostgresOptions = { ...DEFAULT_POSTGRES_OPTIONS, ...configured, ...overrides.options };
  await loadParser();
  const tls = listenerTls(ctx.home.dir, { cert: options.tlsCert, key: options.tlsKey });
  const context = secureContext(tls);
  // The process's one registry (served at /metrics), told apart by frontend="postgres".
  const metrics = gatewayMetricsFor(ctx.metrics);
  const recorder = createStoreRecorder(ctx.store, log, metrics);
  const pipeline = new ExchangePipeline('postgres', {
    vault: ctx.vault,
    agents: ctx.identity,
    connections: ctx.connections,
    audit: ctx.audit,
    store: ctx.store,
    clock: ctx.clock,
    log,
    metrics,
    recorder,
    // Known secrets and detector findings (AKIA…, ghp_…) in server output become tickets, as on the HTTP path.
    inspector: chainInspectors(
      createKnownSecretInspector(() => ctx.vault.knownSecrets()),
      createDetectorInspector(),
    ),
    // Logins are decided by policy (action sql:session): with policies configured, default deny.
    decide: overrides.decide ?? createPolicyDecide(ctx.gate),
  });
  let patterns: PatternSet = buildPatterns([]);
  let outputIndex: OutputIndex = createOutputIndex([]);
  let generation = 0;
  const refresh = async () => {
    const mine = ++generation;
    const secrets = await ctx.vault.knownSecrets();
    if (mine === generation) {
      const revealed = secrets.map((s) => ({ id: s.id, value: s.value.reveal() }));
      patterns = buildPatterns(revealed);
      outputIndex = createOutputIndex(revealed);
    }
  };
  await refresh();
  const unsubscribe = ctx.store.subscribe((change) => {
    // Only a change to the set of secret values changes what output is searched for:
    // approvals, connections, revocations and ended workflows do not (a rebuild per
    // change would block the event loop under churn).
    if (
      change.type === 'approval.changed' ||
      change.type === 'connection.changed' ||
      change.type === 'ticket.revoked' ||
      change.type === 'agent.revoked' ||
      change.type === 'workflow.ended'
    )
      return;
    refresh().catch((error: unknown) =>
      log.error({ errName: (error as Error)?.name }, 'postgres: secret patterns refresh failed'),
    );
  });
  const engine = new PostgresEngine(
    {
      pipeline,
      classifier: new SqlClassifier({
        capacity: options.classifierCacheSize,
        maxStatementBytes: options.maxStatementBytes,
        maxStatements: options.maxStatementsPerQuery,
      }),
      store: ctx.store,
      audit: ctx.audit,
      log,
      patterns: () => patterns,
      outputIndex: () => outputIndex,
      now: () => ctx.clock.now(),
      clock: ctx.clock,
      metrics,
      statementPolicy: createStatementPolicy(ctx.gate),
      // An agent key opens a session only under a configured policy (which then decides sql:session).
      keyLoginPermitted: () => overrides.decide !== undefined || ctx.gate.policy.engine.source !== 'builtin',
    },
    {
      maxMessageBytes: options.maxMessageBytes,
      loginTimeoutMs: options.loginTimeoutMs,
      upstreamTimeoutMs: options.upstreamTimeoutMs,
      tls: context,
      requireTls: !isLoopback(listen.host),
      auditStatements: options.auditStatements,
    },
  );
  const sockets = new Set<Socket>();
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
    socket.on('error', () => undefined);
    if (sockets.size >= options.maxConnections) {
      refuse(
        socket,
        new CoatcheckError('CC_ERR_PG_TOO_MANY_CONNECTIONS', 'coatcheck: too many connections', {}),
      );
      return;
    }
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
    sockets.add(socket);
    socket.once('close', () => {
      sockets.delete(socket);
      settle(socket);
    });
    const client = engine.client(socket);
    client.onAuthenticated = () => settle(socket);
    engine.handle(client).catch((error: unknown) => {
      log.error({ errName: (error as Error)?.name }, 'postgres front-end: unhandled failure');
      socket.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) =>
      reject(
        new CoatcheckError(
          'CC_ERR_INVALID_ARGUMENT',
          `--listen-postgres: cannot listen on ${listen.host}:${listen.port}`,
          {
            cause: error,
            details: { field: '--listen-postgres' },
          },
        ),
      ),
    );
    server.listen(listen.port, listen.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : listen.port;
  return {
    server,
    host: listen.host,
    port,
    tls,
    engine,
    pipeline,
    recorder,
    async close() {
      unsubscribe();
      await new Promise<void>((resolve) => {
        const grace = setTimeout(resolve, CLOSE_GRACE_MS);
        grace.unref();
        server.close(() => {
          clearTimeout(grace);
          resolve();
        });
        for (const relay of engine.live) relay.close();
        for (const socket of sockets) socket.destroy();
      });
      pipeline.close();
      await recorder.flush();
    },
  };
}
