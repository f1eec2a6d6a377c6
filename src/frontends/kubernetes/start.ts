import { generateKeyPairSync } from 'node:crypto';
import type { Server } from 'node:http';
import { createServer } from 'node:https';
import type { Socket } from 'node:net';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { createCertificate } from '../../core/x509.js';
import type { FrontendDeps } from '../../gateway/deps.js';
import { type Frontend, GatewayDriver } from '../../gateway/driver.js';
import { bodyBudget, type HttpOverrides, httpPipelineServices } from '../../gateway/http-mount.js';
import type { ExchangePipeline } from '../../gateway/pipeline.js';
import { openProxyCa } from '../../vault/proxy-ca.js';
import { KubernetesEngine, sendStatus } from './engine.js';
import { statusBody } from './protocol/status.js';
import { createUpstreamPool } from './upstream.js';

/** The listener certificate's lifetime; a new one is minted at every start. */
const LEAF_LIFETIME_MS = 397 * 24 * 3600 * 1000;

export interface KubernetesListener {
  readonly server: Server;
  /** `https://HOST:PORT`; kubectl's server is `<url>/k8s/<agent>/<connection>`. */
  readonly url: string;
  /** The CA the listener's certificate chains to (the gateway's local CA, PEM): kubeconfig's certificate-authority-data. */
  readonly ca: string;
  readonly engine: KubernetesEngine;
  readonly pipeline: ExchangePipeline;
  close(drainMs?: number): Promise<void>;
}

/**
 * The Kubernetes API front-end on a listener of its own (`serve --listen-k8s`): kubectl,
 * unmodified, with a kubeconfig from `coatcheck kubeconfig`. Requests and exec/attach
 * upgrades run through the driver (connection limits, error mapping, drain).
 */
export function kubernetesFrontend(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  overrides: HttpOverrides = {},
): Frontend<KubernetesListener> {
  return {
    name: 'kubernetes',
    async start(mount) {
      const config = deps.config.http;
      const pipeline = mount.pipeline('kubernetes', httpPipelineServices(deps, overrides));
      const pool = createUpstreamPool({ timeoutMs: config.upstreamTimeoutMs, dial: deps.upstream });
      mount.onClose(() => pool.close());
      const engine = new KubernetesEngine(pipeline, {
        bodyLimit: config.bodyLimit,
        upstreamTimeoutMs: config.upstreamTimeoutMs,
        pool,
        store: deps.store,
        bodyBudget: bodyBudget(deps),
      });
      // kubectl sends credentials over TLS only: the listener's certificate is minted under the
      // gateway's local CA (the forward proxy's), which the kubeconfig names as its authority.
      const ca = await openProxyCa(deps.store, deps.keys.masters);
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const now = deps.clock.now();
      const hosts = [...new Set([listen.host, 'localhost', '127.0.0.1', '::1'])].filter(
        (h) =>
          h !== '' && h !== '0.0.0.0' && h !== '::' && (isIP(h) !== 0 || /^[A-Za-z0-9.-]{1,253}$/.test(h)),
      );
      const cert = createCertificate({
        subject: 'coatcheck kubernetes front-end',
        issuer: { subject: ca.subject, organization: ca.organization, key: ca.key, publicKey: ca.publicKey },
        publicKey,
        notBefore: new Date(now - 3600_000),
        notAfter: new Date(now + LEAF_LIFETIME_MS),
        ca: false,
        hosts,
      });
      const tls = {
        key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
        cert: `${cert}${ca.cert}`,
        minVersion: 'TLSv1.2' as const,
        ALPNProtocols: ['http/1.1'],
      };
      const server = createServer(tls, (req, res) => {
        void mount.serve(
          (error) => sendStatus(req, res, error),
          () => engine.serve(req, res),
        );
      });
      server.on('upgrade', (req, socket: Socket, head: Buffer) => {
        mount.track(socket);
        socket.on('error', () => socket.destroy());
        void mount.serve(
          (error) => {
            const body = statusBody(error);
            socket.end(
              `HTTP/1.1 ${error.status} Refused\r\ncontent-type: application/json\r\nx-coatcheck-error: ${error.code}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
            );
          },
          () => engine.upgrade(req, socket, head),
        );
      });
      server.on('connect', (_req, socket: Socket) => socket.destroy());
      server.on('clientError', (_error, socket) => {
        if (socket.writable)
          socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
        else socket.destroy();
      });
      server.on('tlsClientError', (_error, socket) => socket.destroy());
      server.headersTimeout = 15_000;
      // Watches and exec sessions are long: no request timeout (the driver's drain ends them).
      server.requestTimeout = 0;
      // The driver counts and limits the TCP connections (the TLS server accepts on 'connection').
      const address = await mount.listen(server as unknown as Server, listen, {
        maxConnections: config.maxConnections,
      });
      const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      return {
        server,
        url: `https://${host}:${address.port}`,
        ca: ca.cert,
        engine,
        pipeline,
        close: (drainMs = 0) => mount.stop(drainMs),
      };
    },
  };
}

/** The Kubernetes front-end on a driver of its own: tests and embedding. */
export async function startKubernetesFrontend(
  deps: FrontendDeps,
  listen: { host: string; port: number },
  log: Logger,
  overrides: HttpOverrides = {},
): Promise<KubernetesListener> {
  const driver = new GatewayDriver({ registry: deps.metrics, log, store: deps.store, clock: deps.clock });
  return driver.start(kubernetesFrontend(deps, listen, overrides));
}
