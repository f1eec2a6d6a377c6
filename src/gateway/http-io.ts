import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Writable } from 'node:stream';
import { createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import { CoatcheckError, type ErrorCode } from '../core/errors.js';

/**
 * Request and response plumbing shared by the HTTP-based front-ends (reverse and forward
 * proxy, LLM guard): bounded body reading, backpressure, content decoding, and one
 * mapping of upstream failures to stable codes.
 */

/**
 * The abort of one upstream exchange: the client went away (its response closed before it
 * finished), or the session was ended (a revocation). Handed to undici as the request's
 * `signal`, which may be an EventEmitter: an AbortController linked to the session's signal
 * costs ~10 µs of CPU a request (EventTarget listeners, undici's own on top), this a
 * fraction of one. `release` once the exchange is over.
 */
export class UpstreamAbort extends EventEmitter {
  aborted = false;
  reason: unknown = undefined;
  readonly #res: ServerResponse;
  readonly #offTerminated: () => void;

  constructor(
    session: { onTerminated(listener: (code: ErrorCode) => void): () => void },
    res: ServerResponse,
  ) {
    super();
    this.#res = res;
    res.once('close', this.#onClose);
    // Gone already (while the request was prepared): 'close' will not come again.
    if (res.destroyed) this.#onClose();
    this.#offTerminated = session.onTerminated((code) => this.abort(code));
  }

  #onClose = (): void => {
    if (!this.#res.writableFinished) this.abort();
  };

  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.emit('abort');
  }

  release(): void {
    this.#res.off('close', this.#onClose);
    this.#offTerminated();
  }
}

const TLS_CERT_ERRORS = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REVOKED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH',
]);

export function upstreamFailure(
  error: unknown,
  terminatedBy: ErrorCode | null,
  forward = false,
): CoatcheckError {
  if (terminatedBy !== null) {
    return new CoatcheckError(
      terminatedBy,
      'the session was ended: a ticket, agent or secret it used was revoked',
    );
  }
  if (error instanceof CoatcheckError) return error;
  const code = (error as { code?: string } | null)?.code ?? '';
  const name = (error as { name?: string } | null)?.name ?? '';
  if (
    code === 'UND_ERR_CONNECT_TIMEOUT' ||
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT'
  ) {
    return new CoatcheckError('CC_ERR_GATEWAY_UPSTREAM_TIMEOUT', 'the upstream did not answer in time', {
      details: { cause: code },
    });
  }
  if (forward && TLS_CERT_ERRORS.has(code)) {
    return new CoatcheckError(
      'CC_ERR_PROXY_UPSTREAM_CERTIFICATE',
      'the upstream presented a TLS certificate the gateway does not trust; nothing was sent to it',
      { details: { cause: code } },
    );
  }
  if (name === 'AbortError' || code === 'UND_ERR_ABORTED') {
    return new CoatcheckError('CC_ERR_GATEWAY_UPSTREAM_UNREACHABLE', 'the upstream request was aborted');
  }
  return new CoatcheckError(
    'CC_ERR_GATEWAY_UPSTREAM_UNREACHABLE',
    'the upstream could not be reached or reset the connection',
    {
      details: { cause: /^[A-Z_]{1,40}$/.test(code) ? code : 'error' },
    },
  );
}

/** Bytes of one request's body held in memory, counted against the shared budget until released. */
export interface BodyReservation {
  /** Count `bytes` more; throws (and counts nothing) when the agent's or the global budget would be exceeded. */
  take(bytes: number): void;
  /** Give every byte back (idempotent). */
  release(): void;
}

/**
 * The in-flight body budget shared by the HTTP front-ends of one process: request bodies
 * buffered at once, in total and per agent. A request that would exceed either is refused
 * before its body is buffered (503 `CC_ERR_HTTP_BODY_BUDGET`, 429
 * `CC_ERR_HTTP_AGENT_BODY_BUDGET`).
 */
export interface BodyBudget {
  readonly globalLimit: number;
  readonly agentLimit: number;
  /**
   * A reservation for one request of `agent` (a principal ref), or of nobody known yet
   * (`null`: a body read before authentication counts against the global budget only).
   */
  open(agent: string | null): BodyReservation;
  /** Bytes held now, in total or for one agent. */
  inFlight(agent?: string): number;
}

export function createBodyBudget(options: {
  globalLimit: number;
  agentLimit: number;
  onChange?: (total: number) => void;
  onRefuse?: (scope: 'global' | 'agent') => void;
}): BodyBudget {
  let total = 0;
  const perAgent = new Map<string, number>();
  const change = (agent: string | null, delta: number) => {
    total += delta;
    options.onChange?.(total);
    if (agent === null) return;
    const next = (perAgent.get(agent) ?? 0) + delta;
    if (next <= 0) perAgent.delete(agent);
    else perAgent.set(agent, next);
  };
  return {
    globalLimit: options.globalLimit,
    agentLimit: options.agentLimit,
    inFlight: (agent) => (agent === undefined ? total : (perAgent.get(agent) ?? 0)),
    open(agent) {
      let held = 0;
      let released = false;
      return {
        take(bytes) {
          if (released || bytes <= 0) return;
          if (agent !== null && (perAgent.get(agent) ?? 0) + bytes > options.agentLimit) {
            options.onRefuse?.('agent');
            throw new CoatcheckError(
              'CC_ERR_HTTP_AGENT_BODY_BUDGET',
              `${agent} already has request bodies in flight; the per-agent limit is ${options.agentLimit} bytes`,
              { details: { limit: options.agentLimit } },
            );
          }
          if (total + bytes > options.globalLimit) {
            options.onRefuse?.('global');
            throw new CoatcheckError(
              'CC_ERR_HTTP_BODY_BUDGET',
              `the gateway holds its limit of ${options.globalLimit} bytes of request bodies in flight; retry later`,
              { details: { limit: options.globalLimit } },
            );
          }
          held += bytes;
          change(agent, bytes);
        },
        release() {
          if (released) return;
          released = true;
          if (held > 0) change(agent, -held);
          held = 0;
        },
      };
    },
  };
}

/**
 * Read the request body, refusing more than `limit` bytes before buffering them, and
 * counting what is buffered against `reservation` (the in-flight budget; a declared length
 * is counted up front). On refusal the rest of the body is drained unread (the connection
 * is closed after the error response, since it cannot be reused).
 */
export function readBody(
  req: IncomingMessage,
  limit: number,
  reservation?: BodyReservation,
): Promise<Buffer | null> {
  // The body is read after the request was checked (awaits): a client gone by then has
  // already had its 'error' and 'close', and neither 'end' nor 'error' would come again.
  if (req.destroyed) {
    return Promise.reject(
      new CoatcheckError('CC_ERR_HTTP_BAD_REQUEST', 'the client went away before its request body was read'),
    );
  }
  const declared = req.headers['content-length'];
  const framed = declared !== undefined || req.headers['transfer-encoding'] !== undefined;
  // HTTP/1 with neither header has no body (RFC 9112, 6.3), and the parser has seen its end:
  // nothing to wait for (the server dumps the empty stream when the response ends).
  if (!framed && req.httpVersionMajor === 1 && req.complete) return Promise.resolve(null);
  const tooLarge = () => new CoatcheckError('CC_ERR_BODY_TOO_LARGE', `request body exceeds ${limit} bytes`);
  if (declared !== undefined && Number(declared) > limit) {
    req.resume();
    return Promise.reject(tooLarge());
  }
  // A declared length is reserved whole before a byte is read; an unframed (chunked) body chunk by chunk.
  const upFront = declared !== undefined && /^[0-9]{1,15}$/.test(declared) ? Number(declared) : null;
  if (reservation !== undefined && upFront !== null) {
    try {
      reservation.take(upFront);
    } catch (error) {
      req.resume();
      return Promise.reject(error);
    }
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        chunks.length = 0;
        req.resume();
        reject(tooLarge());
        return;
      }
      if (reservation !== undefined && (upFront === null || size > upFront)) {
        try {
          reservation.take(upFront === null ? chunk.length : Math.min(chunk.length, size - upFront));
        } catch (error) {
          cleanup();
          chunks.length = 0;
          req.resume();
          reject(error);
          return;
        }
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      if (size === 0) resolve(framed ? Buffer.alloc(0) : null);
      else resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onError = (error: Error) => {
      cleanup();
      reject(
        new CoatcheckError('CC_ERR_HTTP_BAD_REQUEST', 'the request body could not be read', { cause: error }),
      );
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

/**
 * Wait until `sink` (a response, an SSH channel) can take more, or is gone; leaves no
 * listener behind.
 */
export function drained(sink: Writable): Promise<void> {
  // A sink whose connection has closed never drains and never closes again (a write to it
  // just returns false): waiting for either would hold the exchange, and the upstream
  // answer it reads from, forever. The caller sees `destroyed` and stops.
  if (sink.destroyed || sink.closed || sink.writableFinished) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      sink.off('drain', done);
      sink.off('close', done);
      sink.off('finish', done);
      resolve();
    };
    sink.on('drain', done);
    sink.on('close', done);
    sink.on('finish', done);
  });
}

export function decoderFor(encoding: string | undefined): NodeJS.ReadWriteStream | null | 'unsupported' {
  const value = (encoding ?? '').trim().toLowerCase();
  if (value === '' || value === 'identity') return null;
  if (value === 'gzip' || value === 'x-gzip') return createGunzip();
  if (value === 'deflate') return createInflate();
  if (value === 'br') return createBrotliDecompress();
  return 'unsupported';
}

/** Most codings stacked on one response body (`gzip, br`). */
const MAX_CODINGS = 3;

/**
 * The decoders that turn a response body as it arrives into what it means, in order:
 * the transfer codings other than `chunked` (undici leaves `Transfer-Encoding: gzip`
 * encoded), then the content codings, each list undone from the last applied.
 * `'unsupported'` for a coding the gateway cannot decode (the body must be refused, not
 * passed: its bytes could hold a secret no scanner sees), or more than `MAX_CODINGS`.
 */
export function responseDecoders(
  headers: Record<string, string | string[] | undefined>,
): NodeJS.ReadWriteStream[] | 'unsupported' {
  const list = (value: string | string[] | undefined): string[] =>
    (Array.isArray(value) ? value.join(',') : (value ?? ''))
      .split(',')
      .map((v) => v.trim().toLowerCase())
      .filter((v) => v !== '' && v !== 'identity');
  const transfer = list(headers['transfer-encoding']).filter((v) => v !== 'chunked');
  const content = list(headers['content-encoding']);
  const codings = [...transfer.reverse(), ...content.reverse()];
  if (codings.length > MAX_CODINGS) return 'unsupported';
  const decoders: NodeJS.ReadWriteStream[] = [];
  for (const coding of codings) {
    const decoder = decoderFor(coding);
    if (decoder === 'unsupported' || decoder === null) return 'unsupported';
    decoders.push(decoder);
  }
  return decoders;
}
