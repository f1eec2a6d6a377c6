import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { CoatcheckError, type ErrorCode } from '../core/errors.js';

/**
 * WebSocket ends for the front-ends that carry upgrades (the HTTP forward proxy, Kubernetes
 * exec), on the `ws` library: the gateway is a WebSocket server to the agent and a WebSocket
 * client to the upstream, so every message is whole (fragments reassembled, lengths bounded,
 * UTF-8 of text checked) before the front-end inspects it, and no frame codec or HTTP client
 * of the project's own sits on this path. Extensions are never negotiated on either side:
 * compressed messages could not be inspected.
 */

/** Largest message (all fragments together) read from either side. */
export const MAX_WS_MESSAGE = 16 * 1024 * 1024;
/** Most fragments one message may arrive in (a one-byte-per-frame flood is cut off). */
const MAX_FRAGMENTS = 65_536;
/** Largest body of a refused (non-101) upstream answer that is read. */
export const MAX_REFUSED_BODY = 64 * 1024;
/** How long a refused answer's body is waited for. */
const REFUSED_BODY_MS = 2_000;
/** After the close handshake, a peer that keeps its TCP connection open is cut off after this long (the close reaches the other side then). */
const CLOSE_TIMEOUT_MS = 1_000;
/** Above this many bytes queued towards one side, the other side is paused. */
export const HIGH_WATER = 1024 * 1024;

/** Headers the WebSocket layer writes itself; any the caller passes under these names are dropped. */
const HANDSHAKE_HEADERS = new Set([
  'host',
  'connection',
  'upgrade',
  'sec-websocket-key',
  'sec-websocket-version',
  'sec-websocket-extensions',
  'sec-websocket-protocol',
  'sec-websocket-accept',
  'content-length',
  'transfer-encoding',
]);

export interface UpstreamTls {
  readonly ca?: readonly string[];
  readonly cert?: string;
  readonly key?: string;
}

export type UpstreamUpgrade =
  | {
      readonly kind: 'upgraded';
      /** Paused: call `resume()` once the listeners are on. */
      readonly socket: WebSocket;
      readonly protocol: string;
      /** The answer's headers other than the handshake's own (for inspection and relaying). */
      readonly headers: Array<[string, string]>;
    }
  | {
      readonly kind: 'refused';
      readonly status: number;
      readonly headers: Array<[string, string]>;
      /** At most MAX_REFUSED_BODY bytes of the answer's body. */
      readonly body: Buffer;
    };

/** The upstream accepted the upgrade in a way the gateway did not offer (a subprotocol, an extension, a bad accept key). */
export class UpstreamHandshakeError extends Error {
  override readonly name = 'UpstreamHandshakeError';
}

function pairs(raw: readonly string[]): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (let i = 0; i + 1 < raw.length; i += 2) out.push([raw[i]!, raw[i + 1]!]);
  return out;
}

function withoutHandshake(headers: Array<[string, string]>): Array<[string, string]> {
  return headers.filter(([name]) => !HANDSHAKE_HEADERS.has(name.toLowerCase()));
}

/** Flat [name, value, ...] pairs as request headers, repeated names kept. */
function requestHeaders(flat: readonly string[]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of withoutHandshake(pairs(flat))) {
    const key = name.toLowerCase();
    const had = out[key];
    out[key] = had === undefined ? value : [...(Array.isArray(had) ? had : [had]), value];
  }
  return out;
}

/**
 * Open the WebSocket to the upstream with the caller's (already exchanged and injected)
 * headers and the offered subprotocols. Resolves once the upstream has answered: upgraded
 * (the socket paused, so nothing is emitted before the caller listens) or refused (status,
 * headers and a bounded body). Network failures reject with the socket's error (its `code`
 * kept, for the caller's mapping); a handshake the gateway did not offer rejects with
 * UpstreamHandshakeError.
 */
export function openUpstreamWebSocket(input: {
  readonly url: URL;
  readonly headers: readonly string[];
  readonly protocols: readonly string[];
  readonly tls?: UpstreamTls;
  /**
   * Open the connection (already through TLS for wss:) another way than directly, e.g.
   * through a relay; `tls` is then the caller's to apply.
   */
  readonly connect?: () => Promise<Duplex>;
  readonly timeoutMs: number;
  readonly signal: AbortSignal;
  /** Where a refusal's cause in the ws library's words goes (the server log, scrubbed); never to the client. */
  readonly log?: Pick<Logger, 'warn'>;
}): Promise<UpstreamUpgrade> {
  return new Promise((resolve, reject) => {
    let settled = false;
    let answered = false;
    const settle = (fn: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      input.signal.removeEventListener('abort', onAbort);
      fn();
    };
    const fail = (error: Error) =>
      settle(() => {
        socket.terminate();
        reject(error);
      });
    const url = new URL(input.url);
    if (url.protocol === 'http:') url.protocol = 'ws:';
    else if (url.protocol === 'https:') url.protocol = 'wss:';
    let socket: WebSocket;
    try {
      socket = new WebSocket(url, [...input.protocols], {
        headers: requestHeaders(input.headers),
        perMessageDeflate: false,
        followRedirects: false,
        autoPong: false,
        maxPayload: MAX_WS_MESSAGE,
        maxFragments: MAX_FRAGMENTS,
        closeTimeout: CLOSE_TIMEOUT_MS,
        rejectUnauthorized: true,
        ...(input.tls?.ca === undefined ? {} : { ca: [...input.tls.ca] }),
        ...(input.tls?.cert === undefined ? {} : { cert: input.tls.cert }),
        ...(input.tls?.key === undefined ? {} : { key: input.tls.key }),
        ...(input.connect === undefined
          ? {}
          : {
              // Node's HTTP client takes a socket created later through the callback.
              createConnection: (_options: unknown, done: (error: Error | null, socket?: Duplex) => void) => {
                input.connect!().then(
                  (socket) => done(null, socket),
                  (error: Error) => done(error),
                );
                return undefined;
              },
            }),
      } as ConstructorParameters<typeof WebSocket>[2]);
    } catch (error) {
      // An offered subprotocol that is not a token, or a URL ws cannot open. The library's
      // message may quote the request as sent upstream (tickets already exchanged): it goes
      // to the server log (scrubbed there), never into the client's refusal.
      input.log?.warn(
        { errName: (error as Error)?.name, reason: String((error as Error)?.message ?? '').slice(0, 200) },
        'websocket: the upgrade could not be sent upstream as offered',
      );
      reject(
        new CoatcheckError(
          'CC_ERR_HTTP_BAD_REQUEST',
          'the WebSocket request cannot be sent upstream as offered',
        ),
      );
      return;
    }
    const timer = setTimeout(
      () =>
        fail(
          Object.assign(new Error('the upstream did not answer the upgrade in time'), {
            code: 'UND_ERR_HEADERS_TIMEOUT',
          }),
        ),
      input.timeoutMs,
    );
    const onAbort = () => fail(Object.assign(new Error('aborted'), { name: 'AbortError' }));
    input.signal.addEventListener('abort', onAbort, { once: true });
    if (input.signal.aborted) onAbort();
    let answerHeaders: Array<[string, string]> = [];
    socket.on('upgrade', (res: IncomingMessage) => {
      answered = true;
      answerHeaders = pairs(res.rawHeaders);
    });
    socket.once('open', () =>
      settle(() => {
        socket.pause();
        resolve({
          kind: 'upgraded',
          socket,
          protocol: socket.protocol,
          headers: withoutHandshake(answerHeaders),
        });
      }),
    );
    socket.on('unexpected-response', (req, res: IncomingMessage) => {
      answered = true;
      const headers = pairs(res.rawHeaders);
      const parts: Buffer[] = [];
      let size = 0;
      const done = () => {
        clearTimeout(bodyTimer);
        res.removeAllListeners('data');
        req.destroy();
        settle(() => {
          socket.terminate();
          resolve({ kind: 'refused', status: res.statusCode ?? 502, headers, body: Buffer.concat(parts) });
        });
      };
      const bodyTimer = setTimeout(done, REFUSED_BODY_MS);
      res.on('data', (chunk: Buffer) => {
        const room = MAX_REFUSED_BODY - size;
        parts.push(chunk.subarray(0, room));
        size += Math.min(room, chunk.length);
        if (size >= MAX_REFUSED_BODY) done();
      });
      res.on('end', done);
      res.on('error', done);
    });
    socket.on('error', (error: Error) => {
      // After the answer's head, an error before 'open' is the handshake ws refused.
      if (answered && !settled) fail(new UpstreamHandshakeError(error.message));
      else fail(error);
    });
  });
}

/**
 * The agent's side of the handshake, checked before anything goes upstream (so a request
 * the WebSocket server would refuse never releases a credential). Throws what to answer.
 */
export function checkClientHandshake(
  req: IncomingMessage,
  refusal: ErrorCode = 'CC_ERR_HTTP_BAD_REQUEST',
): void {
  const key = req.headers['sec-websocket-key'];
  if (req.method !== 'GET') {
    throw new CoatcheckError(refusal, 'coatcheck: a WebSocket upgrade must be a GET request');
  }
  if (typeof key !== 'string' || !/^[A-Za-z0-9+/]{22}==$/.test(key)) {
    throw new CoatcheckError(refusal, 'coatcheck: the WebSocket upgrade has no valid Sec-WebSocket-Key');
  }
  if (req.headers['sec-websocket-version'] !== '13') {
    throw new CoatcheckError(refusal, 'coatcheck: only WebSocket version 13 is carried');
  }
}

/** The subprotocols a client offered, in its order (no header: none). */
export function offeredSubprotocols(header: string | string[] | undefined): string[] {
  return (Array.isArray(header) ? header.join(',') : (header ?? ''))
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
}

/**
 * Complete the agent's handshake: 101 with the subprotocol the upstream chose and the
 * upstream's (inspected) headers. The socket comes back paused: call `resume()` once the
 * listeners are on.
 */
export function acceptClientWebSocket(
  req: IncomingMessage,
  socket: Duplex,
  head: Buffer,
  answer: {
    readonly protocol: string;
    readonly headers: ReadonlyArray<readonly [string, string]>;
    /** The code a handshake the WebSocket server refuses is reported with. */
    readonly refusal?: ErrorCode;
  },
): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const server = new WebSocketServer({
      noServer: true,
      perMessageDeflate: false,
      clientTracking: false,
      autoPong: false,
      maxPayload: MAX_WS_MESSAGE,
      closeTimeout: CLOSE_TIMEOUT_MS,
      // The upstream chose; the agent is told the same (ws only calls this when one was offered).
      handleProtocols: () => (answer.protocol === '' ? false : answer.protocol),
    } as ConstructorParameters<typeof WebSocketServer>[0]);
    server.on('headers', (lines: string[]) => {
      for (const [name, value] of answer.headers) {
        if (HANDSHAKE_HEADERS.has(name.toLowerCase())) continue;
        // Header values come from the upstream: no line breaks into the agent's response head.
        if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) continue;
        lines.push(`${name}: ${value}`);
      }
    });
    server.on('wsClientError', (error: Error) => {
      socket.destroy();
      reject(
        new CoatcheckError('CC_ERR_HTTP_BAD_REQUEST', `the WebSocket upgrade was refused: ${error.message}`),
      );
    });
    try {
      server.handleUpgrade(req, socket, head, (ws) => {
        ws.pause();
        resolve(ws);
      });
    } catch (error) {
      reject(error);
    }
  });
}

/** Close codes that may be sent in a close frame (RFC 6455 §7.4). */
function sendable(code: number): boolean {
  return (
    (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) ||
    (code >= 3000 && code <= 4999)
  );
}

/**
 * Pass a close on: the code when it may be sent, the reason only when it fits the frame
 * (a cut one could be invalid UTF-8); no code (1005) or an abnormal end (1006) end the
 * other side the same way.
 */
export function closeLike(target: WebSocket, code: number, reason: Buffer): void {
  if (target.readyState === WebSocket.CLOSED) return;
  if (code === 1006 || code === 1015) {
    target.terminate();
    return;
  }
  if (!sendable(code)) {
    target.close();
    return;
  }
  target.close(code, reason.length <= 123 ? reason : undefined);
}

/**
 * Send one message; resolves at once while the target holds at most HIGH_WATER bytes not yet
 * written, else when this message is written (so a slow reader slows the side feeding it).
 */
export function sendMessage(target: WebSocket, data: Buffer, binary: boolean): Promise<void> {
  return new Promise((resolve) => {
    if (target.readyState !== WebSocket.OPEN) {
      resolve();
      return;
    }
    target.send(data, { binary }, () => resolve());
    if (target.bufferedAmount <= HIGH_WATER) resolve();
  });
}

/**
 * Work on one side's messages strictly in order, one at a time, with the source paused
 * while work is pending. A failure stops the queue and is reported once.
 */
export class OrderedRelay {
  #queue: Promise<void> = Promise.resolve();
  #pending = 0;
  #failed = false;
  readonly #source: WebSocket;
  readonly #onFailure: (error: unknown) => void;

  constructor(source: WebSocket, onFailure: (error: unknown) => void) {
    this.#source = source;
    this.#onFailure = onFailure;
  }

  /** Queue `work`; the source stays paused until it and everything before it are done. */
  run(work: () => Promise<void> | void): void {
    this.#pending += 1;
    this.#source.pause();
    this.#queue = this.#queue
      .then(async () => {
        if (!this.#failed) await work();
      })
      .catch((error: unknown) => {
        if (this.#failed) return;
        this.#failed = true;
        this.#onFailure(error);
      })
      .finally(() => {
        this.#pending -= 1;
        if (this.#pending === 0 && !this.#failed && this.#source.readyState === WebSocket.OPEN)
          this.#source.resume();
      });
  }

  /** Everything queued so far is done (or failed). */
  idle(): Promise<void> {
    return this.#queue;
  }
}
