import {
  constants as h2,
  performServerHandshake,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import { request as httpsRequest } from 'node:https';
import { isIP, connect as netConnect, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { CoatcheckError } from '../core/errors.js';
import { assertRelayKey } from '../core/ticket-format.js';
import {
  MAX_REFUSAL_BYTES,
  parseAuthority,
  RELAY_ERROR_HEADER,
  RELAY_PATH,
  RELAY_REASON_HEADER,
  RELAY_UPGRADE,
  relaySettings,
  SESSION_WINDOW,
} from './protocol.js';

export interface RelayRunOptions {
  /** `https://HOST:PORT` of the gateway's relay listener. */
  readonly gateway: string;
  readonly key: string;
  /** The gateway's CA (PEM, `coatcheck ca export`): the only CA the relay trusts. */
  readonly ca: string;
  /**
   * Targets the relay may open, `HOST:PORT`, `HOST:*` or `*.DOMAIN:PORT`; empty: any the
   * gateway asks for.
   */
  readonly allow: readonly string[];
  readonly log: Logger;
  /** Most streams the gateway may open at once on this relay's session. */
  readonly maxStreams?: number;
  /** TCP connect timeout towards a target (ms). */
  readonly connectTimeoutMs?: number;
  /** Backoff bounds between reconnects (ms). */
  readonly backoff?: { readonly minMs: number; readonly maxMs: number };
}

export interface RunningRelay {
  /** Resolves when the relay stops: after `stop()`, or when the gateway refuses its key for good. */
  readonly done: Promise<{ readonly code: string | null }>;
  stop(): Promise<void>;
}

/** Refusals that a retry cannot cure: the relay stops. */
const FATAL = new Set(['CC_ERR_RELAY_UNKNOWN', 'CC_ERR_RELAY_KEY_MALFORMED', 'CC_ERR_RELAY_REVOKED']);

export function allowed(patterns: readonly string[], host: string, port: number): boolean {
  if (patterns.length === 0) return true;
  const h = host.toLowerCase();
  return patterns.some((pattern) => {
    const i = pattern.lastIndexOf(':');
    const ph = pattern
      .slice(0, i)
      .replace(/^\[|\]$/g, '')
      .toLowerCase();
    const pp = pattern.slice(i + 1);
    if (pp !== '*' && Number(pp) !== port) return false;
    if (ph.startsWith('*.')) return isIP(h) === 0 && h.endsWith(ph.slice(1));
    return ph === h;
  });
}

/** Check `--allow` patterns at start. */
export function checkAllowPatterns(patterns: readonly string[]): void {
  for (const pattern of patterns) {
    if (!/^(\*\.)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5}|\*)$/.test(pattern) || pattern.length > 300)
      throw new CoatcheckError(
        'CC_ERR_INVALID_ARGUMENT',
        `--allow ${pattern.slice(0, 64)}: expected HOST:PORT, HOST:* or *.DOMAIN:PORT`,
        {
          details: { field: '--allow' },
        },
      );
  }
}

/**
 * `coatcheck relay run` (ADR 0025): dial out to the gateway, authenticate with the relay
 * key, then serve the gateway's CONNECT streams over HTTP/2 on that one connection, each
 * to the `host:port` it names (and only within `--allow`). Reconnects with exponential
 * backoff and jitter; stops for good when the gateway says the key is unknown or revoked.
 * Logs name targets and sessions, never the bytes carried.
 */
export function runRelay(options: RelayRunOptions): RunningRelay {
  assertRelayKey(options.key);
  checkAllowPatterns(options.allow);
  const gateway = new URL(options.gateway);
  if (gateway.protocol !== 'https:')
    throw new CoatcheckError(
      'CC_ERR_INVALID_ARGUMENT',
      '--gateway must be an https:// URL (the relay listener)',
      {
        details: { field: '--gateway' },
      },
    );
  const log = options.log;
  const maxStreams = options.maxStreams ?? 1000;
  const connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
  const backoff = options.backoff ?? { minMs: 500, maxMs: 30_000 };
  let stopped = false;
  let current: { destroy(): void } | null = null;
  let wake: (() => void) | null = null;
  const targets = new Set<Socket>();

  const serveStream = (stream: ServerHttp2Stream, headers: Record<string, unknown>) => {
    stream.on('error', () => undefined);
    const refuseStream = (status: number, code: string, reason: string) => {
      if (stream.destroyed || stream.closed) return;
      stream.respond(
        { [h2.HTTP2_HEADER_STATUS]: status, [RELAY_ERROR_HEADER]: code, [RELAY_REASON_HEADER]: reason },
        { endStream: true },
      );
    };
    if (headers[h2.HTTP2_HEADER_METHOD] !== 'CONNECT') {
      refuseStream(405, 'CC_ERR_RELAY_HANDSHAKE', 'only CONNECT');
      return;
    }
    const target = parseAuthority(String(headers[h2.HTTP2_HEADER_AUTHORITY] ?? ''));
    if (target === null) {
      refuseStream(400, 'CC_ERR_RELAY_HANDSHAKE', 'bad authority');
      return;
    }
    const where = `${target.host}:${target.port}`;
    if (!allowed(options.allow, target.host, target.port)) {
      log.warn({ target: where }, 'relay: target outside --allow refused');
      refuseStream(502, 'CC_ERR_RELAY_TARGET_REFUSED', 'not allowed');
      return;
    }
    const socket = netConnect({ host: target.host, port: target.port });
    targets.add(socket);
    socket.once('close', () => targets.delete(socket));
    const timer = setTimeout(() => socket.destroy(new Error('ETIMEDOUT')), connectTimeoutMs);
    socket.on('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (!stream.headersSent) {
        log.info({ target: where, reason: error.code ?? 'error' }, 'relay: target not reachable');
        refuseStream(502, 'CC_ERR_RELAY_TARGET_REFUSED', String(error.code ?? 'unreachable').slice(0, 32));
      } else stream.close(h2.NGHTTP2_CONNECT_ERROR);
    });
    socket.once('connect', () => {
      clearTimeout(timer);
      if (stream.destroyed || stream.closed) {
        socket.destroy();
        return;
      }
      socket.setNoDelay(true);
      stream.respond({ [h2.HTTP2_HEADER_STATUS]: 200 });
      socket.pipe(stream);
      stream.pipe(socket);
      stream.once('close', () => socket.destroy());
      socket.once('close', () => {
        if (!stream.destroyed) stream.end();
      });
    });
  };

  /** One session: resolves when it ends, with the refusal code when the gateway refused. */
  const connectOnce = () =>
    new Promise<{ code: string | null; upgraded: boolean }>((resolve) => {
      const req = httpsRequest({
        host: gateway.hostname.replace(/^\[|\]$/g, ''),
        port: gateway.port === '' ? 443 : Number(gateway.port),
        method: 'GET',
        path: RELAY_PATH,
        ca: options.ca,
        rejectUnauthorized: true,
        servername: isIP(gateway.hostname.replace(/^\[|\]$/g, '')) === 0 ? gateway.hostname : undefined,
        agent: false,
        timeout: 15_000,
        headers: {
          authorization: `Bearer ${options.key}`,
          connection: 'Upgrade',
          upgrade: RELAY_UPGRADE,
        },
      });
      current = req;
      let settled = false;
      const settle = (value: { code: string | null; upgraded: boolean }) => {
        if (settled) return;
        settled = true;
        resolve(value);
      };
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (error: NodeJS.ErrnoException) => {
        log.warn(
          { gateway: gateway.host, reason: error.code ?? error.message.slice(0, 80) },
          'relay: cannot reach the gateway',
        );
        settle({ code: null, upgraded: false });
      });
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size <= MAX_REFUSAL_BYTES) chunks.push(chunk);
          else res.destroy();
        });
        res.on('close', () => {
          let code: string | null = null;
          try {
            const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { code?: unknown };
            code = typeof body.code === 'string' ? body.code.slice(0, 64) : null;
          } catch {
            code = null;
          }
          log.error({ status: res.statusCode, code }, 'relay: the gateway refused the session');
          settle({ code: code ?? `HTTP ${res.statusCode}`, upgraded: false });
        });
      });
      req.on('upgrade', (res, socket, head) => {
        if (String(res.headers.upgrade ?? '').toLowerCase() !== RELAY_UPGRADE) {
          socket.destroy();
          settle({ code: 'CC_ERR_RELAY_HANDSHAKE', upgraded: false });
          return;
        }
        socket.setTimeout(0);
        if (head.length > 0) socket.unshift(head);
        const session: ServerHttp2Session = performServerHandshake(socket, {
          settings: relaySettings(maxStreams),
          maxSessionMemory: 64,
        });
        current = session;
        session.setLocalWindowSize(SESSION_WINDOW);
        log.info({ gateway: gateway.host }, 'relay: session open');
        session.on('stream', serveStream);
        session.on('error', (error) =>
          log.warn({ reason: (error as Error).message.slice(0, 80) }, 'relay: session error'),
        );
        // Our heartbeat: a gateway that stops answering PINGs is gone; reconnect.
        const heartbeat = setInterval(() => {
          const timer = setTimeout(() => session.destroy(), 15_000);
          try {
            session.ping((error) => {
              clearTimeout(timer);
              if (error !== null) session.destroy();
            });
          } catch {
            clearTimeout(timer);
            session.destroy();
          }
        }, 15_000);
        session.once('close', () => {
          clearInterval(heartbeat);
          log.info({ gateway: gateway.host }, 'relay: session closed');
          settle({ code: null, upgraded: true });
        });
        socket.once('close', () => session.destroy());
      });
      req.end();
    });

  const done = (async () => {
    let delay = backoff.minMs;
    while (!stopped) {
      const result = await connectOnce();
      current = null;
      if (stopped) break;
      if (result.code !== null && FATAL.has(result.code)) return { code: result.code };
      if (result.upgraded) delay = backoff.minMs;
      const wait = Math.round(delay * (0.5 + Math.random() / 2));
      log.info({ retryInMs: wait }, 'relay: reconnecting');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = null;
      delay = Math.min(backoff.maxMs, delay * 2);
    }
    return { code: null };
  })();

  return {
    done,
    async stop() {
      stopped = true;
      const c = current as { destroy(): void } | null;
      c?.destroy();
      for (const socket of targets) socket.destroy();
      (wake as (() => void) | null)?.();
      await done;
    },
  };
}
