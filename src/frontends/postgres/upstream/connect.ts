import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { CoatcheckError } from '../../../core/errors.js';
import { directDialer, type UpstreamDialer } from '../../../gateway/upstream-dial.js';
import { decodeBackend } from '../protocol/decode.js';
import { encodeFrontend, encodeStartup } from '../protocol/encode.js';
import { MessageFramer } from '../protocol/framer.js';
import { AUTH, type BackendMessage } from '../protocol/messages.js';
import { md5Password, ScramClient } from './scram.js';

export type SslMode = 'disable' | 'prefer' | 'require' | 'verify-full';

export interface UpstreamTarget {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly database: string;
  readonly sslMode: SslMode;
  /** PEM CA bundle for verify-full (sslrootcert); the system roots when absent. */
  readonly ca?: string;
  /** The relay the connection's upstream is reached through (`--via`); null or absent: directly. */
  readonly via?: string | null;
}

export interface Upstream {
  /** A TCP socket, a TLS socket, or a stream through a relay. */
  readonly socket: Duplex;
  /** Framer holding any bytes the server sent after ReadyForQuery. */
  readonly framer: MessageFramer;
  readonly parameters: ReadonlyArray<readonly [string, string]>;
  readonly processId: number;
  readonly secretKey: number;
  readonly tls: boolean;
}

function unreachable(message: string, cause?: unknown): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_PG_UPSTREAM_UNREACHABLE',
    message,
    cause === undefined ? undefined : { cause },
  );
}

function authFailed(message: string): CoatcheckError {
  return new CoatcheckError('CC_ERR_PG_UPSTREAM_AUTH', message);
}

/** Parse a connection URL (`postgres://USER@HOST:PORT/DB?sslmode=...&sslrootcert=...`). */
export function upstreamTarget(url: string, connection: string): UpstreamTarget {
  const u = new URL(url);
  const user = decodeURIComponent(u.username);
  if (user === '') {
    throw new CoatcheckError(
      'CC_ERR_CONFIG_INVALID',
      `connection ${connection}: the URL names no user (postgres://USER@HOST:PORT/DB)`,
      { details: { connection } },
    );
  }
  const mode = u.searchParams.get('sslmode') ?? 'prefer';
  if (!['disable', 'prefer', 'require', 'verify-full'].includes(mode)) {
    throw new CoatcheckError(
      'CC_ERR_CONFIG_INVALID',
      `connection ${connection}: sslmode must be disable, prefer, require or verify-full`,
      { details: { connection } },
    );
  }
  const rootcert = u.searchParams.get('sslrootcert');
  let ca: string | undefined;
  if (rootcert !== null) {
    try {
      ca = readFileSync(rootcert, 'utf8');
    } catch {
      throw new CoatcheckError(
        'CC_ERR_CONFIG_INVALID',
        `connection ${connection}: sslrootcert cannot be read`,
        {
          details: { connection },
        },
      );
    }
  }
  const database = decodeURIComponent(u.pathname.replace(/^\//, '')) || user;
  return {
    host: u.hostname.replace(/^\[|\]$/g, ''),
    port: u.port === '' ? 5432 : Number(u.port),
    user,
    database,
    sslMode: mode as SslMode,
    ...(ca === undefined ? {} : { ca }),
  };
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

/** Reads backend messages from a socket during login (before the relay takes over). */
class LoginReader {
  readonly framer: MessageFramer;
  readonly #socket: Duplex;
  #waiting: (() => void) | null = null;
  #error: Error | null = null;

  constructor(socket: Duplex, framer = new MessageFramer({ startup: false })) {
    this.framer = framer;
    this.#socket = socket;
    socket.on('data', this.#onData);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
  }

  #onData = (chunk: Buffer) => {
    this.framer.push(chunk);
    this.#wake();
  };
  #onError = (error: Error) => {
    this.#error ??= unreachable('the upstream connection failed during login', error);
    this.#wake();
  };
  #onClose = () => {
    this.#error ??= unreachable('the upstream closed the connection during login');
    this.#wake();
  };

  #wake(): void {
    const w = this.#waiting;
    this.#waiting = null;
    w?.();
  }

  async next(): Promise<BackendMessage> {
    for (;;) {
      const frame = this.framer.next();
      if (frame !== null) return decodeBackend(frame);
      if (this.#error !== null) throw this.#error;
      await new Promise<void>((resolve) => {
        this.#waiting = () => resolve();
      });
    }
  }

  detach(): void {
    this.#socket.off('data', this.#onData);
    this.#socket.off('error', this.#onError);
    this.#socket.off('close', this.#onClose);
  }
}

async function openSocket(target: UpstreamTarget, timeoutMs: number, dial: UpstreamDialer): Promise<Duplex> {
  const via = target.via ?? null;
  try {
    return await dial({ host: target.host, port: target.port, via, timeoutMs });
  } catch (error) {
    if (error instanceof CoatcheckError)
      throw unreachable(
        `cannot reach the upstream ${target.host}:${target.port} through relay ${via}: ${error.message} (${error.code})`,
        error,
      );
    if ((error as { code?: string }).code === 'ETIMEDOUT')
      throw unreachable(`the upstream ${target.host}:${target.port} did not answer in ${timeoutMs} ms`);
    throw unreachable(`cannot reach the upstream ${target.host}:${target.port}`, error);
  }
}

async function negotiateTls(
  socket: Duplex,
  target: UpstreamTarget,
  timeoutMs: number,
): Promise<Duplex | null> {
  socket.write(encodeStartup({ type: 'SSLRequest' }));
  const answer = await new Promise<number>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      cleanup();
      // Anything after the one-byte answer would be bytes injected before TLS: refuse.
      if (chunk.length !== 1) reject(unreachable('the upstream answered SSLRequest with unexpected bytes'));
      else resolve(chunk[0]!);
    };
    const onError = (error: Error) => {
      cleanup();
      reject(unreachable('the upstream failed during TLS negotiation', error));
    };
    const timer = setTimeout(() => onError(new Error('timeout')), timeoutMs);
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
    };
    socket.on('data', onData);
    socket.on('error', onError);
  });
  if (answer === 0x4e) {
    if (target.sslMode === 'prefer') return null;
    socket.destroy();
    throw unreachable(`the upstream does not offer TLS (sslmode=${target.sslMode})`);
  }
  if (answer !== 0x53) throw unreachable('the upstream answered SSLRequest with an unknown byte');
  const verify = target.sslMode === 'verify-full';
  return new Promise((resolve, reject) => {
    const tls = tlsConnect({
      socket,
      servername: isLoopback(target.host) || /^[0-9.:]+$/.test(target.host) ? undefined : target.host,
      host: target.host,
      rejectUnauthorized: verify,
      ...(target.ca === undefined ? {} : { ca: target.ca }),
    });
    tls.once('secureConnect', () => resolve(tls));
    tls.once('error', (error) => {
      tls.destroy();
      reject(unreachable(`TLS to the upstream failed (sslmode=${target.sslMode})`, error));
    });
  });
}

/**
 * Connect and log in to the real server with the connection's credential (SCRAM-SHA-256,
 * md5 or password; password only over TLS or loopback). Returns once the server is ready
 * for queries, with the parameters and backend key it sent.
 */
export async function connectUpstream(
  target: UpstreamTarget,
  password: Buffer,
  options: {
    timeoutMs: number;
    /** Startup parameters forwarded from the client (application_name, client_encoding, options...). */
    parameters: ReadonlyArray<readonly [string, string]>;
    /** How upstream sockets are opened (directly, or through the connection's relay). */
    dial?: UpstreamDialer;
  },
): Promise<Upstream> {
  let socket = await openSocket(target, options.timeoutMs, options.dial ?? directDialer);
  let tls = false;
  const deadline = setTimeout(() => socket.destroy(), options.timeoutMs);
  try {
    if (target.sslMode !== 'disable') {
      const secured = await negotiateTls(socket, target, options.timeoutMs);
      if (secured !== null) {
        socket = secured;
        tls = true;
      }
    }
    const reader = new LoginReader(socket);
    socket.write(
      encodeStartup({
        type: 'StartupMessage',
        major: 3,
        minor: 0,
        parameters: [['user', target.user], ['database', target.database], ...options.parameters],
      }),
    );
    let scram: ScramClient | null = null;
    const parameters: Array<readonly [string, string]> = [];
    let processId = 0;
    let secretKey = 0;
    for (;;) {
      const m = await reader.next();
      if (m.type === 'ErrorResponse') {
        const code = m.fields.find(([k]) => k === 'C')?.[1] ?? '';
        // The server's own message is not relayed: it may name the upstream user or database.
        if (code.startsWith('28'))
          throw authFailed(`the upstream refused the connection's credential (SQLSTATE ${code})`);
        throw unreachable(`the upstream refused the session (SQLSTATE ${code})`);
      }
      if (m.type === 'Authentication') {
        switch (m.code) {
          case AUTH.Ok:
            break;
          case AUTH.CleartextPassword:
            if (!tls && !isLoopback(target.host))
              throw authFailed('the upstream asked for a cleartext password without TLS; refused');
            socket.write(
              encodeFrontend({ type: 'PasswordMessage', data: Buffer.concat([password, Buffer.from([0])]) }),
            );
            break;
          case AUTH.MD5Password:
            if (m.data.length !== 4) throw authFailed('malformed md5 salt');
            socket.write(
              encodeFrontend({ type: 'PasswordMessage', data: md5Password(target.user, password, m.data) }),
            );
            break;
          case AUTH.SASL: {
            const mechanisms = m.data.toString('utf8').split('\0');
            if (!mechanisms.includes('SCRAM-SHA-256'))
              throw authFailed('the upstream offers no SASL mechanism the gateway speaks (SCRAM-SHA-256)');
            scram = new ScramClient(password);
            socket.write(encodeFrontend({ type: 'PasswordMessage', data: scram.initialResponse() }));
            break;
          }
          case AUTH.SASLContinue:
            if (scram === null) throw authFailed('unexpected SASL continuation');
            socket.write(encodeFrontend({ type: 'PasswordMessage', data: scram.continue(m.data) }));
            break;
          case AUTH.SASLFinal:
            if (scram === null) throw authFailed('unexpected SASL final message');
            scram.final(m.data);
            break;
          default:
            throw authFailed(
              `the upstream asked for authentication method ${m.code}, which the gateway does not speak`,
            );
        }
        continue;
      }
      if (m.type === 'ParameterStatus') parameters.push([m.name, m.value]);
      else if (m.type === 'BackendKeyData') {
        processId = m.processId;
        secretKey = m.secretKey;
      } else if (m.type === 'ReadyForQuery') {
        reader.detach();
        return { socket, framer: reader.framer, parameters, processId, secretKey, tls };
      }
      // NoticeResponse and NegotiateProtocolVersion during login are ignored.
    }
  } catch (error) {
    socket.destroy();
    if (error instanceof CoatcheckError) throw error;
    throw unreachable('the upstream login failed', error);
  } finally {
    clearTimeout(deadline);
  }
}

/** Forward a cancel request to the upstream backend (a fresh connection, as the protocol requires). */
export async function cancelUpstream(
  target: UpstreamTarget,
  processId: number,
  secretKey: number,
  timeoutMs: number,
  dial: UpstreamDialer = directDialer,
): Promise<void> {
  const socket = await openSocket(target, timeoutMs, dial);
  await new Promise<void>((resolve) => {
    socket.end(encodeStartup({ type: 'CancelRequest', processId, secretKey }), () => resolve());
    socket.once('error', () => resolve());
  });
  socket.destroy();
}

/**
 * Run one read-only query on a freshly logged-in upstream session, before the relay
 * starts (the gateway's own question about the server, never shown to the client).
 * Returns the rows as text; an error or a timeout fails the login.
 */
export async function queryUpstream(
  upstream: Upstream,
  sql: string,
  timeoutMs: number,
  maxRows = 10_000,
): Promise<Array<Array<string | null>>> {
  const reader = new LoginReader(upstream.socket, upstream.framer);
  const timer = setTimeout(() => upstream.socket.destroy(), timeoutMs);
  try {
    upstream.socket.write(encodeFrontend({ type: 'Query', sql }));
    const rows: Array<Array<string | null>> = [];
    let failed: string | null = null;
    for (;;) {
      const m = await reader.next();
      if (m.type === 'DataRow') {
        if (rows.length < maxRows) rows.push(m.values.map((v) => (v === null ? null : v.toString('utf8'))));
      } else if (m.type === 'ErrorResponse') failed = m.fields.find(([k]) => k === 'C')?.[1] ?? '';
      else if (m.type === 'ReadyForQuery') {
        if (failed !== null)
          throw unreachable(`the upstream refused the gateway's catalog query (SQLSTATE ${failed})`);
        return rows;
      }
    }
  } finally {
    clearTimeout(timer);
    reader.detach();
  }
}
