import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { pipeline as pipe, type Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ConnectionView } from '../../connections/connections.js';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import { agentRef, type Principal } from '../../core/principal.js';
import { isTicket } from '../../core/ticket-format.js';
import type { Cleared } from '../../gateway/authorized.js';
import { mapFailure } from '../../gateway/driver.js';
import { fieldMatcher } from '../../gateway/field-mask.js';
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
import type { ExchangePipeline, Operation } from '../../gateway/pipeline.js';
import { GatewaySession } from '../../gateway/session.js';
import { checkClientHandshake } from '../../gateway/websocket.js';
import { BUILTIN_POLICY_ID } from '../../policy/schema.js';
import type { Store } from '../../store/types.js';
import type { Target } from '../../vault/destinations.js';
import { relayChannels, upgradeUpstream } from './exec-relay.js';
import { offeredProtocols } from './protocol/channels.js';
import { rewriteObjectData } from './protocol/object-data.js';
import { actionOf, classifyRequest, type RequestInfo } from './protocol/request-info.js';
import { statusBody } from './protocol/status.js';
import { parseCredential, type UpstreamCredential, type UpstreamPool } from './upstream.js';

export interface KubernetesEngineOptions {
  readonly bodyLimit: number;
  readonly upstreamTimeoutMs: number;
  readonly pool: UpstreamPool;
  /** Agents are named in the URL (`/k8s/<agent>/<connection>`), as a PostgreSQL login names its user. */
  readonly store: Pick<Store, 'getAgentByName' | 'getAgentById' | 'getTicketById'>;
  readonly bodyBudget?: BodyBudget;
}

/** `/k8s/<agent>/<connection>` and the API path below it. */
export const ROUTE_PREFIX = '/k8s/';
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
/** Request headers carried to the API server; everything else stays at the gateway. */
const FORWARDED = new Set(['accept', 'content-type', 'user-agent', 'kubectl-command', 'kubectl-session']);
const IMPERSONATION = /^impersonate-(user|group|uid|extra-[a-z0-9%_-]{1,128})$/;
/** Request body media types the gateway passes (JSON and YAML; no protobuf: it cannot be read). */
const BODY_TYPES =
  /^application\/(json|yaml|merge-patch\+json|strategic-merge-patch\+json|json-patch\+json|apply-patch\+yaml)\s*(;|$)/i;
/** Resources whose objects carry base64 values the gateway decodes (core group). */
const DATA_RESOURCES: Readonly<Record<string, 'Secret' | 'ConfigMap'>> = {
  secrets: 'Secret',
  configmaps: 'ConfigMap',
};
const NO_BODY_STATUS = new Set([204, 304]);
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'content-length',
  'content-encoding',
]);

export interface KubernetesClient {
  readonly req: IncomingMessage;
  readonly session: GatewaySession;
  readonly summary: Record<string, unknown>;
}

interface Route {
  readonly agent: string;
  readonly connection: string;
  /** Path and query below the connection, as sent ('/' at least). */
  readonly target: string;
}

export function parseRoute(url: string): Route {
  if (!url.startsWith(ROUTE_PREFIX)) {
    throw new CoatcheckError(
      'CC_ERR_NOT_FOUND',
      'coatcheck: Kubernetes requests go to /k8s/<agent>/<connection>/…',
    );
  }
  const rest = url.slice(ROUTE_PREFIX.length);
  const first = rest.indexOf('/');
  const second = first === -1 ? -1 : rest.indexOf('/', first + 1);
  const agent = first === -1 ? rest : rest.slice(0, first);
  const connection =
    first === -1 ? '' : second === -1 ? rest.slice(first + 1) : rest.slice(first + 1, second);
  const query = connection.indexOf('?');
  const cleanConnection = query === -1 ? connection : connection.slice(0, query);
  if (!NAME.test(agent) || !NAME.test(cleanConnection)) {
    throw new CoatcheckError(
      'CC_ERR_NOT_FOUND',
      'coatcheck: Kubernetes requests go to /k8s/<agent>/<connection>/… (names: letters, digits, _ . -)',
    );
  }
  const target = second === -1 ? (query === -1 ? '/' : `/${connection.slice(query)}`) : rest.slice(second);
  return { agent, connection: cleanConnection, target };
}

/**
 * Accept without protobuf or CBOR (the gateway must read what comes back); JSON when nothing
 * else is left. With `jsonOnly` (Secrets, ConfigMaps, masked answers: their values must be
 * decoded), only JSON entries are kept: a YAML answer would carry base64 values past the
 * decoder.
 */
export function jsonAccept(accept: string | undefined, jsonOnly = false): string {
  const kept = (accept ?? '')
    .split(',')
    .map((a) => a.trim())
    .filter(
      (a) => a !== '' && !/protobuf|cbor/i.test(a) && (!jsonOnly || /^application\/json\s*(;|$)/i.test(a)),
    );
  return kept.length === 0 ? 'application/json' : kept.join(', ');
}

interface Prepared {
  readonly principal: Principal;
  readonly view: ConnectionView;
  readonly target: Target;
  readonly info: RequestInfo;
  readonly origin: string;
  readonly path: string;
  readonly headers: string[];
  readonly body: Buffer | null;
  readonly credential: UpstreamCredential;
  readonly mask: readonly string[];
  readonly parents: readonly string[];
  /** The policy decision, its audit record durable: checked where bytes leave for the API server. */
  readonly cleared: Cleared;
}

/**
 * The Kubernetes API adapter: kubectl talks to `/k8s/<agent>/<connection>` with a ticket as
 * its bearer token. Every request is classified as the API server will read it (verb,
 * group, resource, subresource, namespace, name), decided by Cedar as `k8s:<verb>`, the
 * ticket is exchanged for the cluster credential (a bearer token, or a client certificate),
 * and the answer is inspected: Secret and ConfigMap base64 values decoded, secrets turned
 * into tickets, watches streamed event by event; exec and attach are relayed per channel.
 */
export class KubernetesEngine {
  readonly name = 'kubernetes';
  readonly #pipeline: ExchangePipeline;
  readonly #options: KubernetesEngineOptions;

  constructor(pipeline: ExchangePipeline, options: KubernetesEngineOptions) {
    this.#pipeline = pipeline;
    this.#options = options;
  }

  #client(req: IncomingMessage): KubernetesClient {
    const session = this.#pipeline.openSession(new GatewaySession(this.name, this.#pipeline.services.clock));
    return { req, session, summary: { method: req.method } };
  }

  /** The agent named in the path: it must exist, be live, and the ticket must be bound to it. */
  async #agent(session: GatewaySession, name: string, ticket: string): Promise<Principal> {
    const { services } = this.#pipeline;
    const refuse = async (code: ErrorCode, message: string): Promise<never> => {
      await services.audit.append({
        type: 'gateway.auth.refused',
        actor: 'unauthenticated',
        data: {
          frontend: this.name,
          session: session.id,
          code,
          presented: services.vault.fingerprint(ticket.slice(0, 256)),
        },
      });
      throw new CoatcheckError(code, message);
    };
    const agent = await this.#options.store.getAgentByName(name);
    if (agent === null) return refuse('CC_ERR_AGENT_UNKNOWN', `coatcheck: no agent named ${name}`);
    if (agent.revokedAt !== null)
      return refuse('CC_ERR_AGENT_REVOKED', `coatcheck: agent ${agent.id} was revoked`);
    if (agent.expiresAt !== null && agent.expiresAt <= services.clock.now())
      return refuse('CC_ERR_AGENT_EXPIRED', `coatcheck: the key of agent ${agent.id} has expired`);
    const principal: Principal = {
      kind: 'agent',
      ref: agentRef(agent.id),
      name: agent.name,
      groups: agent.groups,
      attributes: {},
      expiresAt: agent.expiresAt,
    };
    session.principal = principal;
    session.event('authenticated', { principal: principal.ref });
    return principal;
  }

  /**
   * A request outside `/k8s/<agent>/<connection>` (`kubectl get --raw` drops the server URL's
   * path): the agent and connection the ticket is bound to, when it names exactly one
   * kubernetes connection. Only routing: the exchange checks the binding as for any request.
   */
  async #routeOfTicket(ticket: string, target: string): Promise<Route> {
    const unroutable = () =>
      new CoatcheckError(
        'CC_ERR_NOT_FOUND',
        'coatcheck: Kubernetes requests go to /k8s/<agent>/<connection>/… (this ticket names no single kubernetes connection)',
      );
    const view = await this.#pipeline.services.vault.inspectTicket(ticket).catch(() => null);
    if (view === null || !view.principal.startsWith('agent:')) throw unroutable();
    const agent = await this.#options.store.getAgentById(view.principal.slice('agent:'.length));
    const names = view.destinations.filter((d) => d.startsWith('conn:')).map((d) => d.slice('conn:'.length));
    const kubernetes: string[] = [];
    for (const name of names) {
      if ((await this.#pipeline.services.connections.get(name))?.type === 'kubernetes') kubernetes.push(name);
    }
    if (agent === null || kubernetes.length !== 1) throw unroutable();
    return { agent: agent.name, connection: kubernetes[0]!, target: target.startsWith('/') ? target : '/' };
  }

  /** End the session when the ticket (or any ticket above it) or the agent expires. */
  async #endAtExpiry(session: GatewaySession, principal: Principal, ticketId: string): Promise<void> {
    let at = principal.expiresAt;
    let code: ErrorCode = 'CC_ERR_AGENT_EXPIRED';
    let id: string | null = ticketId;
    for (let depth = 0; id !== null && depth < 64; depth++) {
      const record = await this.#options.store.getTicketById(id);
      if (record === null) break;
      if (record.expiresAt !== null && (at === null || record.expiresAt < at)) {
        at = record.expiresAt;
        code = 'CC_ERR_TICKET_EXPIRED';
      }
      id = record.parentId;
    }
    if (at === null) return;
    const left = at - this.#pipeline.services.clock.now();
    if (left > 2_147_000_000) return;
    const timer = setTimeout(() => session.terminate(code), Math.max(0, left));
    timer.unref();
    session.cleanups.push(() => clearTimeout(timer));
  }

  async #prepare(client: KubernetesClient, upgrade: boolean): Promise<Prepared> {
    const { req, session, summary } = client;
    const method = req.method ?? 'GET';
    const authorization = req.headers.authorization;
    const ticket = /^Bearer (\S{1,512})$/.exec(authorization ?? '')?.[1] ?? null;
    if (ticket === null || !isTicket(ticket)) {
      throw new CoatcheckError(
        'CC_ERR_TICKET_MALFORMED',
        'coatcheck: the bearer token must be a ticket (cct_…) for this connection; see `coatcheck kubeconfig`',
      );
    }
    const url = req.url ?? '/';
    const route = url.startsWith(ROUTE_PREFIX) ? parseRoute(url) : await this.#routeOfTicket(ticket, url);
    const principal = await this.#agent(session, route.agent, ticket);
    const resolved = await this.#pipeline.resolveConnection(session, route.connection, ['kubernetes']);
    const info = classifyRequest(method, route.target);
    // Only exec and attach are carried as streams: refused before any decision or release.
    if (upgrade && info.verb !== 'exec' && info.verb !== 'attach') {
      throw new CoatcheckError(
        'CC_ERR_K8S_STREAM_UNSUPPORTED',
        `coatcheck: only exec and attach are carried as streams (not ${info.verb}); port-forward carries bytes the gateway cannot inspect`,
      );
    }
    summary.verb = info.verb;
    summary.resource = info.resource;
    summary.subresource = info.subresource;
    summary.namespace = info.namespace;
    summary.path = info.path;

    // Headers: an allow list; impersonation is its own decision.
    const headers: string[] = [];
    const impersonation: Array<[string, string]> = [];
    const raw = req.rawHeaders;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase();
      const value = raw[i + 1]!;
      if (IMPERSONATION.test(name)) impersonation.push([name, value]);
      else if (name.startsWith('impersonate-'))
        throw new CoatcheckError(
          'CC_ERR_K8S_IMPERSONATION_REFUSED',
          'coatcheck: a malformed impersonation header',
        );
      else if (FORWARDED.has(name) && name !== 'accept') headers.push(raw[i]!, value);
    }
    // The Accept header is set once the decision (and its @mask obligations) is known.
    const contentType = req.headers['content-type'];

    const reservation = upgrade ? undefined : this.#options.bodyBudget?.open(principal.ref);
    if (reservation !== undefined) session.cleanups.push(() => reservation.release());
    const body = upgrade ? null : await readBody(req, this.#options.bodyLimit, reservation);
    if (body !== null && body.length > 0) {
      if (contentType === undefined || !BODY_TYPES.test(contentType)) {
        throw new CoatcheckError(
          'CC_ERR_K8S_REQUEST_INVALID',
          'coatcheck: a request body must be JSON or YAML (protobuf and other encodings cannot be inspected)',
        );
      }
      if (
        !['', 'identity'].includes(
          String(req.headers['content-encoding'] ?? '')
            .trim()
            .toLowerCase(),
        )
      ) {
        throw new CoatcheckError(
          'CC_ERR_K8S_REQUEST_INVALID',
          'coatcheck: a compressed request body is not carried',
        );
      }
    }
    summary.requestBytes = body?.length ?? 0;
    const queryAt = route.target.indexOf('?');
    const query = queryAt === -1 ? '' : route.target.slice(queryAt + 1);
    const where = info.resourceRequest
      ? [
          info.group === '' ? 'core' : info.group,
          info.namespace === '' ? '' : `ns/${info.namespace}`,
          info.resource,
          info.name,
          info.subresource,
        ]
          .filter((p) => p !== '')
          .join('/')
      : info.path;
    const operation: Operation = {
      action: actionOf(info),
      description: `k8s ${info.verb} ${where} on ${resolved.view.name}`.slice(0, 512),
      attributes: {
        method,
        path: info.path,
        verb: info.verb,
        ...(info.resourceRequest
          ? {
              api_group: info.group,
              resource: info.resource,
              subresource: info.subresource,
              namespace: info.namespace,
              name: info.name,
            }
          : {}),
        // Hashes, not values: an approval binds this exact request.
        querySha256: query === '' ? '' : createHash('sha256').update(query).digest('hex'),
        bodySha256: body === null ? '' : createHash('sha256').update(body).digest('hex'),
      },
      preview: () =>
        `${method} ${resolved.url.origin}${route.target}\n${impersonation.map(([n, v]) => `${n}: ${v}\n`).join('')}\n${body === null ? '' : body.subarray(0, 64 * 1024).toString('utf8')}`,
    };
    const request = { principal, connection: resolved.view, target: resolved.target, operation };
    const decision = await this.#pipeline.decide(session, request);
    summary.decision = 'allow';
    // proxy reaches services behind the API server: never on the built-in policy alone.
    if (info.verb === 'proxy' && decision.reasons.every((r) => r === BUILTIN_POLICY_ID)) {
      throw new CoatcheckError(
        'CC_ERR_K8S_PROXY_REFUSED',
        `coatcheck: the proxy subresource needs a policy that permits k8s:proxy on connection ${resolved.view.name}`,
      );
    }
    if (impersonation.length > 0) {
      const users = impersonation.filter(([n]) => n === 'impersonate-user').map(([, v]) => v);
      const groups = impersonation.filter(([n]) => n === 'impersonate-group').map(([, v]) => v);
      const impersonate: Operation = {
        action: 'k8s:impersonate',
        description: `k8s impersonate on ${resolved.view.name}`,
        attributes: {
          ...operation.attributes,
          impersonate_user: users.join(','),
          impersonate_groups: groups.join(','),
          impersonate_headers: impersonation.map(([n]) => n).join(','),
        },
      };
      const allowed = await this.#pipeline.decide(session, { ...request, operation: impersonate });
      // The built-in policy (any valid ticket) never lends the cluster credential to another identity.
      if (allowed.reasons.every((r) => r === BUILTIN_POLICY_ID)) {
        throw new CoatcheckError(
          'CC_ERR_K8S_IMPERSONATION_REFUSED',
          `coatcheck: impersonation headers need a policy that permits k8s:impersonate on connection ${resolved.view.name}`,
        );
      }
      for (const [name, value] of impersonation) headers.push(name, value);
      await this.#pipeline.clear(session, allowed);
    }

    const decoded = info.group === '' && DATA_RESOURCES[info.resource] !== undefined;
    headers.push('Accept', jsonAccept(req.headers.accept, decoded || (decision.mask ?? []).length > 0));
    const released = await this.#pipeline.exchange(session, [ticket], {
      authorized: decision,
      principal,
      target: resolved.target,
      operation,
    });
    const exchange = released.get(ticket)!;
    // A long request (a watch, exec, attach, a followed log) ends when its ticket or agent does.
    if (upgrade || info.verb === 'watch' || /(^|&)follow=(true|1)(&|$)/.test(query))
      await this.#endAtExpiry(session, principal, exchange.ticketId);
    const credential = parseCredential(exchange.value.revealText());
    if (credential.kind === 'bearer') headers.push('Authorization', `Bearer ${credential.token}`);
    if (body !== null && body.length > 0 && contentType !== undefined)
      headers.push('Content-Type', contentType);
    const cleared = await this.#pipeline.clear(session, decision);
    const base = resolved.url.pathname.replace(/\/+$/, '');
    return {
      principal,
      view: resolved.view,
      target: resolved.target,
      info,
      origin: resolved.url.origin,
      path: `${base}${route.target}`,
      headers,
      body,
      credential,
      mask: decision.mask,
      parents: [exchange.ticketId],
      cleared,
    };
  }

  /** One request end to end: refusals as Kubernetes Status objects, metrics, recording. */
  async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const { services } = this.#pipeline;
    const client = this.#client(req);
    const started = performance.now();
    let outcome: ErrorCode | 'ok' = 'ok';
    try {
      await this.#handle(client, res);
    } catch (error) {
      const failure = mapFailure(error, services.log, this.name, { session: client.session.id });
      outcome = failure.code;
      services.metrics.refusals.inc({ frontend: this.name, code: failure.code });
      client.summary.error = failure.code;
      sendStatus(req, res, failure);
    } finally {
      countHttpRequest(services.metrics, this.name, { req, res, summary: client.summary }, started);
      this.#pipeline.closeSession(client.session, outcome, client.summary);
    }
  }

  async #handle(client: KubernetesClient, res: ServerResponse): Promise<void> {
    const { req, session, summary } = client;
    if (req.headers.upgrade !== undefined) {
      throw new CoatcheckError(
        'CC_ERR_K8S_STREAM_UNSUPPORTED',
        'coatcheck: an upgrade arrived as a plain request',
      );
    }
    const prepared = await this.#prepare(client, false);
    const signal = new UpstreamAbort(session, res);
    let response: Dispatcher.ResponseData;
    const upstreamStarted = performance.now();
    this.#pipeline.forwarding(session, prepared.cleared);
    try {
      response = await this.#options.pool.agent(prepared.view, prepared.credential).request({
        origin: prepared.origin,
        path: prepared.path,
        method: (req.method ?? 'GET') as Dispatcher.HttpMethod,
        headers: [...prepared.headers, 'Accept-Encoding', 'identity'],
        body: prepared.body,
        signal,
        headersTimeout: this.#options.upstreamTimeoutMs,
      });
    } catch (error) {
      signal.release();
      throw upstreamFailure(error, session.terminatedBy, true);
    }
    summary.upstreamMs = Math.round(performance.now() - upstreamStarted);
    summary.upstreamStatus = response.statusCode;
    try {
      await this.#respond(client, res, response, prepared, signal);
    } catch (error) {
      response.body.on('error', () => undefined);
      response.body.destroy();
      throw upstreamFailure(error, session.terminatedBy, true);
    } finally {
      signal.release();
    }
  }

  async #scan(session: GatewaySession, prepared: Prepared): Promise<ResponseScan> {
    try {
      return await this.#pipeline.inspect(session, prepared.principal, prepared.target, prepared.parents);
    } catch (error) {
      throw new CoatcheckError('CC_ERR_GATEWAY_INSPECTION_FAILED', 'the response could not be inspected', {
        cause: error,
      });
    }
  }

  /** A whole value through a fresh scan (a decoded Secret value, one watch event). */
  async #scanWhole(session: GatewaySession, prepared: Prepared, value: Buffer): Promise<Buffer> {
    const scan = await this.#scan(session, prepared);
    try {
      return Buffer.concat([await scan.push(value), await scan.end()]);
    } catch (error) {
      throw new CoatcheckError('CC_ERR_GATEWAY_INSPECTION_FAILED', 'the response could not be inspected', {
        cause: error,
      });
    }
  }

  /** Decode and rewrite Secret / ConfigMap base64 values of one JSON document, then scan all of it. */
  async #rewrite(
    session: GatewaySession,
    prepared: Prepared,
    text: string,
    summary: Record<string, unknown>,
  ) {
    const itemKind = prepared.info.group === '' ? DATA_RESOURCES[prepared.info.resource] : undefined;
    const { text: rewritten, result } = await rewriteObjectData(text, {
      scan: (value) => this.#scanWhole(session, prepared, value),
      scanText: async (whole) =>
        (await this.#scanWhole(session, prepared, Buffer.from(whole, 'utf8'))).toString('utf8'),
      mask: prepared.mask.length > 0 ? fieldMatcher(prepared.mask) : null,
      ...(itemKind === undefined ? {} : { listItemKind: itemKind }),
    });
    summary.decodedValues = ((summary.decodedValues as number | undefined) ?? 0) + result.decoded;
    summary.rewrittenValues = ((summary.rewrittenValues as number | undefined) ?? 0) + result.rewritten;
    return Buffer.from(rewritten, 'utf8');
  }

  async #respond(
    client: KubernetesClient,
    res: ServerResponse,
    response: Dispatcher.ResponseData,
    prepared: Prepared,
    signal: { readonly aborted: boolean },
  ): Promise<void> {
    const { req, session, summary } = client;
    const type = String(response.headers['content-type'] ?? '').toLowerCase();
    if (/protobuf|cbor/.test(type)) {
      throw new CoatcheckError(
        'CC_ERR_K8S_RESPONSE_INVALID',
        'coatcheck: the API server answered in protobuf; the response was withheld',
      );
    }
    const decoders = responseDecoders(response.headers);
    if (decoders === 'unsupported') {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_UPSTREAM_ENCODING',
        'the upstream answered with a content encoding the gateway cannot inspect',
      );
    }
    const headerScan = await this.#scan(session, prepared);
    const out: string[] = [];
    for (const [name, value] of Object.entries(response.headers)) {
      if (value === undefined || HOP_BY_HOP.has(name.toLowerCase())) continue;
      for (const item of Array.isArray(value) ? value : [value])
        out.push(name, await headerScan.header(item));
    }
    const hasBody = req.method !== 'HEAD' && !NO_BODY_STATUS.has(response.statusCode);
    const source: Readable =
      decoders.length === 0
        ? response.body
        : ((pipe as (...s: unknown[]) => unknown)(response.body, ...decoders, () => undefined) as Readable);
    const json = /^application\/([a-z0-9.+-]*\+)?json\b/.test(type);
    const { info } = prepared;
    const mustDecode =
      prepared.mask.length > 0 || (info.group === '' && DATA_RESOURCES[info.resource] !== undefined);
    if (mustDecode && !json && hasBody) {
      // Secret values in anything but JSON (YAML, a table in text) would pass undecoded.
      throw new CoatcheckError(
        'CC_ERR_K8S_RESPONSE_INVALID',
        'coatcheck: an answer holding Secrets, ConfigMaps or masked fields is not JSON; it was withheld',
      );
    }
    const rewrite = json && mustDecode;
    const stop = () => {
      if (signal.aborted || res.destroyed)
        throw session.terminatedBy !== null ? new Error('terminated') : new Error('client gone');
    };
    if (!hasBody) {
      await response.body.dump();
      res.writeHead(response.statusCode, out);
      res.end();
      summary.status = response.statusCode;
      return;
    }
    if (info.verb === 'watch' && response.statusCode === 200) {
      // One event per line: each is inspected whole and sent at once (nothing held back between events).
      res.writeHead(response.statusCode, out);
      // The answer head goes now: a watch may wait long for its first event.
      res.flushHeaders();
      summary.status = response.statusCode;
      let pending: Buffer = Buffer.alloc(0);
      let events = 0;
      // Events of Secrets and ConfigMaps are rewritten one by one; any other watch runs through
      // one stream scan fed whole lines, so an event goes out as soon as its line is complete.
      const scan = rewrite ? null : await this.#scan(session, prepared);
      const send = async (clean: Buffer) => {
        if (clean.length > 0 && !res.write(clean)) await drained(res);
        stop();
      };
      const emit = async (line: Buffer) => {
        if (line.length === 0) return;
        events++;
        if (scan === null)
          await send(
            Buffer.concat([
              await this.#rewrite(session, prepared, line.toString('utf8'), summary),
              Buffer.from('\n'),
            ]),
          );
        else await send(await scan.push(Buffer.concat([line, Buffer.from('\n')])));
      };
      for await (const chunk of source) {
        pending = pending.length === 0 ? (chunk as Buffer) : Buffer.concat([pending, chunk as Buffer]);
        let newline = pending.indexOf(0x0a);
        while (newline !== -1) {
          await emit(pending.subarray(0, newline));
          pending = pending.subarray(newline + 1);
          newline = pending.indexOf(0x0a);
        }
        if (pending.length > this.#options.bodyLimit) {
          throw new CoatcheckError(
            'CC_ERR_K8S_RESPONSE_TOO_LARGE',
            'coatcheck: a watch event is larger than http.bodyLimit',
          );
        }
      }
      await emit(pending);
      if (scan !== null) await send(await scan.end());
      summary.events = events;
      res.end();
      return;
    }
    if (rewrite) {
      const parts: Buffer[] = [];
      let size = 0;
      for await (const chunk of source) {
        size += (chunk as Buffer).length;
        if (size > this.#options.bodyLimit) {
          throw new CoatcheckError(
            'CC_ERR_K8S_RESPONSE_TOO_LARGE',
            'coatcheck: a response holding Secrets or ConfigMaps is larger than http.bodyLimit',
          );
        }
        parts.push(chunk as Buffer);
      }
      const clean = await this.#rewrite(session, prepared, Buffer.concat(parts).toString('utf8'), summary);
      stop();
      res.writeHead(response.statusCode, [...out, 'Content-Length', String(clean.length)]);
      res.end(clean);
      summary.status = response.statusCode;
      summary.responseBytes = clean.length;
      return;
    }
    // Anything else streams through the scanner, with backpressure from the client.
    const scan = await this.#scan(session, prepared);
    res.writeHead(response.statusCode, out);
    res.flushHeaders();
    summary.status = response.statusCode;
    let sent = 0;
    for await (const chunk of source) {
      const clean = await scan.push(chunk as Buffer);
      if (clean.length > 0) {
        sent += clean.length;
        if (!res.write(clean)) await drained(res);
        stop();
      }
    }
    const tail = await scan.end();
    sent += tail.length;
    res.end(tail);
    summary.responseBytes = sent;
  }

  /**
   * exec and attach over WebSocket: the same checks as any request (classification, policy,
   * approval, ticket exchange, audit first), then a relay that inspects every stdout, stderr
   * and error message. SPDY and port-forward are refused with a clear error.
   */
  async upgrade(req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    const { services } = this.#pipeline;
    const client = this.#client(req);
    client.summary.upgrade = String(req.headers.upgrade ?? '').slice(0, 32);
    let outcome: ErrorCode | 'ok' = 'ok';
    let joined = false;
    const close = () => this.#pipeline.closeSession(client.session, outcome, client.summary);
    try {
      if (String(req.headers.upgrade ?? '').toLowerCase() !== 'websocket') {
        throw new CoatcheckError(
          'CC_ERR_K8S_STREAM_UNSUPPORTED',
          'coatcheck: SPDY streams are not carried (their channels cannot be inspected); use kubectl 1.30 or newer, which speaks WebSocket (v5.channel.k8s.io)',
        );
      }
      checkClientHandshake(req, 'CC_ERR_K8S_REQUEST_INVALID');
      const protocols = offeredProtocols(req.headers['sec-websocket-protocol']);
      const prepared = await this.#prepare(client, true);
      this.#pipeline.forwarding(client.session, prepared.cleared);
      const url = new URL(`${prepared.origin}${prepared.path}`);
      const timeoutMs = Math.min(this.#options.upstreamTimeoutMs, 10_000);
      const upstream = await upgradeUpstream({
        url,
        headers: prepared.headers,
        protocols,
        tls: this.#options.pool.tls(prepared.view, prepared.credential),
        connect: this.#options.pool.connect(prepared.view, prepared.credential, url, timeoutMs),
        timeoutMs,
        signal: client.session.signal,
        log: services.log,
      }).catch((error: unknown) => {
        throw upstreamFailure(error, client.session.terminatedBy, true);
      });
      if (upstream.kind === 'refused') {
        // Not upgraded: the API server's answer (a Status), inspected, as a plain response.
        const clean = await this.#scanWhole(client.session, prepared, upstream.body);
        client.summary.status = upstream.status;
        socket.end(
          `HTTP/1.1 ${upstream.status} Upstream\r\ncontent-type: application/json\r\ncontent-length: ${clean.length}\r\nconnection: close\r\n\r\n${clean.toString('latin1')}`,
          'latin1',
        );
        return;
      }
      client.summary.status = 101;
      client.summary.protocol = upstream.protocol;
      joined = true;
      await relayChannels({
        req,
        client: socket,
        head,
        upstream,
        session: client.session,
        summary: client.summary,
        scan: () => this.#scan(client.session, prepared),
        onEnd: (code) => {
          if (code !== null) outcome = code;
          close();
        },
      });
    } catch (error) {
      const failure = mapFailure(error, services.log, this.name, { session: client.session.id });
      outcome = failure.code;
      client.summary.error = failure.code;
      services.metrics.refusals.inc({ frontend: this.name, code: failure.code });
      const body = statusBody(failure);
      socket.end(
        `HTTP/1.1 ${failure.status} Refused\r\ncontent-type: application/json\r\nx-coatcheck-error: ${failure.code}\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
    } finally {
      if (!joined) close();
    }
  }
}

/** A refusal as a Kubernetes Status object (mid-body: the connection is cut). */
export function sendStatus(req: IncomingMessage, res: ServerResponse, error: CoatcheckError): void {
  if (!req.complete) req.resume();
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = statusBody(error);
  res.writeHead(error.status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    'x-coatcheck-error': error.code,
    ...(req.complete ? {} : { connection: 'close' }),
  });
  res.end(body);
}
