import { createServer, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { Agent } from 'undici';
import { CoatcheckError } from '../../core/errors.js';
import type { FrontendDeps } from '../../gateway/deps.js';
import { type Frontend, GatewayDriver, type Mount } from '../../gateway/driver.js';
import {
  bodyBudget,
  type HttpOverrides,
  type HttpRoute,
  type HttpRouteFactory,
  httpPipelineServices,
  refuseHttp,
  upstreamCa,
} from '../../gateway/http-mount.js';
import type { ExchangePipeline } from '../../gateway/pipeline.js';
import { createRelayDispatchers } from '../../gateway/relay-dispatchers.js';
import type { Recorder } from '../../gateway/session.js';
import { HttpEngine } from './http-engine.js';
import { refuseRawHttp } from './protocol/raw-refusal.js';

export { bodyBudget, upstreamCa };

export interface HttpListener {
  readonly server: Server;
  readonly url: string;
  readonly engine: HttpEngine;
  readonly pipeline: ExchangePipeline;
  /** The routes other front-ends mounted on this listener (the LLM guard, the MCP gateway), in order. */
  readonly routes: readonly HttpRoute[];
  readonly recorder: Recorder;
  /** Stop accepting, drain requests in flight for `drainMs` (default: none), flush recordings. */
  close(drainMs?: number): Promise<void>;
}

export type HttpFrontendOverrides = HttpOverrides;

export interface HttpFrontendOptions extends HttpOverrides {
  /** Path prefixes served by other front-ends on this listener (wired by the composition root). */
  readonly routes?: readonly HttpRouteFactory[];
}

/** The reverse proxy alone (no routes) on a driver of its own: tests and embedding. */
export async function startHttpListener(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  log: Logger,
  options: HttpFrontendOptions = {},
): Promise<HttpListener> {
  const driver = new GatewayDriver({ registry: deps.metrics, log, store: deps.store, clock: deps.clock });
  return driver.start(httpFrontend(deps, listen, options));
}

/**
 * The HTTP front-end as the driver runs it: the reverse proxy `/c/<connection>/…` (the
 * adapter is HttpEngine), plus whatever routes the composition root mounts on the same
 * listener. Wiring faults (missing services, unreadable CA file) fail at start.
 */
export function httpFrontend(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  options: HttpFrontendOptions = {},
): Frontend<HttpListener> {
  return { name: 'http', start: (mount) => mountHttp(mount, deps, listen, options) };
}

async function mountHttp(
  mount: Mount,
  deps: FrontendDeps,
  listen: { host: string; port: number },
  options: HttpFrontendOptions,
): Promise<HttpListener> {
  const config = deps.config.http;
  const services = httpPipelineServices(deps, options);
  const pipeline = mount.pipeline('http', services);
  const ca = upstreamCa(config.upstreamCaFile);
  const dispatcher = new Agent({
    connect: { timeout: Math.min(config.upstreamTimeoutMs, 10_000), ...(ca === undefined ? {} : { ca }) },
    headersTimeout: config.upstreamTimeoutMs,
    bodyTimeout: config.upstreamTimeoutMs,
    keepAliveTimeout: 4_000,
  });
  mount.onClose(() => dispatcher.close().catch(() => undefined));
  // Connections with `via` reach their upstream through a relay (docs/relay.md).
  const relays = createRelayDispatchers(deps.upstream, {
    timeoutMs: Math.min(config.upstreamTimeoutMs, 10_000),
    ...(ca === undefined ? {} : { ca }),
    agent: {
      headersTimeout: config.upstreamTimeoutMs,
      bodyTimeout: config.upstreamTimeoutMs,
      keepAliveTimeout: 4_000,
    },
  });
  mount.onClose(() => relays.close());
  const engine = new HttpEngine(pipeline, {
    bodyLimit: config.bodyLimit,
    upstreamTimeoutMs: config.upstreamTimeoutMs,
    maxTicketsPerRequest: config.maxTicketsPerRequest,
    dispatcher,
    relays,
    dial: deps.upstream,
    bodyBudget: bodyBudget(deps),
  });
  const routes = (options.routes ?? []).map((factory) => factory({ mount, dispatcher, relays, services }));
  for (const route of routes) if (route.close !== undefined) mount.onClose(() => route.close?.());
  const server = createServer((req, res) => {
    const route = routes.find((r) => req.url?.startsWith(r.prefix));
    void mount.serve(
      (error) => refuseHttp(req, res, error),
      () => (route === undefined ? engine.serve(req, res) : route.serve(req, res)),
    );
  });
  const refuseRaw = (socket: Duplex) =>
    refuseRawHttp(
      socket,
      new CoatcheckError(
        'CC_ERR_HTTP_UNSUPPORTED',
        'CONNECT and protocol upgrades are not served by this front-end',
      ),
    );
  server.on('connect', (_req, socket) => refuseRaw(socket));
  server.on('upgrade', (_req, socket) => refuseRaw(socket));
  server.on('clientError', (_error, socket) => {
    if (socket.writable)
      socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    else socket.destroy();
  });
  server.headersTimeout = 15_000;
  server.requestTimeout = 60_000;
  const address = await mount.listen(server, listen, {
    maxConnections: deps.config.http.maxConnections,
    refuse: refuseRawHttp,
  });
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    server,
    url: `http://${host}:${address.port}`,
    engine,
    pipeline,
    routes,
    recorder: mount.recorder,
    close: (drainMs = 0) => mount.stop(drainMs),
  };
}
