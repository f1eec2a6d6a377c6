import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { rootCertificates } from 'node:tls';
import type { Logger } from 'pino';
import { Agent } from 'undici';
import { CoatcheckError } from '../../core/errors.js';
import { chainInspectors, createDetectorInspector } from '../../gateway/detector-inspector.js';
import { type BodyBudget, createBodyBudget } from '../../gateway/http-io.js';
import { createKnownSecretInspector, type ResponseInspector } from '../../gateway/inspector.js';
import { type GatewayMetrics, gatewayMetricsFor } from '../../gateway/metrics.js';
import { type Decide, ExchangePipeline } from '../../gateway/pipeline.js';
import { createPolicyDecide } from '../../gateway/policy-decide.js';
import { createStoreRecorder, type Recorder } from '../../gateway/session.js';
import type { Context } from '../../server/context.js';
import { LlmEngine } from '../llm/llm-engine.js';
import { McpGateway } from '../mcp/mcp-gateway.js';
import { HttpEngine } from './http-engine.js';

export interface HttpFrontend {
  readonly server: Server;
  readonly url: string;
  readonly engine: HttpEngine;
  readonly pipeline: ExchangePipeline;
  /** The LLM prompt guard at /llm/<connection>/v1/… (docs/llm.md). */
  readonly llm: LlmEngine;
  /** The MCP gateway at /mcp/<connection> (docs/mcp.md). */
  readonly mcp: McpGateway;
  readonly recorder: Recorder;
  /** Stop accepting, end live requests, flush recordings. */
  close(): Promise<void>;
}

export interface HttpFrontendOverrides {
  /** Replace the known-secret inspector (the detection engine plugs in here). */
  readonly inspector?: ResponseInspector;
  /** Replace the default decision (policy plugs in here). */
  readonly decide?: Decide;
}

function gatewayMetrics(ctx: Context): GatewayMetrics {
  return gatewayMetricsFor(ctx.metrics);
}

const budgetByRegistry = new WeakMap<object, BodyBudget>();

/**
 * The in-flight request-body budget of this process (`http.maxInFlightBodyBytes`, and per
 * agent `http.maxInFlightBodyBytesPerAgent`), shared by the reverse proxy, the forward
 * proxy and the LLM guard, with its metrics.
 */
export function bodyBudget(ctx: Context): BodyBudget {
  let budget = budgetByRegistry.get(ctx.metrics);
  if (budget === undefined) {
    const metrics = gatewayMetrics(ctx);
    budget = createBodyBudget({
      globalLimit: ctx.config.http.maxInFlightBodyBytes,
      agentLimit: ctx.config.http.maxInFlightBodyBytesPerAgent,
      onChange: (total) => metrics.bodyBytesInFlight.set(total),
      onRefuse: (scope) => metrics.bodyBudgetRefusals.inc({ scope }),
    });
    budgetByRegistry.set(ctx.metrics, budget);
  }
  return budget;
}

export function upstreamCa(file: string | undefined, field = 'http.upstreamCaFile'): string[] | undefined {
  if (file === undefined) return undefined;
  try {
    return [...rootCertificates, readFileSync(file, 'utf8')];
  } catch {
    throw new CoatcheckError('CC_ERR_CONFIG_INVALID', `${field} cannot be read: ${file}`, {
      details: { field },
    });
  }
}

/** The exchange pipeline for an HTTP listener (reverse or forward proxy): the same services, checked here. */
export function createHttpPipeline(
  ctx: Context,
  log: Logger,
  frontend: string,
  overrides: HttpFrontendOverrides = {},
): { pipeline: ExchangePipeline; recorder: Recorder } {
  const metrics = gatewayMetrics(ctx);
  const recorder = createStoreRecorder(ctx.store, log, metrics);
  const pipeline = new ExchangePipeline(frontend, {
    vault: ctx.vault,
    agents: ctx.identity,
    connections: ctx.connections,
    audit: ctx.audit,
    store: ctx.store,
    clock: ctx.clock,
    log,
    metrics,
    recorder,
    inspector:
      overrides.inspector ??
      (ctx.config.http.detectSecrets
        ? chainInspectors(
            createKnownSecretInspector(() => ctx.vault.knownSecrets()),
            createDetectorInspector(),
          )
        : createKnownSecretInspector(() => ctx.vault.knownSecrets())),
    decide: overrides.decide ?? createPolicyDecide(ctx.gate),
  });
  return { pipeline, recorder };
}

/** Start the HTTP front-end on `listen`. Wiring faults (missing services, unreadable CA file) fail here. */
export async function startHttpFrontend(
  ctx: Context,
  listen: { host: string; port: number },
  log: Logger,
  overrides: HttpFrontendOverrides = {},
): Promise<HttpFrontend> {
  const options = ctx.config.http;
  const { pipeline, recorder } = createHttpPipeline(ctx, log, 'http', overrides);
  const ca = upstreamCa(options.upstreamCaFile);
  const dispatcher = new Agent({
    connect: { timeout: Math.min(options.upstreamTimeoutMs, 10_000), ...(ca === undefined ? {} : { ca }) },
    headersTimeout: options.upstreamTimeoutMs,
    bodyTimeout: options.upstreamTimeoutMs,
    keepAliveTimeout: 4_000,
  });
  const engine = new HttpEngine(pipeline, {
    bodyLimit: options.bodyLimit,
    upstreamTimeoutMs: options.upstreamTimeoutMs,
    maxTicketsPerRequest: options.maxTicketsPerRequest,
    dispatcher,
    bodyBudget: bodyBudget(ctx),
  });
  // Model answers stream (SSE): only known vault secrets are replaced there, so nothing is held
  // back longer than the longest secret. Prompts are scanned in full before they leave.
  const llmPipeline = new ExchangePipeline('llm', {
    ...pipeline.services,
    inspector: overrides.inspector ?? createKnownSecretInspector(() => ctx.vault.knownSecrets()),
  });
  const llm = new LlmEngine(llmPipeline, {
    bodyLimit: options.bodyLimit,
    bodyBudget: bodyBudget(ctx),
    upstreamTimeoutMs: options.upstreamTimeoutMs,
    dispatcher,
  });
  const mcpPipeline = new ExchangePipeline('mcp', { ...pipeline.services });
  const mcp = new McpGateway(mcpPipeline, {
    bodyLimit: options.bodyLimit,
    bodyBudget: bodyBudget(ctx),
    upstreamTimeoutMs: options.upstreamTimeoutMs,
    maxTicketsPerRequest: options.maxTicketsPerRequest,
    // tools/list shows what policy allows or holds for approval; nothing is requested by listing.
    visible: (principal, connection, tool) =>
      ctx.policy.engine.decide({
        principal,
        action: 'mcp:call',
        resource: { type: 'Connection', id: connection, attrs: { type: 'mcp' } },
        context: { tool },
      }).effect !== 'deny',
  });
  const server = createServer((req, res) => {
    const served = req.url?.startsWith('/llm/')
      ? llm.serve(req, res)
      : req.url?.startsWith('/mcp/')
        ? mcp.serve(req, res)
        : engine.serve(req, res);
    served.catch((error: unknown) => {
      log.error({ errName: (error as Error)?.name }, 'http front-end: unhandled failure');
      res.destroy();
    });
  });
  const refuseRaw = (socket: import('node:stream').Duplex) => {
    // The socket is ours now: without an error listener a client reset would crash the process.
    socket.on('error', () => socket.destroy());
    const body = JSON.stringify({
      error: {
        code: 'CC_ERR_HTTP_UNSUPPORTED',
        message: 'CONNECT and protocol upgrades are not served by this front-end',
      },
    });
    socket.end(
      `HTTP/1.1 501 Not Implemented\r\ncontent-type: application/json\r\nx-coatcheck-error: CC_ERR_HTTP_UNSUPPORTED\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  };
  server.on('connect', (_req, socket) => refuseRaw(socket));
  server.on('upgrade', (_req, socket) => refuseRaw(socket));
  server.on('clientError', (_error, socket) => {
    if (socket.writable)
      socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    else socket.destroy();
  });
  server.headersTimeout = 15_000;
  server.requestTimeout = 60_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    server,
    url: `http://${host}:${address.port}`,
    engine,
    pipeline,
    llm,
    mcp,
    recorder,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await dispatcher.close().catch(() => undefined);
      pipeline.close();
      llmPipeline.close();
      await mcp.close();
      mcpPipeline.close();
      await recorder.flush();
    },
  };
}
