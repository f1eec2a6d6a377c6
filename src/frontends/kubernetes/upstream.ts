import { createHash } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { rootCertificates } from 'node:tls';
import { Agent } from 'undici';
import type { ConnectionView } from '../../connections/connections.js';
import { CoatcheckError } from '../../core/errors.js';
import { relayConnector } from '../../gateway/relay-dispatchers.js';
import { dialTls, type UpstreamDialer } from '../../gateway/upstream-dial.js';
import type { UpstreamTls } from '../../gateway/websocket.js';

/**
 * The API server side: the credential a ticket was exchanged for (a bearer token, or a
 * client certificate and its key in one PEM secret), the connection's CA, and an undici
 * Agent per distinct (CA, client certificate) — kept few and reused.
 */
export type UpstreamCredential =
  | { readonly kind: 'bearer'; readonly token: string }
  | { readonly kind: 'certificate'; readonly cert: string; readonly key: string };

const PEM_CERT = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const PEM_KEY = /-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----[\s\S]+?-----END \1-----/;
const TOKEN = /^[\x21-\x7e]{1,16384}$/;

/** Read a released credential. Messages never carry it. */
export function parseCredential(text: string): UpstreamCredential {
  if (text.includes('-----BEGIN')) {
    const certs = text.match(PEM_CERT);
    const key = PEM_KEY.exec(text);
    if (certs === null || key === null || key[1] === 'ENCRYPTED PRIVATE KEY') {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_MISCONFIGURED',
        'the kubernetes credential holds PEM that is not a certificate with an unencrypted private key',
      );
    }
    return { kind: 'certificate', cert: certs.join('\n'), key: key[0] };
  }
  const token = text.trim();
  if (!TOKEN.test(token)) {
    throw new CoatcheckError(
      'CC_ERR_GATEWAY_MISCONFIGURED',
      'the kubernetes credential is neither a bearer token nor a PEM certificate and key',
    );
  }
  return { kind: 'bearer', token };
}

/** Most upstream agents kept (one per CA and client certificate); the oldest is closed beyond. */
const MAX_AGENTS = 32;

export interface UpstreamPool {
  agent(connection: ConnectionView, credential: UpstreamCredential): Agent;
  /** TLS options for the WebSocket client (exec and attach upgrades). */
  tls(connection: ConnectionView, credential: UpstreamCredential): UpstreamTls;
  /**
   * For a connection with `via`: opens the WebSocket's connection through its relay, TLS to
   * the API server on top (verified, with the client certificate if any). Undefined: the
   * WebSocket client dials directly.
   */
  connect(
    connection: ConnectionView,
    credential: UpstreamCredential,
    url: URL,
    timeoutMs: number,
  ): (() => Promise<Duplex>) | undefined;
  close(): Promise<void>;
}

export function caOf(connection: ConnectionView): string[] | undefined {
  const ca = connection.rules.ca;
  return typeof ca === 'string' ? [...rootCertificates, ca] : undefined;
}

export function createUpstreamPool(options: { timeoutMs: number; dial?: UpstreamDialer }): UpstreamPool {
  const agents = new Map<string, Agent>();
  const tlsOf = (connection: ConnectionView, credential: UpstreamCredential): UpstreamTls => {
    const ca = caOf(connection);
    return {
      ...(ca === undefined ? {} : { ca }),
      ...(credential.kind === 'certificate' ? { cert: credential.cert, key: credential.key } : {}),
    };
  };
  const dialer = (connection: ConnectionView): UpstreamDialer => {
    if (options.dial === undefined) {
      throw new CoatcheckError(
        'CC_ERR_RELAY_UNAVAILABLE',
        `connection ${connection.name} goes through relay ${connection.via}, which this front-end cannot use`,
        { details: { relay: connection.via } },
      );
    }
    return options.dial;
  };
  return {
    tls: tlsOf,
    connect(connection, credential, url, timeoutMs) {
      const via = connection.via;
      if (via === null) return undefined;
      const dial = dialer(connection);
      const tls = tlsOf(connection, credential);
      const host = url.hostname.replace(/^\[|\]$/g, '');
      const https = url.protocol === 'https:' || url.protocol === 'wss:';
      const port = Number(url.port || (https ? 443 : 80));
      const target = { host, port, via, timeoutMs };
      return () =>
        https
          ? dialTls(dial, target, {
              ...(tls.ca === undefined ? {} : { ca: [...tls.ca] }),
              ...(tls.cert === undefined ? {} : { cert: tls.cert }),
              ...(tls.key === undefined ? {} : { key: tls.key }),
            })
          : dial(target);
    },
    agent(connection, credential) {
      const tls = tlsOf(connection, credential);
      const id = createHash('sha256')
        .update(connection.via ?? '')
        .update('\0')
        .update(String(connection.rules.ca ?? ''))
        .update('\0')
        .update(tls.cert ?? '')
        .update('\0')
        .update(tls.key ?? '')
        .digest('hex');
      let agent = agents.get(id);
      if (agent === undefined) {
        const connectTimeout = Math.min(options.timeoutMs, 10_000);
        agent = new Agent({
          // Through the connection's relay (TLS to the API server over the relay's stream), or directly.
          connect:
            connection.via === null
              ? { timeout: connectTimeout, ...tls }
              : relayConnector(dialer(connection), connection.via, {
                  timeoutMs: connectTimeout,
                  tls: {
                    ...(tls.ca === undefined ? {} : { ca: [...tls.ca] }),
                    ...(tls.cert === undefined ? {} : { cert: tls.cert }),
                    ...(tls.key === undefined ? {} : { key: tls.key }),
                  },
                }),
          headersTimeout: options.timeoutMs,
          // Watches and followed logs run as long as the client keeps them: no body timeout.
          bodyTimeout: 0,
          keepAliveTimeout: 4_000,
        });
        agents.set(id, agent);
        if (agents.size > MAX_AGENTS) {
          const [oldest, old] = agents.entries().next().value as [string, Agent];
          agents.delete(oldest);
          void old.close().catch(() => undefined);
        }
      } else {
        agents.delete(id);
        agents.set(id, agent);
      }
      return agent;
    },
    async close() {
      await Promise.all([...agents.values()].map((a) => a.close().catch(() => undefined)));
      agents.clear();
    },
  };
}
