import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import {
  createSecureServer,
  type Http2SecureServer,
  type Http2ServerRequest,
  type Http2ServerResponse,
} from 'node:http2';
import { type AddressInfo, connect as netConnect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { Agent } from 'undici';
import type { ConnectionView } from '../../connections/connections.js';
import { CoatcheckError, toCoatcheckError } from '../../core/errors.js';
import { newIncidentId } from '../../core/ids.js';
import type { Principal } from '../../core/principal.js';
import {
  bodyBudget,
  type HttpOverrides as HttpFrontendOverrides,
  httpPipelineServices,
  upstreamCa,
} from '../../gateway/http-mount.js';
import { gatewayMetricsFor } from '../../gateway/metrics.js';
import type { ExchangePipeline } from '../../gateway/pipeline.js';
import { ExchangePipeline as Pipeline } from '../../gateway/pipeline.js';
import { createStoreRecorder, GatewaySession, type Recorder } from '../../gateway/session.js';
import type { Context } from '../../server/context.js';
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

export interface ForwardProxy {
  readonly server: Server;
  /** `http://host:port`: the value of HTTPS_PROXY / HTTP_PROXY (with credentials added). */
  readonly url: string;
  readonly ca: ProxyCa;
  readonly engine: HttpEngine;
  readonly pipeline: ExchangePipeline;
  readonly leaves: LeafCerts;
  close(): Promise<void>;
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
  const body = JSON.stringify({ error: { code: error.code, message: error.message } });
  const reason = error.status === 407 ? 'Proxy Authentication Required' : 'Error';
  const extra = error.status === 407 ? `proxy-authenticate: ${PROXY_AUTHENTICATE}\r\n` : '';
  socket.end(
    `HTTP/1.1 ${error.status} ${reason}\r\ncontent-type: application/json; charset=utf-8\r\nx-coatcheck-error: ${error.code}\r\n${extra}content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
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
  ctx: Context,
  listen: { host: string; port: number },
  log: Logger,
  options: ForwardProxyOptions = {},
): Promise<ForwardProxy> {
  const config = ctx.config.proxy;
  const caFile = options.upstreamCaFile ?? config.upstreamCaFile;
  const ca = upstreamCa(
    caFile,
    options.upstreamCaFile !== undefined ? '--upstream-ca' : 'proxy.upstreamCaFile',
  );
  const authority = await openProxyCa(ctx.store, ctx.keys.masters);
  const leaves = createLeafCerts(authority, { max: config.leafCacheSize });
  const metrics = gatewayMetricsFor(ctx.metrics);
  const recorder = createStoreRecorder(ctx.store, log, metrics);
  const pipeline = new Pipeline('http-proxy', {
    ...httpPipelineServices(ctx, options),
    log,
    metrics,
    recorder,
  });
  const bindings: HostBindings = createHostBindings(ctx.vault, ctx.connections, ctx.store);
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
  const engine = new HttpEngine(pipeline, {
    bodyLimit: ctx.config.http.bodyLimit,
    upstreamTimeoutMs: ctx.config.http.upstreamTimeoutMs,
    maxTicketsPerRequest: ctx.config.http.maxTicketsPerRequest,
    dispatcher,
    bodyBudget: bodyBudget(ctx),
    ...(ca === undefined ? {} : { upstreamCa: ca }),
  });
  const tunnels = new WeakMap<object, Tunnel>();
  const open = new Set<Socket | Duplex>();
  const track = (socket: Socket | Duplex) => {
    open.add(socket);
    socket.once('close', () => open.delete(socket));
  };

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
      const failure = toCoatcheckError(error, newIncidentId());
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
    let route: ForwardRoute;
    try {
      route = tunnelRoute(tunnel, req.url ?? '/');
    } catch (error) {
      responseError(h1res, toCoatcheckError(error, newIncidentId()));
      return;
    }
    engine.serve(h1req, h1res, route).catch(() => h1res.destroy());
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
    let route: ForwardRoute;
    try {
      route = tunnelRoute(tunnel, req.url ?? '/');
    } catch (error) {
      rawError(socket, toCoatcheckError(error, newIncidentId()));
      return;
    }
    engine.upgrade(req, socket, head, route).catch(() => socket.destroy());
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
    (async () => {
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
    })().catch((error: unknown) => {
      const failure = toCoatcheckError(error, newIncidentId());
      if (!req.complete) req.resume();
      responseError(res, failure);
    });
  });

  server.on('connect', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    track(socket);
    const summary: Record<string, unknown> = { method: 'CONNECT' };
    (async () => {
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
    })().catch((error: unknown) => {
      const failure = toCoatcheckError(error, newIncidentId());
      pipeline.services.metrics.refusals.inc({ frontend: 'http-proxy', code: failure.code });
      if (failure.code === 'CC_ERR_INTERNAL')
        log.error({ errName: (error as Error)?.name }, 'forward proxy: CONNECT failed');
      if (socket.writable) rawError(socket, failure);
      else socket.destroy();
    });
  });
  // Plain-http upgrades (ws:// through the proxy without CONNECT).
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    track(socket);
    (async () => {
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
    })().catch((error: unknown) => {
      if (socket.writable) rawError(socket, toCoatcheckError(error, newIncidentId()));
      else socket.destroy();
    });
  });
  server.on('clientError', (_error, socket) => {
    if (socket.writable)
      socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
    else socket.destroy();
  });
  server.headersTimeout = 15_000;
  server.requestTimeout = 0; // tunnels live as long as their clients keep them
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
    ca: authority,
    engine,
    pipeline,
    leaves,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
        for (const socket of open) socket.destroy();
      });
      for (const { server } of servers.values()) server.close();
      bindings.close();
      await dispatcher.close().catch(() => undefined);
      pipeline.close();
      await (recorder as Recorder).flush();
    },
  };
}
