import { generateKeyPairSync } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { createServer, type Server } from 'node:https';
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { AuditLog } from '../audit/audit-log.js';
import { CoatcheckError, ERROR_CODES } from '../core/errors.js';
import { createCertificate } from '../core/x509.js';
import type { ProxyCa } from '../vault/proxy-ca.js';
import type { RelayHub } from './hub.js';
import { RELAY_PATH, RELAY_UPGRADE } from './protocol.js';
import type { Relays } from './relays.js';

const LEAF_LIFETIME_MS = 90 * 24 * 3600 * 1000;

export interface RelayListener {
  readonly server: Server;
  /** `https://HOST:PORT` */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** The CA relays pin (PEM) and its fingerprint. */
  readonly ca: { readonly cert: string; readonly fingerprint: string };
  close(): Promise<void>;
}

/** The relay listener's certificate: a leaf under the gateway's CA naming every name relays dial. */
function leafFor(ca: ProxyCa, names: readonly string[]): { key: string; cert: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const now = Date.now();
  const cert = createCertificate({
    subject: 'coatcheck relay listener',
    issuer: { subject: ca.subject, organization: ca.organization, key: ca.key, publicKey: ca.publicKey },
    publicKey,
    notBefore: new Date(now - 3600_000),
    notAfter: new Date(now + LEAF_LIFETIME_MS),
    ca: false,
    hosts: names,
  });
  return { key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, cert: `${cert}${ca.cert}` };
}

function refuse(socket: Duplex, error: CoatcheckError): void {
  const status = ERROR_CODES[error.code]?.status ?? 400;
  const body = JSON.stringify({ code: error.code, message: error.message });
  const reason = status === 401 ? 'Unauthorized' : 'Bad Request';
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}

function bearer(req: IncomingMessage): string | null {
  const header = req.headers.authorization;
  if (typeof header !== 'string' || header.length > 256) return null;
  const m = /^Bearer ([A-Za-z0-9_]+)$/.exec(header);
  return m === null ? null : m[1]!;
}

/**
 * The listener relays dial (ADR 0025): TLS with a certificate under the gateway's CA, one
 * HTTP/1.1 upgrade request carrying the relay key, then HTTP/2 over the same connection
 * with the gateway as the client. Anything else is refused with a JSON error.
 */
export async function startRelayListener(options: {
  readonly address: { host: string; port: number };
  readonly ca: ProxyCa;
  /** Extra names the certificate carries (config relay.serverNames). */
  readonly serverNames: readonly string[];
  readonly relays: Relays;
  readonly hub: RelayHub;
  readonly audit: AuditLog;
  readonly log: Logger;
}): Promise<RelayListener> {
  const { address, relays, hub, audit, log } = options;
  const names = new Set(['localhost', '127.0.0.1', '::1', ...options.serverNames]);
  if (address.host !== '0.0.0.0' && address.host !== '::' && address.host !== '') names.add(address.host);
  for (const name of names) {
    if (!(isIP(name) !== 0 || /^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$/.test(name)))
      throw new CoatcheckError(
        'CC_ERR_CONFIG_INVALID',
        `relay.serverNames: ${name.slice(0, 64)} is not a DNS name or IP address`,
      );
  }
  const leaf = leafFor(options.ca, [...names]);
  const server = createServer({ key: leaf.key, cert: leaf.cert, minVersion: 'TLSv1.2' }, (_req, res) => {
    const error = new CoatcheckError(
      'CC_ERR_RELAY_HANDSHAKE',
      `this listener serves only relays: upgrade ${RELAY_PATH} to ${RELAY_UPGRADE}`,
    );
    res.writeHead(426, { 'content-type': 'application/json', connection: 'close' });
    res.end(JSON.stringify({ code: error.code, message: error.message }));
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  server.maxHeadersCount = 32;
  server.on('tlsClientError', (_error, socket) => socket.destroy());
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    const source = `${req.socket.remoteAddress ?? '?'}:${req.socket.remotePort ?? 0}`;
    void (async () => {
      if (req.url !== RELAY_PATH || String(req.headers.upgrade ?? '').toLowerCase() !== RELAY_UPGRADE) {
        refuse(
          socket,
          new CoatcheckError('CC_ERR_RELAY_HANDSHAKE', `upgrade ${RELAY_PATH} to ${RELAY_UPGRADE}`),
        );
        return;
      }
      const key = bearer(req);
      if (key === null) {
        refuse(
          socket,
          new CoatcheckError(
            'CC_ERR_RELAY_UNKNOWN',
            'the relay key is missing (Authorization: Bearer ccr_…)',
          ),
        );
        return;
      }
      let relay: Awaited<ReturnType<Relays['authenticate']>>;
      try {
        relay = await relays.authenticate(key);
      } catch (error) {
        const refusal =
          error instanceof CoatcheckError
            ? error
            : new CoatcheckError('CC_ERR_RELAY_UNKNOWN', 'the relay key could not be checked');
        log.warn({ source, code: refusal.code }, 'relay refused');
        // A known relay's key, revoked: worth a record. Unknown keys only reach the log
        // (anyone can send those, as often as they like).
        if (refusal.code === 'CC_ERR_RELAY_REVOKED') {
          const id = (refusal.details as { relay?: string } | undefined)?.relay;
          await audit
            .append({
              type: 'relay.refuse',
              actor: 'gateway:relay',
              data: { source, code: refusal.code, ...(id === undefined ? {} : { relay: id }) },
            })
            .catch(() => undefined);
        }
        refuse(socket, refusal);
        return;
      }
      // HTTP/2 takes over the socket's native handle: the 101 must be fully written first
      // (a write still queued would complete into the HTTP/2 session).
      await new Promise<void>((resolve, reject) =>
        socket.write(
          `HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: ${RELAY_UPGRADE}\r\n\r\n`,
          (error) => (error ? reject(error) : resolve()),
        ),
      );
      if (head.length > 0) socket.unshift(head);
      await hub.attach(relay, socket, source);
    })().catch((error: unknown) => {
      log.error(
        { source, code: (error as { code?: string }).code ?? 'CC_ERR_INTERNAL' },
        'relay session failed to start',
      );
      socket.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as { address: string; port: number; family: string };
  const host = bound.family === 'IPv6' ? `[${bound.address}]` : bound.address;
  return {
    server,
    url: `https://${host}:${bound.port}`,
    host: bound.address,
    port: bound.port,
    ca: { cert: options.ca.cert, fingerprint: options.ca.fingerprint },
    close: () =>
      hub.close().then(
        () =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
          }),
      ),
  };
}
