import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import {
  createSecureServer,
  type Http2SecureServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
} from 'node:http2';
import { connect as netConnect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { Agent } from 'undici';
import type { ConnectionView } from '../../connections/connections.js';
import { CoatcheckError } from '../../core/errors.js';
import type { Principal } from '../../core/principal.js';
import type { FrontendDeps } from '../../gateway/deps.js';
import { type Frontend, GatewayDriver, type Mount } from '../../gateway/driver.js';
import {
  bodyBudget,
  type HttpOverrides as HttpFrontendOverrides,
  httpPipelineServices,
  upstreamCa,
} from '../../gateway/http-mount.js';
import type { ExchangePipeline } from '../../gateway/pipeline.js';
import { createRelayDispatchers } from '../../gateway/relay-dispatchers.js';
import { GatewaySession } from '../../gateway/session.js';
import { openProxyCa, type ProxyCa } from '../../vault/proxy-ca.js';
import { createHostBindings, type HostBindings } from './host-bindings.js';
import { type ForwardRoute, HttpEngine } from './http-engine.js';
import { createLeafCerts, type LeafCert, type LeafCerts } from './leaf-certs.js';
import {
  type Authority,
  originOf,
  parseAbsoluteTarget,
  parseAuthority,
  proxyAgentKey,
} from './protocol/proxy-target.js';
import { refuseRawHttp } from './protocol/raw-refusal.js';

export interface ForwardProxy {
  readonly server: Server;
  /** `http://host:port`: the value of HTTPS_PROXY / HTTP_PROXY (with credentials added). */
  readonly url: string;
  readonly ca: ProxyCa;
  readonly engine: HttpEngine;
  readonly pipeline: ExchangePipeline;
  readonly leaves: LeafCerts;
  /** Stop accepting, drain requests in flight for `drainMs` (default: none), close tunnels, flush recordings. */
  close(drainMs?: number): Promise<void>;
}

export interface ForwardProxyOptions extends HttpFrontendOverrides {
  /** Extra CA certificates (PEM file) trusted for upstreams; `--upstream-ca`, else `proxy.upstreamCaFile`. */
  readonly upstreamCaFile?: string;
}

/** One intercepted tunnel: what the CONNECT named and who opened it. */
interface Tunnel extends Authority {
  readonly agentKey: string;
  readonly connection: ConnectionView | null;
}

const PROXY_AUTHENTICATE = 'Basic realm="coatcheck", Bearer realm="coatcheck"';

function rawError(socket: Duplex, error: CoatcheckError): void {
  refuseRawHttp(socket, error, error.status === 407 ? [`proxy-authenticate: ${PROXY_AUTHENTICATE}`] : []);
}

function responseError(res: ServerResponse, error: CoatcheckError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: { code: error.code, message: error.message } });
  res.writeHead(error.status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'x-coatcheck-error': error.code,
    // HTTP/2 has no Connection header (RFC 9113 §8.2.2).
    ...(res.req?.httpVersionMajor === 2 ? {} : { connection: 'close' }),
    ...(error.status === 407 ? { 'proxy-authenticate': PROXY_AUTHENTICATE } : {}),
  });
  res.end(body);
}

/**
 * The forward proxy (`HTTPS_PROXY`/`HTTP_PROXY`): plain `http://` requests and CONNECT
 * tunnels, authenticated with Proxy-Authorization (Basic with the agent key as password,
 * or Bearer). A tunnel to a host a secret or connection is bound to is intercepted: TLS
 * is terminated with a leaf certificate minted under the local CA, and each request in
 * it runs through the same `HttpEngine` as the reverse proxy, then goes to the real host
 * over TLS with its certificate verified. Other hosts are refused or tunnelled untouched
 * (`proxy.unboundHosts`).
 */
export async function startForwardProxy(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  log: Logger,
  options: ForwardProxyOptions = {},
): Promise<ForwardProxy> {
  const driver = new GatewayDriver({ registry: deps.metrics, log, store: deps.store, clock: deps.clock });
  return driver.start(forwardProxyFrontend(deps, listen, options));
}

/** The forward proxy as the driver runs it (frontend label `http-proxy`). */
export function forwardProxyFrontend(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  options: ForwardProxyOptions = {},
): Frontend<ForwardProxy> {
  return { name: 'http-proxy', start: (mount) => mountForwardProxy(mount, deps, listen, options) };
}

async function mountForwardProxy(
  mount: Mount,
  ctx: FrontendDeps,
  listen: { host: string; port: number },
  options: ForwardProxyOptions,
): Promise<ForwardProxy> {
  const config = ctx.config.proxy;
  const caFile = options.upstreamCaFile ?? config.upstreamCaFile;
  const ca = upstreamCa(
    caFile,
    options.upstreamCaFile !== undefined ? '--upstream-ca' : 'proxy.upstreamCaFile',
  );
  const authority = await openProxyCa(ctx.store, ctx.keys.masters);
  const leaves = createLeafCerts(authority, { max: config.leafCacheSize });
  const pipeline = mount.pipeline('http-proxy', httpPipelineServices(ctx, options));
  const bindings: HostBindings = createHostBindings(ctx.vault, ctx.connections, ctx.store);
  mount.onClose(() => bindings.close());
  const dispatcher = new Agent({
    connect: {
      timeout: Math.min(ctx.config.http.upstreamTimeoutMs, 10_000),
      rejectUnauthorized: true,
      ...(ca === undefined ? {} : { ca }),
    },
    headersTimeout: ctx.config.http.upstreamTimeoutMs,
    bodyTimeout: ctx.config.http.upstreamTimeoutMs,
    keepAliveTimeout: 4_000,
  });
  mount.onClose(() => dispatcher.close().catch(() => undefined));
  // A host bound to a connection with `via` is reached through that relay (docs/relay.md).
  const relays = createRelayDispatchers(ctx.upstream, {
    timeoutMs: Math.min(ctx.config.http.upstreamTimeoutMs, 10_000),
    ...(ca === undefined ? {} : { ca }),
    agent: {
      headersTimeout: ctx.config.http.upstreamTimeoutMs,
      bodyTimeout: ctx.config.http.upstreamTimeoutMs,
      keepAliveTimeout: 4_000,
    },
  });
  mount.onClose(() => relays.close());
  const engine = new HttpEngine(pipeline, {
    relays,
    dial: ctx.upstream,
    // Sessions, request metrics and logs of proxied requests say http-proxy, like their audit records.
    name: 'http-proxy',
    bodyLimit: ctx.config.http.bodyLimit,
    upstreamTimeoutMs: ctx.config.http.upstreamTimeoutMs,
    maxTicketsPerRequest: ctx.config.http.maxTicketsPerRequest,
    dispatcher,
    bodyBudget: bodyBudget(ctx),
    ...(ca === undefined ? {} : { upstreamCa: ca }),
  });
  const tunnels = new WeakMap<object, Tunnel>();
  const track = (socket: Socket | Duplex) => mount.track(socket);

  /**
   * Authenticate the opener of a tunnel (or a plain request to a refused host) in a
   * session of its own: refusals are audited by the pipeline, and the tunnel is recorded.
   */
  const withSession = async <T>(
    summary: Record<string, unknown>,
    fn: (session: GatewaySession) => Promise<T>,
  ): Promise<T> => {
    const session = pipeline.openSession(new GatewaySession('http-proxy', ctx.clock));
    let outcome: Parameters<ExchangePipeline['closeSession']>[1] = 'ok';
    try {
      return await fn(session);
    } catch (error) {
      // The driver's one mapping (an unexpected failure is logged under its incident id here).
      const failure = mount.fail(error);
      outcome = failure.code;
      summary.error = failure.code;
      throw failure;
    } finally {
      pipeline.closeSession(session, outcome, summary);
    }
  };

  const refuseHost = async (principal: Principal, target: Authority, session: GatewaySession) => {
    await ctx.audit.append({
      type: 'gateway.proxy.refused',
      actor: principal.ref,
      data: { frontend: 'http-proxy', session: session.id, host: target.host, port: target.port },
    });
    return new CoatcheckError(
      'CC_ERR_PROXY_HOST_REFUSED',
      `no secret or connection is bound to ${target.host}:${target.port}; the proxy refuses channels it cannot inspect`,
      { details: { host: target.host, port: target.port } },
    );
  };

  /** The route of a request inside an intercepted tunnel (origin-form target, the tunnel's host and port). */
  const tunnelRoute = (tunnel: Tunnel, url: string): ForwardRoute => {
    const parsed = parseAbsoluteTarget(url.startsWith('/') ? `https://${tunnel.host}${url}` : '');
    return {
      scheme: 'https:',
      host: tunnel.host,
      port: tunnel.port,
      origin: originOf('https:', tunnel),
      path: parsed.path,
      query: parsed.query,
      agentKey: tunnel.agentKey,
      connection: tunnel.connection,
    };
  };

  /** The tunnel a request arrived in: the CONNECT socket under the TLS socket (HTTP/1.1 or the HTTP/2 session's). */
  const tunnelOf = (req: IncomingMessage | Http2ServerRequest): Tunnel | undefined => {
    const tlsSocket = 'stream' in req ? req.stream.session?.socket : req.socket;
    const parent = (tlsSocket as { _parent?: object } | undefined)?._parent;
    return parent === undefined ? undefined : tunnels.get(parent);
  };

  // Requests inside intercepted tunnels, HTTP/1.1 or HTTP/2 (ALPN), all in the reverse proxy's engine.
  const onRequest = (
    req: IncomingMessage | Http2ServerRequest,
    res: ServerResponse | Http2ServerResponse,
  ) => {
    const h1req = req as IncomingMessage;
    const h1res = res as ServerResponse;
    const tunnel = tunnelOf(req);
    if (tunnel === undefined) {
      h1res.destroy();
      return;
    }
    void mount.serve(
      (error) => responseError(h1res, error),
      () => engine.serve(h1req, h1res, tunnelRoute(tunnel, req.url ?? '/')),
    );
  };
  // WebSocket (and other) upgrades inside a tunnel pass the same checks, then the sides are joined.
  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    track(socket);
    const tunnel = tunnelOf(req);
    if (tunnel === undefined) {
      socket.destroy();
      return;
    }
    void mount.serve(
      (error) => (socket.writable ? rawError(socket, error) : socket.destroy()),
      () => engine.upgrade(req, socket, head, tunnelRoute(tunnel, req.url ?? '/')),
    );
  };

  /**
   * One TLS server per intercepted host (not listening: CONNECT sockets are handed to it),
   * presenting that host's leaf certificate and offering h2 and http/1.1 by ALPN. Kept as
   * long as its leaf is.
   */
  const servers = new Map<string, { leaf: LeafCert; server: Http2SecureServer }>();
  const serverFor = (host: string): Http2SecureServer => {
    const leaf = leaves.get(host);
    const cached = servers.get(host);
    if (cached !== undefined && cached.leaf === leaf) return cached.server;
    cached?.server.close();
    const server = createSecureServer({ key: leaf.key, cert: leaf.cert, allowHTTP1: true }, onRequest);
    server.on('upgrade', onUpgrade);
    server.on('sessionError', () => undefined);
    server.on('tlsClientError', () => undefined);
    servers.delete(host);
    servers.set(host, { leaf, server });
    while (servers.size > config.leafCacheSize) {
      const oldest = servers.keys().next().value!;
      servers.get(oldest)?.server.close();
      servers.delete(oldest);
    }
    return server;
  };

  const intercept = (socket: Socket, head: Buffer, tunnel: Tunnel) => {
    if (head.length > 0) socket.unshift(head);
    tunnels.set(socket, tunnel);
    serverFor(tunnel.host).emit('connection', socket);
  };

  const passThrough = (socket: Socket, head: Buffer, target: Authority) => {
    const upstream = netConnect({ host: target.host, port: target.port });
    track(upstream);
    upstream.once('connect', () => {
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) upstream.write(head);
      socket.pipe(upstream);
      upstream.pipe(socket);
    });
    upstream.on('error', () => {
      if (upstream.connecting || !upstream.readable)
        rawError(
          socket,
          new CoatcheckError('CC_ERR_GATEWAY_UPSTREAM_UNREACHABLE', 'the upstream could not be reached'),
        );
      socket.destroy();
    });
    socket.on('close', () => upstream.destroy());
  };

  const server = createServer((req, res) => {
    const summary: Record<string, unknown> = { method: req.method };
    const refuse = (failure: CoatcheckError) => {
      if (!req.complete) req.resume();
      responseError(res, failure);
    };
    void mount.serve(refuse, async () => {
      const agentKey = proxyAgentKey(req.headers['proxy-authorization']);
      const target = parseAbsoluteTarget(req.url ?? '');
      const binding = await bindings.resolve(
        target.host,
        target.port,
        target.scheme === 'https:' ? 'https' : 'http',
      );
      if (!binding.bound && config.unboundHosts === 'refuse') {
        await withSession(
          { ...summary, proxy: 'http', target: `${target.host}:${target.port}` },
          async (session) => {
            const principal = await pipeline.authenticate(session, agentKey);
            throw await refuseHost(principal, target, session);
          },
        );
      }
      await engine.serve(req, res, {
        scheme: target.scheme,
        host: target.host,
        port: target.port,
        origin: originOf(target.scheme, target),
        path: target.path,
        query: target.query,
        agentKey,
        connection: binding.connection,
      });
    });
  });

  server.on('connect', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    track(socket);
    const summary: Record<string, unknown> = { method: 'CONNECT' };
    const refuse = (failure: CoatcheckError) => {
      if (socket.writable) rawError(socket, failure);
      else socket.destroy();
    };
    void mount.serve(refuse, async () => {
      const target = parseAuthority(req.url ?? '');
      summary.target = `${target.host}:${target.port}`;
      const agentKey = proxyAgentKey(req.headers['proxy-authorization']);
      await withSession(summary, async (session) => {
        await pipeline.authenticate(session, agentKey);
        const principal = session.principal!;
        const binding = await bindings.resolve(target.host, target.port);
        if (binding.bound) {
          summary.proxy = 'intercepted';
          socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
          intercept(socket, head, { ...target, agentKey: agentKey!, connection: binding.connection });
        } else if (config.unboundHosts === 'tunnel') {
          summary.proxy = 'tunnel';
          await ctx.audit.append({
            type: 'gateway.proxy.tunnel',
            actor: principal.ref,
            data: { frontend: 'http-proxy', session: session.id, host: target.host, port: target.port },
          });
          passThrough(socket, head, target);
        } else {
          summary.proxy = 'refused';
          throw await refuseHost(principal, target, session);
        }
      });
    });
  });
  // Plain-http upgrades (ws:// through the proxy without CONNECT).
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    track(socket);
    const refuse = (failure: CoatcheckError) => {
      if (socket.writable) rawError(socket, failure);
      else socket.destroy();
    };
    void mount.serve(refuse, async () => {
      const agentKey = proxyAgentKey(req.headers['proxy-authorization']);
      const target = parseAbsoluteTarget(req.url ?? '');
      const binding = await bindings.resolve(
        target.host,
        target.port,
        target.scheme === 'https:' ? 'https' : 'http',
      );
      if (!binding.bound && config.unboundHosts === 'refuse') {
        const summary = { method: req.method, proxy: 'http', target: `${target.host}:${target.port}` };
        await withSession(summary, async (session) => {
          const principal = await pipeline.authenticate(session, agentKey);
          throw await refuseHost(principal, target, session);
        });
      }
      await engine.upgrade(req, socket, head, {
        scheme: target.scheme,
        host: target.host,
        port: target.port,
        origin: originOf(target.scheme, target),
        path: target.path,
        query: target.query,
        agentKey,
        connection: binding.connection,
      });
    });
  });
  server.on('clientError', (_error, socket) => {
    if (socket.writable)
      socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    else socket.destroy();
  });
  server.headersTimeout = 15_000;
  server.requestTimeout = 0; // tunnels live as long as their clients keep them
  mount.onClose(() => {
    for (const { server } of servers.values()) server.close();
  });
  const address = await mount.listen(server, listen, {
    maxConnections: ctx.config.http.maxConnections,
    refuse: refuseRawHttp,
  });
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    server,
    url: `http://${host}:${address.port}`,
    ca: authority,
    engine,
    pipeline,
    leaves,
    close: (drainMs = 0) => mount.stop(drainMs),
  };
}
