import { createHash } from 'node:crypto';
import { type IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex, Readable } from 'node:stream';
import { pipeline as pipe } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ConnectionView } from '../../connections/connections.js';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import { scanHeaders } from '../../gateway/detector-inspector.js';
import { mapFailure } from '../../gateway/driver.js';
import type { Engine } from '../../gateway/engine.js';
import { fieldMatcher, maskJson } from '../../gateway/field-mask.js';
import {
  type BodyBudget,
  drained,
  readBody,
  responseDecoders,
  UpstreamAbort,
  upstreamFailure,
} from '../../gateway/http-io.js';
import type { ResponseScan } from '../../gateway/inspector.js';
import { countHttpRequest } from '../../gateway/metrics.js';
import type { ExchangePipeline, Operation, ResolvedConnection } from '../../gateway/pipeline.js';
import type { RelayDispatchers } from '../../gateway/relay-dispatchers.js';
import { GatewaySession } from '../../gateway/session.js';
import { dialTls, directDialer, type UpstreamDialer } from '../../gateway/upstream-dial.js';
import {
  acceptClientWebSocket,
  checkClientHandshake,
  offeredSubprotocols,
  openUpstreamWebSocket,
  UpstreamHandshakeError,
  type UpstreamUpgrade,
} from '../../gateway/websocket.js';
import { MAX_HEADER_TEXT, recordedHeaders, responseRecorder } from '../../recording/http-capture.js';
import { clip, clipText } from '../../recording/model.js';
import type { Placement } from '../../vault/placements.js';
import { httpPreview } from './approval-preview.js';
import { bearer, hopByHop } from './protocol/headers.js';
import { parseRouteTarget, scrubPath, upstreamPath } from './protocol/request-target.js';
import {
  assertHeaderSafe,
  bodyKind,
  bodyTickets,
  formTickets,
  headerTickets,
  pathTickets,
  placementOfHeader,
  type SecretOf,
  substituteBody,
  substituteForm,
  substituteHeader,
  substitutePath,
} from './protocol/tickets.js';
import { relayWebSocket } from './websocket-relay.js';

/** Does the connection's URL cover this forward-proxy request: same scheme, host, port, and a path within its base path? */
export function connectionCovers(
  connection: ConnectionView,
  request: { scheme: 'http:' | 'https:'; host: string; port: number; path: string },
): boolean {
  let url: URL;
  try {
    url = new URL(connection.url);
  } catch {
    return false;
  }
  const port = url.port !== '' ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
  if (url.protocol !== request.scheme || port !== request.port) return false;
  if (url.hostname.replace(/^\[|\]$/g, '').toLowerCase() !== request.host.toLowerCase()) return false;
  const base = url.pathname.replace(/\/+$/, '');
  return base === '' || request.path === base || request.path.startsWith(`${base}/`);
}

export interface HttpEngineOptions {
  readonly bodyLimit: number;
  readonly upstreamTimeoutMs: number;
  readonly maxTicketsPerRequest: number;
  readonly dispatcher: Dispatcher;
  /** CA certificates for upstream TLS opened directly (protocol upgrades); default: the system roots. */
  readonly upstreamCa?: readonly string[];
  /** Dispatchers for connections that go through a relay (`via`); absent: such connections are refused. */
  readonly relays?: RelayDispatchers;
  /** How raw upstream connections (protocol upgrades) are opened; default: directly. */
  readonly dial?: UpstreamDialer;
  /** The in-flight body budget shared by this process's HTTP front-ends (none: only `bodyLimit`). */
  readonly bodyBudget?: BodyBudget;
  /** The front-end's name in sessions, metrics and logs (default `http`; the forward proxy's is `http-proxy`). */
  readonly name?: string;
}

/** The values of one header in flat [name, value, ...] pairs. */
function headerValues(flat: readonly string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) if (flat[i]!.toLowerCase() === name) out.push(flat[i + 1]!);
  return out;
}

/** A raw connection to the origin through the dialer (directly, or through the connection's relay), TLS verified for https. */
function connectRaw(
  origin: URL,
  ca: readonly string[] | undefined,
  timeoutMs: number,
  dialer: UpstreamDialer,
  via: string | null,
): Promise<Duplex> {
  const host = origin.hostname.replace(/^\[|\]$/g, '');
  const port = Number(origin.port || (origin.protocol === 'https:' ? 443 : 80));
  const dial = { host, port, via, timeoutMs };
  if (origin.protocol !== 'https:') return dialer(dial);
  return dialTls(dialer, dial, ca === undefined ? {} : { ca: [...ca] });
}

/**
 * A forward-proxy request (plain `http://` through the proxy, or one request inside an
 * intercepted CONNECT tunnel): where it goes, already parsed by the proxy listener, and
 * the agent key it authenticated with. The rest of the request runs exactly as a
 * reverse-proxy request does.
 */
export interface ForwardRoute {
  readonly scheme: 'http:' | 'https:';
  readonly host: string;
  readonly port: number;
  readonly origin: string;
  /** Raw path (at least '/') and query of the request. */
  readonly path: string;
  readonly query: string | null;
  readonly agentKey: string | null;
  /** The http connection whose URL is on this host and port, if any: its injected headers apply. */
  readonly connection: ConnectionView | null;
}

/** Where one request goes, for either routing. */
interface Routed extends ResolvedConnection {
  readonly origin: string;
  /** Raw path below the origin or connection, and query, as the client sent them. */
  readonly path: string;
  readonly query: string | null;
  /** The upstream request target for this (possibly rewritten) path and query. */
  upstreamPath(query: string | null, path?: string): string;
}

/** One request/response pair and its session. */
export interface HttpClient {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly session: GatewaySession;
  /** Filled in as the request advances; becomes the recording's summary. */
  readonly summary: Record<string, unknown>;
  /** Set for forward-proxy requests; absent for `/c/<connection>/` requests. */
  readonly forward?: ForwardRoute;
}

const NO_BODY_STATUS = new Set([204, 304]);
/** Responses up to this declared length (not content-encoded) are inspected whole and sent in one write. */
const WHOLE_BODY_MAX = 64 * 1024;

/** The body through its decoders (none: the body itself). */
function decodedBody(body: Readable, decoders: readonly NodeJS.ReadWriteStream[]): Readable {
  if (decoders.length === 0) return body;
  return (pipe as (...streams: unknown[]) => unknown)(body, ...decoders, () => undefined) as Readable;
}

/**
 * The HTTP reverse-proxy engine: `/c/<connection>/<path>` → the connection's URL.
 * Tickets in headers, query and body are exchanged; the connection's credential headers
 * are injected; the response is scanned and any secret in it comes back as a ticket.
 */
export class HttpEngine implements Engine<HttpClient> {
  readonly name: string;
  readonly #pipeline: ExchangePipeline;
  readonly #options: HttpEngineOptions;

  constructor(pipeline: ExchangePipeline, options: HttpEngineOptions) {
    if (options.dispatcher === undefined || options.dispatcher === null) {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_MISCONFIGURED',
        'the HTTP front-end was started without an upstream dispatcher',
      );
    }
    this.#pipeline = pipeline;
    this.#options = options;
    this.name = options.name ?? 'http';
  }

  /** Bind a request to a new session. */
  client(req: IncomingMessage, res: ServerResponse, forward?: ForwardRoute): HttpClient {
    const session = this.#pipeline.openSession(new GatewaySession(this.name, this.#pipeline.services.clock));
    const summary: Record<string, unknown> = { method: req.method, httpVersion: req.httpVersion };
    if (forward !== undefined) summary.proxy = forward.scheme === 'https:' ? 'intercepted' : 'http';
    return forward === undefined ? { req, res, session, summary } : { req, res, session, summary, forward };
  }

  /** `/c/<connection>/<path>`: the connection's URL, its base path joined with the path below it. */
  async #reverseRoute(session: GatewaySession, url: string): Promise<Routed> {
    const route = parseRouteTarget(url);
    const connection = await this.#pipeline.resolveConnection(session, route.connection, ['http']);
    return {
      ...connection,
      origin: connection.url.origin,
      path: route.path || '/',
      query: route.query,
      upstreamPath: (query, path = route.path) =>
        upstreamPath(connection.url.pathname, { ...route, path, query }),
    };
  }

  /**
   * A forward-proxy request: the host the client named, through the matching connection
   * if there is one. The connection applies (its injected headers, its name as a
   * destination) only when scheme, host, port and base path all match the request: a
   * plain `http://` request to an https connection's host and port, or a path outside
   * its base path, goes as a request to a bare host, and tickets bound to the connection
   * are refused.
   */
  #forwardRoute(session: GatewaySession, forward: ForwardRoute): Routed {
    const authority = `${forward.host}:${forward.port}`;
    const bound = forward.connection !== null && connectionCovers(forward.connection, forward);
    const view: ConnectionView = (bound ? forward.connection : null) ?? {
      name: authority,
      type: 'http',
      url: forward.origin,
      credential: null,
      injectHeaders: {},
      rules: {},
      via: null,
      source: 'config',
    };
    session.connection = view.name;
    return {
      view,
      url: new URL(forward.origin),
      target: {
        ...(bound && forward.connection !== null ? { connection: forward.connection.name } : {}),
        scheme: forward.scheme === 'https:' ? 'https' : 'http',
        host: forward.host,
        port: forward.port,
      },
      origin: forward.origin,
      path: forward.path,
      query: forward.query,
      upstreamPath: (query, path = forward.path) => (query === null ? path : `${path}?${query}`),
    };
  }

  async initialize(client: HttpClient): Promise<void> {
    const { req } = client;
    if (req.method === 'CONNECT' || req.headers.upgrade !== undefined) {
      throw new CoatcheckError(
        'CC_ERR_HTTP_UNSUPPORTED',
        'CONNECT and protocol upgrades are not served by this front-end',
      );
    }
  }

  sendError(client: HttpClient, error: CoatcheckError): void {
    const { req, res } = client;
    if (res.headersSent) {
      // Mid-body: the only honest signal left is to cut the connection (the client sees a truncated message).
      res.destroy();
      return;
    }
    const body = JSON.stringify({ error: { code: error.code, message: error.message } });
    const headers: Record<string, string | number> = {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      'x-coatcheck-error': error.code,
    };
    if (error.code === 'CC_ERR_HTTP_PROXY_AUTH_REQUIRED')
      headers['proxy-authenticate'] =
        client.forward === undefined
          ? 'Bearer realm="coatcheck"'
          : 'Basic realm="coatcheck", Bearer realm="coatcheck"';
    // An unread request body would desynchronise a kept-alive connection.
    if (!req.complete && req.httpVersionMajor < 2) headers.connection = 'close';
    res.writeHead(error.status, headers);
    res.end(body);
  }

  /**
   * The checks every request passes before anything leaves, shared by plain requests and
   * upgrades: authenticate, route, classify, decide, find and exchange tickets, release
   * the connection's credentials (each release audited durably first), substitute.
   */
  /** The dispatcher for a connection: the shared one, or its relay's; a relay this engine cannot reach is refused. */
  #dispatcherFor(view: ConnectionView): Dispatcher {
    if (view.via === null) return this.#options.dispatcher;
    if (this.#options.relays === undefined) {
      throw new CoatcheckError(
        'CC_ERR_RELAY_UNAVAILABLE',
        `connection ${view.name} goes through relay ${view.via}, which this front-end cannot use`,
        { details: { relay: view.via } },
      );
    }
    return this.#options.relays.get(view.via);
  }

  async #prepare(client: HttpClient, upgrade: boolean) {
    const { req, session, summary } = client;
    const { services } = this.#pipeline;
    // authenticate (the forward proxy authenticated the tunnel or request already parsed the key)
    const agentKey =
      client.forward === undefined ? bearer(req.headers['proxy-authorization']) : client.forward.agentKey;
    const principal = await this.#pipeline.authenticate(session, agentKey);

    // route
    const route =
      client.forward === undefined
        ? await this.#reverseRoute(session, req.url ?? '/')
        : this.#forwardRoute(session, client.forward);
    if (client.forward !== undefined) await this.#pipeline.beginRecording(session, route.view);
    const connection = route;
    summary.path = scrubPath(route.path);
    summary.queryLength = route.query?.length ?? 0;

    const method = req.method ?? 'GET';

    // classify: read the body (bounded) so the operation names the request exactly; decide before any release
    // The body counts against the in-flight budget (total and this agent's) until the request ends.
    const reservation = this.#options.bodyBudget?.open(principal.ref);
    if (reservation !== undefined) session.cleanups.push(() => reservation.release());
    const body = upgrade ? null : await readBody(req, this.#options.bodyLimit, reservation);
    summary.requestBytes = body?.length ?? 0;
    // The request as the agent sent it (tickets, never what they are exchanged for).
    if (session.recording !== null) {
      const limit = session.recording.limits.maxBodyBytes;
      session.record('http.request', 'in', {
        method: clipText(method, 32),
        url: clipText(
          client.forward === undefined
            ? (req.url ?? '/')
            : `${client.forward.origin}${route.upstreamPath(route.query)}`,
          MAX_HEADER_TEXT,
        ),
        httpVersion: req.httpVersion,
        headers: recordedHeaders(req.rawHeaders),
        ...(body === null || body.length === 0 ? {} : { body: clip(body, limit) }),
      });
    }
    const operation: Operation = {
      action: `http:${method}`,
      description: `${method} ${connection.url.host}${scrubPath(route.upstreamPath(null))}`,
      attributes: {
        method,
        host: connection.target.host ?? '',
        path: scrubPath(route.path),
        // Hashes, not values: enough to bind an approval to this exact request.
        querySha256: route.query === null ? '' : createHash('sha256').update(route.query).digest('hex'),
        bodySha256: body === null ? '' : createHash('sha256').update(body).digest('hex'),
      },
      // What an approver reads, built only when one is asked (cleaned by the approvals module).
      preview: () =>
        httpPreview({
          method,
          url: `${connection.url.origin}${route.upstreamPath(route.query)}`,
          rawHeaders: req.rawHeaders,
          connectionHeader: req.headers.connection,
          contentEncoding: req.headers['content-encoding'],
          body,
          injected: [
            ...Object.keys(connection.view.injectHeaders),
            ...(connection.view.credential !== null ? ['Authorization'] : []),
          ],
          agentKey,
        }),
    };
    const decision = await this.#pipeline.decide(session, {
      principal,
      connection: connection.view,
      target: connection.target,
      operation,
    });
    summary.decision = 'allow';

    // search the request
    const skip = hopByHop(req.headers.connection);
    for (const name of ['host', 'content-length', 'expect', 'accept-encoding']) skip.add(name);
    const injectedNames = new Set([
      ...Object.keys(connection.view.injectHeaders).map((h) => h.toLowerCase()),
      ...(connection.view.credential !== null ? ['authorization'] : []),
    ]);
    const raw = req.rawHeaders;
    const headerPairs: Array<[string, string]> = [];
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i]!;
      const lower = name.toLowerCase();
      // HTTP/2 pseudo-headers (:method, :path, :authority, :scheme) are not headers to forward.
      if (skip.has(lower) || injectedNames.has(lower) || lower.startsWith(':')) continue;
      headerPairs.push([name, raw[i + 1]!]);
    }
    const bodyEncoded = !['', 'identity'].includes(
      (req.headers['content-encoding'] ?? '').trim().toLowerCase(),
    );
    const kind = bodyKind(req.headers['content-type']);
    const bodyText = body === null || body.length === 0 || bodyEncoded ? null : body.toString('latin1');
    const found = {
      header: headerPairs.flatMap(([, value]) => headerTickets(value)),
      query: route.query === null ? [] : formTickets(route.query, false),
      body: bodyText === null ? [] : bodyTickets(kind, bodyText),
      path: pathTickets(route.path),
    };
    // Where each ticket stood: the vault releases a secret only in placements it is bound to.
    const placements = new Map<string, Placement[]>();
    const place = (ticket: string, placement: Placement) => {
      const list = placements.get(ticket) ?? [];
      if (!list.includes(placement)) list.push(placement);
      placements.set(ticket, list);
    };
    for (const [name, value] of headerPairs)
      for (const t of headerTickets(value)) place(t, placementOfHeader(name));
    for (const t of found.query) place(t, 'query');
    for (const t of found.body) place(t, 'body');
    for (const t of found.path) place(t, 'path');
    // The agent key authenticates to the gateway only: it must not ride along to the upstream.
    if (
      agentKey !== null &&
      (headerPairs.some(([, value]) => value.includes(agentKey)) ||
        (route.query?.includes(agentKey) ?? false) ||
        (bodyText?.includes(agentKey) ?? false))
    ) {
      throw new CoatcheckError(
        'CC_ERR_HTTP_AGENT_KEY_FORWARDED',
        'the agent key appears outside Proxy-Authorization; it is never forwarded upstream',
      );
    }
    summary.ticketsFound = {
      header: found.header.length,
      query: found.query.length,
      body: found.body.length,
      path: found.path.length,
    };
    const tickets = [...new Set([...found.header, ...found.query, ...found.body, ...found.path])];
    if (tickets.length > this.#options.maxTicketsPerRequest) {
      throw new CoatcheckError(
        'CC_ERR_HTTP_TOO_MANY_TICKETS',
        `the request carries ${tickets.length} tickets; the limit is ${this.#options.maxTicketsPerRequest}`,
      );
    }

    // exchange tickets, release credentials (each release audited durably first)
    const exchangeStarted = performance.now();
    const request = { authorized: decision, principal, target: connection.target, operation };
    const released = await this.#pipeline.exchange(session, tickets, { ...request, placement: placements });
    const injected = await this.#pipeline.credentials(session, connection.view, request);
    services.metrics.duration.observe(
      { frontend: this.name, phase: 'exchange' },
      (performance.now() - exchangeStarted) / 1000,
    );

    const secretOf: SecretOf = (ticket) => released.get(ticket)!.value.reveal();
    const upstreamHeaders: string[] = [];
    for (const [name, value] of headerPairs) {
      upstreamHeaders.push(name, found.header.length > 0 ? substituteHeader(value, secretOf) : value);
    }
    for (const [name, value] of injected) {
      assertHeaderSafe(value);
      upstreamHeaders.push(name, value);
    }
    if (!upgrade) upstreamHeaders.push('accept-encoding', 'identity');
    let upstreamBody: Buffer | null = body;
    if (body !== null && bodyText !== null && found.body.length > 0) {
      upstreamBody = Buffer.from(substituteBody(kind, bodyText, secretOf), 'latin1');
    }
    const query =
      route.query !== null && found.query.length > 0
        ? substituteForm(route.query, secretOf, false)
        : route.query;
    const path = route.upstreamPath(
      query,
      found.path.length > 0 ? substitutePath(route.path, secretOf) : route.path,
    );

    // The decision's audit record must be durable before anything leaves (it shares the
    // group commit with the releases above, so this rarely waits).
    const cleared = await this.#pipeline.clear(session, decision);
    // Tickets minted for secrets in the response are children of the tickets exchanged here.
    const parents = [...released.values()].map((e) => e.ticketId);
    return {
      principal,
      route,
      method,
      path,
      upstreamHeaders,
      upstreamBody,
      mask: decision.mask,
      parents,
      cleared,
    };
  }

  async handle(client: HttpClient): Promise<void> {
    const { session, summary } = client;
    const { services } = this.#pipeline;
    const started = performance.now();
    await this.initialize(client);

    const { principal, route, method, path, upstreamHeaders, upstreamBody, mask, parents, cleared } =
      await this.#prepare(client, false);
    const connection = route;

    // forward
    const signal = new UpstreamAbort(session, client.res);
    const upstreamStarted = performance.now();
    let response: Dispatcher.ResponseData;
    this.#pipeline.forwarding(session, cleared);
    try {
      response = await this.#dispatcherFor(route.view).request({
        origin: route.origin,
        path,
        method: method as Dispatcher.HttpMethod,
        headers: upstreamHeaders,
        body: upstreamBody,
        signal,
        headersTimeout: this.#options.upstreamTimeoutMs,
        bodyTimeout: this.#options.upstreamTimeoutMs,
      });
    } catch (error) {
      signal.release();
      throw upstreamFailure(error, session.terminatedBy, client.forward !== undefined);
    }
    const upstreamMs = performance.now() - upstreamStarted;
    summary.upstreamMs = Math.round(upstreamMs);
    summary.upstreamStatus = response.statusCode;
    services.metrics.duration.observe({ frontend: this.name, phase: 'upstream' }, upstreamMs / 1000);

    try {
      await this.#respond(client, response, principal, connection.target, signal, mask, parents);
    } catch (error) {
      response.body.on('error', () => undefined); // destroying an unread undici body emits an AbortError
      response.body.destroy();
      throw upstreamFailure(error, session.terminatedBy);
    } finally {
      signal.release();
      summary.totalMs = Math.round(performance.now() - started);
    }
  }

  async #respond(
    client: HttpClient,
    response: Dispatcher.ResponseData,
    principal: Parameters<ExchangePipeline['inspect']>[1],
    target: Parameters<ExchangePipeline['inspect']>[2],
    signal: { readonly aborted: boolean },
    mask?: readonly string[],
    parents: readonly string[] = [],
  ): Promise<void> {
    const { req, res, session, summary } = client;
    const masking = mask !== undefined && mask.length > 0 ? fieldMatcher(mask) : null;
    let scan: ResponseScan;
    try {
      scan = await this.#pipeline.inspect(session, principal, target, parents);
    } catch (error) {
      throw new CoatcheckError('CC_ERR_GATEWAY_INSPECTION_FAILED', 'the response could not be inspected', {
        cause: error,
      });
    }
    const decoders = responseDecoders(response.headers);
    if (decoders === 'unsupported') {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_UPSTREAM_ENCODING',
        'the upstream answered with a content encoding the gateway cannot inspect',
      );
    }
    const skip = hopByHop(response.headers.connection as string | string[] | undefined);
    skip.add('content-length');
    skip.add('transfer-encoding');
    if (decoders.length > 0) skip.add('content-encoding');
    const hasBody = req.method !== 'HEAD' && !NO_BODY_STATUS.has(response.statusCode);
    // The header block in one scan (names too: an upstream can put anything before the
    // colon): [name, value, name, value, …], a name repeated for each of its values.
    const block: string[] = [];
    const rawHeaders = response.headers;
    for (const [name, value] of Object.entries(rawHeaders)) {
      const lower = name.toLowerCase();
      if (value === undefined) continue;
      if (skip.has(lower) && !(lower === 'content-length' && !hasBody)) continue;
      for (const item of Array.isArray(value) ? value : [value]) block.push(name, item);
    }
    const out = await this.#scannedBlock(scan, block);
    if (signal.aborted)
      throw session.terminatedBy !== null ? new Error('terminated') : new Error('client gone');
    if (masking !== null && hasBody) {
      // Policy obligations (@mask): the whole JSON body is rewritten before any of it is sent.
      const type = String(response.headers['content-type'] ?? '').toLowerCase();
      if (!/^application\/([a-z0-9.+-]*\+)?json\b/.test(type)) {
        throw new CoatcheckError(
          'CC_ERR_GATEWAY_MASK_UNSUPPORTED',
          'policy masks fields of this response, and it is not JSON',
        );
      }
      const source = decodedBody(response.body, decoders);
      const parts: Buffer[] = [];
      let size = 0;
      for await (const chunk of source) {
        const clean = await this.#scannedChunk(scan, chunk as Buffer);
        size += clean.length;
        if (size > this.#options.bodyLimit) {
          throw new CoatcheckError(
            'CC_ERR_GATEWAY_MASK_UNSUPPORTED',
            'policy masks fields of this response, and it is larger than http.bodyLimit',
          );
        }
        parts.push(clean);
      }
      parts.push(await this.#scanEnd(scan));
      const body = Buffer.from(maskJson(Buffer.concat(parts).toString('utf8'), masking), 'utf8');
      if (signal.aborted)
        throw session.terminatedBy !== null ? new Error('terminated') : new Error('client gone');
      res.writeHead(response.statusCode, out);
      summary.status = response.statusCode;
      res.end(body);
      summary.responseBytes = body.length;
      if (session.recording !== null) {
        session.record('http.response', 'out', {
          status: response.statusCode,
          headers: recordedHeaders(out),
          body: clip(body, session.recording.limits.maxBodyBytes),
        });
      }
      summary.masked = masking === null ? 0 : (mask?.length ?? 0);
      return;
    }
    const declaredLength = Number(response.headers['content-length'] ?? Number.NaN);
    // A small body of known length is scanned whole and sent with its headers in one write,
    // with its length after inspection (tickets and secrets differ in length) instead of
    // chunked: a socket write is a system call, the largest single cost of a small exchange.
    let whole: Buffer | null = null;
    if (
      hasBody &&
      decoders.length === 0 &&
      Number.isInteger(declaredLength) &&
      declaredLength <= WHOLE_BODY_MAX
    ) {
      const parts: Buffer[] = [];
      for await (const chunk of response.body) parts.push(await this.#scannedChunk(scan, chunk as Buffer));
      parts.push(await this.#scanEnd(scan));
      whole = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
      if (signal.aborted)
        throw session.terminatedBy !== null ? new Error('terminated') : new Error('client gone');
    }
    res.writeHead(
      response.statusCode,
      whole === null ? out : [...out, 'content-length', String(whole.length)],
    );
    summary.status = response.statusCode;
    // What the agent received: headers and body after inspection (secrets already tickets).
    const recorder = responseRecorder(
      session,
      response.statusCode,
      out,
      String(response.headers['content-type'] ?? ''),
    );
    let sent = 0;
    if (whole !== null) {
      sent = whole.length;
      recorder?.chunk(whole);
      res.end(whole);
      recorder?.end();
    } else if (hasBody) {
      const source = decodedBody(response.body, decoders);
      for await (const chunk of source) {
        const clean = await this.#scannedChunk(scan, chunk as Buffer);
        if (clean.length > 0) {
          sent += clean.length;
          recorder?.chunk(clean);
          if (!res.write(clean)) await drained(res);
          if (res.destroyed) throw new Error('client gone');
        }
      }
      const tail = await this.#scanEnd(scan);
      sent += tail.length;
      recorder?.chunk(tail);
      res.end(tail);
      recorder?.end();
    } else {
      await response.body.dump();
      res.end();
    }
    summary.responseBytes = sent;
    summary.responseSecrets = [...scan.findings.values()].reduce((a, b) => a + b, 0);
  }

  async #scannedBlock(scan: ResponseScan, values: readonly string[]): Promise<string[]> {
    try {
      return await scanHeaders(scan, values);
    } catch (error) {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_INSPECTION_FAILED',
        'a response header could not be inspected',
        { cause: error },
      );
    }
  }

  async #scannedChunk(scan: ResponseScan, chunk: Buffer): Promise<Buffer> {
    try {
      return await scan.push(chunk);
    } catch (error) {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_INSPECTION_FAILED',
        'the response body could not be inspected',
        { cause: error },
      );
    }
  }

  async #scanEnd(scan: ResponseScan): Promise<Buffer> {
    try {
      return await scan.end();
    } catch (error) {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_INSPECTION_FAILED',
        'the response body could not be inspected',
        { cause: error },
      );
    }
  }

  /**
   * A protocol upgrade (WebSocket) through the forward proxy: the request passes the same
   * checks as any other (authentication, policy, tickets in headers and query exchanged,
   * credentials injected, audit first), the upstream's answer head is inspected, and on
   * 101 the agent's handshake is completed with what the upstream chose. Server messages
   * (whole: the WebSocket layer reassembles fragments), close reasons and ping/pong payloads
   * are inspected; client messages are relayed as sent. Revoking what the session used
   * ends it.
   */
  async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer, forward: ForwardRoute): Promise<void> {
    const { services } = this.#pipeline;
    const res = new ServerResponse(req);
    res.assignSocket(socket as Socket);
    const client = this.client(req, res, forward);
    client.summary.upgrade = String(req.headers.upgrade ?? '').slice(0, 32);
    let outcome: ErrorCode | 'ok' = 'ok';
    let joined = false;
    const close = () => this.#pipeline.closeSession(client.session, outcome, client.summary);
    try {
      if (String(req.headers.upgrade ?? '').toLowerCase() !== 'websocket') {
        throw new CoatcheckError(
          'CC_ERR_HTTP_UNSUPPORTED',
          'only WebSocket upgrades are carried (the gateway must be able to inspect what comes back)',
        );
      }
      checkClientHandshake(req);
      const { principal, route, path, upstreamHeaders, parents, cleared } = await this.#prepare(client, true);
      const url = new URL(`${route.url.protocol}//${route.url.host}${path}`);
      // The WebSocket client sends the URL's normal form: a path it would rewrite (dot
      // segments, escapes) is refused rather than sent as something other than what was decided.
      if (`${url.pathname}${url.search}` !== path) {
        throw new CoatcheckError(
          'CC_ERR_HTTP_BAD_REQUEST',
          'the WebSocket request target is not in normal form (dot segments or escapes a URL parser would rewrite)',
        );
      }
      // Subprotocols as offered upstream (tickets in them exchanged) and as the agent sent them:
      // the agent is told the one the upstream chose in its own words, never in the exchanged ones.
      const upstreamProtocols = offeredSubprotocols(headerValues(upstreamHeaders, 'sec-websocket-protocol'));
      const clientProtocols = offeredSubprotocols(req.headers['sec-websocket-protocol']);
      if (upstreamProtocols.length !== clientProtocols.length) {
        throw new CoatcheckError(
          'CC_ERR_HTTP_BAD_REQUEST',
          'the offered WebSocket subprotocols could not be exchanged one for one',
        );
      }
      this.#pipeline.forwarding(client.session, cleared);
      let upstream: UpstreamUpgrade;
      try {
        upstream = await openUpstreamWebSocket({
          url,
          headers: upstreamHeaders,
          protocols: upstreamProtocols,
          ...(this.#options.upstreamCa === undefined ? {} : { tls: { ca: this.#options.upstreamCa } }),
          // Through the dialer: directly, or through the connection's relay (TLS end to end).
          connect: () =>
            connectRaw(
              route.url,
              this.#options.upstreamCa,
              Math.min(this.#options.upstreamTimeoutMs, 10_000),
              this.#options.dial ?? directDialer,
              route.view.via,
            ),
          timeoutMs: Math.min(this.#options.upstreamTimeoutMs, 10_000),
          signal: client.session.signal,
          log: services.log,
        });
      } catch (error) {
        if (error instanceof UpstreamHandshakeError) {
          throw new CoatcheckError(
            'CC_ERR_GATEWAY_UPSTREAM_ENCODING',
            'the upstream accepted the WebSocket with an extension, subprotocol or key the gateway did not offer; its frames cannot be inspected',
          );
        }
        throw upstreamFailure(error, client.session.terminatedBy, true);
      }
      client.summary.upstreamStatus = upstream.kind === 'refused' ? upstream.status : 101;
      const scan = await this.#pipeline.inspect(client.session, principal, route.target, parents);
      const scanned = await this.#scannedBlock(scan, upstream.headers.flat());
      const answerHeaders: Array<[string, string]> = [];
      for (let i = 0; i + 1 < scanned.length; i += 2) answerHeaders.push([scanned[i]!, scanned[i + 1]!]);
      if (upstream.kind === 'refused') {
        // Not upgraded: the answer's head (inspected) without its body, and the connection closes.
        res.detachSocket(socket as Socket);
        const kept = answerHeaders.filter(
          ([name]) => !/^(content-length|transfer-encoding|connection)$/i.test(name) && !/[\r\n]/.test(name),
        );
        socket.end(
          `HTTP/1.1 ${upstream.status} Upstream\r\n${kept.map(([n, v]) => `${n}: ${v.replace(/[\r\n]/g, ' ')}\r\n`).join('')}content-length: 0\r\nconnection: close\r\n\r\n`,
        );
        client.summary.status = upstream.status;
        return;
      }
      const chosen =
        upstream.protocol === '' ? '' : (clientProtocols[upstreamProtocols.indexOf(upstream.protocol)] ?? '');
      res.detachSocket(socket as Socket);
      const agent = await acceptClientWebSocket(req, socket, head, {
        protocol: chosen,
        headers: answerHeaders,
      });
      client.summary.status = 101;
      joined = true;
      relayWebSocket(client.session, agent, upstream.socket, async (payload) => {
        const frameScan = await this.#pipeline.inspect(client.session, principal, route.target, parents);
        return Buffer.concat([await this.#scannedChunk(frameScan, payload), await this.#scanEnd(frameScan)]);
      }).then((code) => {
        if (code !== null) outcome = code;
        close();
      });
    } catch (error) {
      const failure = mapFailure(error, services.log, this.name, { session: client.session.id });
      outcome = failure.code;
      client.summary.error = failure.code;
      services.metrics.refusals.inc({ frontend: this.name, code: failure.code });
      if (!socket.destroyed && res.socket !== null) {
        this.sendError(client, failure);
        res.once('finish', () => socket.end());
      } else socket.destroy();
    } finally {
      if (!joined) close();
    }
  }

  /** Run one request end to end: errors in the client's protocol, metrics, recording. */
  async serve(req: IncomingMessage, res: ServerResponse, forward?: ForwardRoute): Promise<void> {
    const { services } = this.#pipeline;
    const client = this.client(req, res, forward);
    const started = performance.now();
    let outcome: ErrorCode | 'ok' = 'ok';
    try {
      await this.handle(client);
    } catch (error) {
      // The driver's one mapping: an unexpected failure is logged under an incident id, without its message.
      const failure = mapFailure(error, services.log, this.name, { session: client.session.id });
      outcome = failure.code;
      services.metrics.refusals.inc({ frontend: this.name, code: failure.code });
      client.summary.error = failure.code;
      this.sendError(client, failure);
      client.session.record('gateway.refused', 'gateway', {
        code: failure.code,
        status: res.headersSent && !res.destroyed ? failure.status : 0,
        message: clipText(failure.message, 1024),
      });
      if (!req.complete) req.resume();
    } finally {
      const status = countHttpRequest(
        services.metrics,
        this.name,
        { req, res, summary: client.summary },
        started,
      );
      services.log.debug(
        {
          session: client.session.id,
          method: req.method,
          connection: client.session.connection,
          path: client.summary.path,
          status,
          outcome,
          ms: Math.round(performance.now() - started),
        },
        'http request',
      );
      this.#pipeline.closeSession(client.session, outcome, client.summary);
    }
  }
}
