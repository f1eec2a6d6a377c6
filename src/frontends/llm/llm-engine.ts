import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { pipeline as pipe } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { ConnectionView } from '../../connections/connections.js';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import type { Principal } from '../../core/principal.js';
import { scanHeaders } from '../../gateway/detector-inspector.js';
import { mapFailure } from '../../gateway/driver.js';
import type { Engine } from '../../gateway/engine.js';
import {
  createFoundSecrets,
  type FoundSecrets,
  hasDuplicateKeys,
  type JsonValue,
  rewriteJsonStrings,
} from '../../gateway/found-secrets.js';
import { safeName } from '../../gateway/hooks.js';
import {
  type BodyBudget,
  drained,
  readBody,
  responseDecoders,
  UpstreamAbort,
  upstreamFailure,
} from '../../gateway/http-io.js';
import type { ResponseScan } from '../../gateway/inspector.js';
import { sharedKnownSecretIndex } from '../../gateway/known-secret-index.js';
import { countHttpRequest } from '../../gateway/metrics.js';
import type { ExchangePipeline, Operation } from '../../gateway/pipeline.js';
import type { RelayDispatchers } from '../../gateway/relay-dispatchers.js';
import { GatewaySession } from '../../gateway/session.js';
import { MAX_HEADER_TEXT, recordedHeaders, responseRecorder } from '../../recording/http-capture.js';
import { clip, clipText } from '../../recording/model.js';
import type { Target } from '../../vault/destinations.js';
import { attachmentBytes } from './attachments.js';

/**
 * The LLM prompt guard: `/llm/<connection>/v1/…` → the provider's base URL. Every secret
 * in the JSON request (messages, system prompt, tool results, tool-call arguments) is
 * replaced by a ticket bound to the caller before the request leaves; the provider's key
 * is injected; the response (JSON or SSE) streams back through the known-secret
 * inspector. See docs/llm.md.
 */

export interface LlmEngineOptions {
  readonly bodyLimit: number;
  /** The in-flight body budget shared by this process's HTTP front-ends. */
  readonly bodyBudget?: BodyBudget;
  readonly upstreamTimeoutMs: number;
  readonly dispatcher: Dispatcher;
  /** Dispatchers for connections that go through a relay (`via`); absent: such connections are refused. */
  readonly relays?: RelayDispatchers;
  /** Replace the scanner (tests). */
  readonly foundSecrets?: FoundSecrets;
}

export interface LlmClient {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly session: GatewaySession;
  readonly summary: Record<string, unknown>;
}

/** Endpoints the guard serves, and whose key header the provider expects. */
const ENDPOINTS: Readonly<Record<string, { method: string; provider: 'openai' | 'anthropic' }>> = {
  '/v1/chat/completions': { method: 'POST', provider: 'openai' },
  '/v1/responses': { method: 'POST', provider: 'openai' },
  '/v1/messages': { method: 'POST', provider: 'anthropic' },
  '/v1/messages/count_tokens': { method: 'POST', provider: 'anthropic' },
  '/v1/models': { method: 'GET', provider: 'openai' },
};

const ROUTE_RE = /^\/llm\/([A-Za-z0-9_-]{1,63})(\/[^?]*)?(?:\?(.*))?$/;

/** Client headers never forwarded: the gateway's own credentials, framing, and encodings it must see through. */
const DROP_HEADERS = new Set([
  'host',
  'content-length',
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
  'accept-encoding',
  'authorization',
  'x-api-key',
  'api-key',
  'cookie',
]);

export function parseLlmRoute(raw: string): { connection: string; path: string; query: string | null } {
  const match = ROUTE_RE.exec(raw);
  if (match === null)
    throw new CoatcheckError('CC_ERR_LLM_ROUTE', 'requests must go to /llm/<connection>/v1/<api>');
  const path = match[2] ?? '/';
  if (!(path in ENDPOINTS)) {
    throw new CoatcheckError(
      'CC_ERR_LLM_ROUTE',
      `the LLM guard does not serve ${path.slice(0, 64)}; it serves ${Object.keys(ENDPOINTS).join(', ')}`,
    );
  }
  return { connection: match[1]!, path, query: match[3] ?? null };
}

/** The agent key: Proxy-Authorization, else the SDK's own `Authorization: Bearer` or `x-api-key`. */
export function llmAgentKey(headers: IncomingMessage['headers']): string | null {
  for (const value of [headers['proxy-authorization'], headers.authorization]) {
    if (typeof value !== 'string') continue;
    const match = /^\s*Bearer\s+(\S{1,4096})\s*$/i.exec(value);
    if (match !== null) return match[1]!;
  }
  const apiKey = headers['x-api-key'];
  if (typeof apiKey === 'string' && apiKey.trim() !== '' && apiKey.length <= 4096) return apiKey.trim();
  return null;
}

/** Provider path below the connection's base URL (a base URL ending in /v1 is not doubled). */
export function providerPath(base: URL, path: string, query: string | null): string {
  let prefix = base.pathname.endsWith('/') ? base.pathname.slice(0, -1) : base.pathname;
  if (prefix.endsWith('/v1') && path.startsWith('/v1/')) prefix = prefix.slice(0, -3);
  return `${prefix}${path}${query === null ? '' : `?${query}`}`;
}

export class LlmEngine implements Engine<LlmClient> {
  readonly name = 'llm';
  readonly #pipeline: ExchangePipeline;
  readonly #options: LlmEngineOptions;
  readonly #found: FoundSecrets;

  constructor(pipeline: ExchangePipeline, options: LlmEngineOptions) {
    if (options.dispatcher === undefined || options.dispatcher === null) {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_MISCONFIGURED',
        'the LLM guard was started without an upstream dispatcher',
      );
    }
    this.#pipeline = pipeline;
    this.#options = options;
    this.#found =
      options.foundSecrets ??
      createFoundSecrets(
        pipeline.services.vault,
        sharedKnownSecretIndex(pipeline.services.vault, pipeline.services.store),
      );
  }

  client(req: IncomingMessage, res: ServerResponse): LlmClient {
    const session = this.#pipeline.openSession(new GatewaySession(this.name, this.#pipeline.services.clock));
    return { req, res, session, summary: { method: req.method } };
  }

  /** The dispatcher for a connection: the shared one, or its relay's. */
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

  async initialize(client: LlmClient): Promise<void> {
    if (client.req.headers.upgrade !== undefined)
      throw new CoatcheckError(
        'CC_ERR_HTTP_UNSUPPORTED',
        'protocol upgrades are not served by the LLM guard',
      );
  }

  sendError(client: LlmClient, error: CoatcheckError): void {
    const { req, res } = client;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    // The shape both OpenAI and Anthropic SDKs read: `error.message`, plus our stable code.
    const body = JSON.stringify({
      type: 'error',
      error: { type: 'coatcheck_error', code: error.code, message: error.message },
    });
    const headers: Record<string, string | number> = {
      'content-type': 'application/json; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
      'x-coatcheck-error': error.code,
    };
    if (!req.complete) headers.connection = 'close';
    res.writeHead(error.status, headers);
    res.end(body);
  }

  /** The model name as policy and audit see it: a secret put there is replaced by its fingerprint. */
  async #modelLabel(principal: Principal, model: string): Promise<string> {
    if (model === '' || /^[A-Za-z0-9._:/@-]{1,128}$/.test(model) === false)
      return model === '' ? '' : 'other';
    try {
      const scan = await this.#found.begin({
        principal: principal.ref,
        source: 'llm',
        actor: `gateway:${this.name}`,
      });
      const findings = scan.findIn(Buffer.from(model, 'latin1'));
      return findings.length === 0 ? model : `[REDACTED:${findings[0]!.fingerprint}]`;
    } catch (error) {
      throw new CoatcheckError(
        'CC_ERR_LLM_SCAN_FAILED',
        'the request could not be scanned for secrets; it was not sent to the model provider',
        { cause: error },
      );
    }
  }

  /** Secrets in forwarded header values and the query string become tickets too (fail closed). */
  async #scanTexts(session: GatewaySession, principal: Principal, texts: string[]): Promise<string[]> {
    try {
      const scan = await this.#found.begin({
        principal: principal.ref,
        source: 'llm',
        actor: `gateway:${this.name}`,
        context: { frontend: this.name, session: session.id },
        onTicket: (ticketId, secretId) => {
          session.ticketIds.add(ticketId);
          session.secretIds.add(secretId);
          session.event('prompt.secret', { ticket: ticketId, secret: secretId });
        },
      });
      const out: string[] = [];
      for (const text of texts) out.push(await scan.text(text));
      return out;
    } catch (error) {
      throw new CoatcheckError(
        'CC_ERR_LLM_SCAN_FAILED',
        'the request could not be scanned for secrets; it was not sent to the model provider',
        { cause: error },
      );
    }
  }

  /** Replace every secret in the JSON body by a ticket; refuse attachments that hold one. */
  async #scanBody(
    session: GatewaySession,
    principal: Principal,
    body: Buffer,
    summary: Record<string, unknown>,
  ): Promise<{ body: Buffer; model: string }> {
    let parsed: JsonValue;
    try {
      parsed = JSON.parse(body.toString('utf8')) as JsonValue;
    } catch {
      throw new CoatcheckError('CC_ERR_LLM_BAD_REQUEST', 'the request body is not valid JSON');
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
      throw new CoatcheckError('CC_ERR_LLM_BAD_REQUEST', 'the request body must be a JSON object');
    // The provider's parser may keep the first of two equal keys where JSON.parse keeps the last.
    if (hasDuplicateKeys(body.toString('utf8')))
      throw new CoatcheckError('CC_ERR_LLM_BAD_REQUEST', 'the request body repeats a key in some object');
    const model = typeof parsed.model === 'string' ? parsed.model.slice(0, 128) : '';
    let attachments = 0;
    try {
      const scan = await this.#found.begin({
        principal: principal.ref,
        source: 'llm',
        actor: `gateway:${this.name}`,
        context: { frontend: this.name, session: session.id },
        onTicket: (ticketId, secretId) => {
          session.ticketIds.add(ticketId);
          session.secretIds.add(secretId);
          session.event('prompt.secret', { ticket: ticketId, secret: secretId });
        },
      });
      const rewritten = await rewriteJsonStrings(
        parsed,
        async (text, site) => {
          const bytes = site.isKey === true ? null : attachmentBytes(text, site);
          if (bytes !== null) {
            attachments++;
            const findings = scan.findIn(bytes);
            if (findings.length > 0) {
              const first = findings[0]!;
              throw new CoatcheckError(
                'CC_ERR_LLM_ATTACHMENT_SECRET',
                `the attachment at ${site.path.join('.').slice(0, 200)} contains a secret (${first.ruleId}, fingerprint ${first.fingerprint}); it was not sent`,
                { details: { rule: first.ruleId, fingerprint: first.fingerprint } },
              );
            }
          }
          return scan.text(text);
        },
        undefined,
        { keys: true },
      );
      summary.attachments = attachments;
      summary.promptSecrets = scan.replaced;
      return {
        body: scan.replaced === 0 ? body : Buffer.from(JSON.stringify(rewritten), 'utf8'),
        model,
      };
    } catch (error) {
      if (error instanceof CoatcheckError && error.code === 'CC_ERR_LLM_ATTACHMENT_SECRET') throw error;
      if (error instanceof CoatcheckError && error.code === 'CC_ERR_INVALID_ARGUMENT')
        throw new CoatcheckError('CC_ERR_LLM_BAD_REQUEST', error.message);
      // Fail closed: a prompt that could not be scanned is never sent.
      throw new CoatcheckError(
        'CC_ERR_LLM_SCAN_FAILED',
        'the request could not be scanned for secrets; it was not sent to the model provider',
        { cause: error },
      );
    }
  }

  async handle(client: LlmClient): Promise<void> {
    const { req, session, summary } = client;
    const pipeline = this.#pipeline;
    await this.initialize(client);

    const agentKey = llmAgentKey(req.headers);
    const principal = await pipeline.authenticate(session, agentKey);
    const route = parseLlmRoute(req.url ?? '/');
    const endpoint = ENDPOINTS[route.path]!;
    summary.path = route.path;
    const connection = await pipeline.resolveConnection(session, route.connection, ['llm']);
    const method = req.method ?? 'GET';
    if (method !== endpoint.method) {
      throw new CoatcheckError('CC_ERR_LLM_ROUTE', `${route.path} is served for ${endpoint.method} only`);
    }

    let body: Buffer | null = null;
    if (method === 'POST') {
      const type = String(req.headers['content-type'] ?? '').toLowerCase();
      if (!type.startsWith('application/json'))
        throw new CoatcheckError('CC_ERR_LLM_BAD_REQUEST', 'LLM requests must be application/json');
      const encoding = String(req.headers['content-encoding'] ?? 'identity').toLowerCase();
      if (encoding !== 'identity')
        throw new CoatcheckError('CC_ERR_LLM_BAD_REQUEST', 'compressed request bodies are not accepted');
      const reservation = this.#options.bodyBudget?.open(principal.ref);
      if (reservation !== undefined) session.cleanups.push(() => reservation.release());
      body = (await readBody(req, this.#options.bodyLimit, reservation)) ?? Buffer.alloc(0);
      summary.requestBytes = body.length;
    }
    // The agent key authenticates to the gateway only.
    if (agentKey !== null && body?.includes(agentKey)) {
      throw new CoatcheckError(
        'CC_ERR_HTTP_AGENT_KEY_FORWARDED',
        'the agent key appears in the request body; it is never forwarded upstream',
      );
    }

    const peek = await this.#modelLabel(
      principal,
      body === null
        ? ''
        : (/"model"\s*:\s*"([^"\\]{0,128})"/.exec(body.subarray(0, 4096).toString('utf8'))?.[1] ?? ''),
    );
    const operation: Operation = {
      action: 'llm:call',
      description: `${method} ${connection.url.host}${route.path}${peek === '' ? '' : ` model=${peek}`}`,
      attributes: { method, path: route.path, host: connection.target.host ?? '', model: peek },
      // What an approver reads (cleaned by the approvals module). The approval is bound to
      // the method, path and model, not to the prompt: the preview says so.
      preview: () =>
        `${method} ${connection.url.origin}${route.path}${peek === '' ? '' : `\nmodel: ${peek}`}\n` +
        '[the approval covers any call with this method, path and model; the body below is this call’s]' +
        (body === null || body.length === 0 ? '' : `\n\n${body.toString('utf8')}`),
    };
    const decision = await pipeline.decide(session, {
      principal,
      connection: connection.view,
      target: connection.target,
      operation,
    });
    summary.decision = 'allow';

    const scanned = body === null ? null : await this.#scanBody(session, principal, body, summary);
    summary.model = await this.#modelLabel(principal, scanned?.model ?? '');
    const forwarded: Array<[string, string]> = [];
    const raw = req.rawHeaders;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i]!;
      if (DROP_HEADERS.has(name.toLowerCase())) continue;
      if (agentKey !== null && raw[i + 1]!.includes(agentKey)) continue;
      forwarded.push([name, raw[i + 1]!]);
    }
    const [query, ...values] = await this.#scanTexts(session, principal, [
      route.query ?? '',
      ...forwarded.map(([, value]) => value),
    ]);

    // The provider key, injected (never from the client): x-api-key for Anthropic's API, Bearer otherwise.
    const view = connection.view;
    const templates: Record<string, string> = { ...view.injectHeaders };
    const explicit = Object.keys(templates).map((h) => h.toLowerCase());
    if (view.credential !== null && !explicit.includes('authorization') && !explicit.includes('x-api-key')) {
      if (endpoint.provider === 'anthropic') templates['x-api-key'] = `{{secret:${view.credential}}}`;
      else templates.Authorization = `Bearer {{secret:${view.credential}}}`;
    }
    const request = { authorized: decision, principal, target: connection.target, operation };
    // The release and the request record share one group commit; both (and the decision's
    // record) are durable before anything leaves.
    const recorded = pipeline.services.audit.append({
      type: 'llm.request',
      actor: principal.ref,
      data: {
        session: session.id,
        connection: view.name,
        endpoint: route.path,
        // The summary is an untyped bag; these three were set above as a string and counts.
        model: summary.model as string,
        promptSecrets: (summary.promptSecrets as number | undefined) ?? 0,
        attachments: (summary.attachments as number | undefined) ?? 0,
        tickets: [...session.ticketIds],
      },
    });
    recorded.catch(() => undefined); // awaited below
    const injected = await pipeline.credentials(
      session,
      { ...view, injectHeaders: templates, credential: null },
      request,
    );

    if (session.recording !== null) {
      // The request as forwarded: the prompt with its secrets already tickets; the agent key
      // (never forwarded) and the injected provider key are not in it.
      const limit = session.recording.limits.maxBodyBytes;
      const sent = scanned?.body ?? body;
      session.record('http.request', 'in', {
        method,
        url: clipText(`${route.path}${route.query === null ? '' : `?${query!}`}`, MAX_HEADER_TEXT),
        httpVersion: req.httpVersion,
        headers: recordedHeaders(forwarded.flatMap(([name], i) => [name, values[i]!])),
        ...(sent === null || sent.length === 0 ? {} : { body: clip(sent, limit) }),
      });
    }
    const headers: string[] = [];
    forwarded.forEach(([name], i) => {
      if (!injected.has(name)) headers.push(name, values[i]!);
    });
    for (const [name, value] of injected) {
      if (/[\r\n\0]/.test(value))
        throw new CoatcheckError(
          'CC_ERR_HTTP_INJECTION_UNSAFE',
          `the injected ${name} header is not header-safe`,
        );
      headers.push(name, value);
    }
    headers.push('accept-encoding', 'identity');

    const cleared = await pipeline.clear(session, decision);
    await recorded;

    const signal = new UpstreamAbort(session, client.res);
    const started = performance.now();
    let response: Dispatcher.ResponseData;
    pipeline.forwarding(session, cleared);
    try {
      response = await this.#dispatcherFor(connection.view).request({
        origin: connection.url.origin,
        path: providerPath(connection.url, route.path, route.query === null ? null : query!),
        method: method as Dispatcher.HttpMethod,
        headers,
        body: scanned?.body ?? null,
        signal,
        headersTimeout: this.#options.upstreamTimeoutMs,
        bodyTimeout: this.#options.upstreamTimeoutMs,
      });
    } catch (error) {
      signal.release();
      throw upstreamFailure(error, session.terminatedBy);
    }
    summary.upstreamStatus = response.statusCode;
    try {
      await this.#respond(client, response, principal, connection.target);
    } catch (error) {
      response.body.on('error', () => undefined);
      response.body.destroy();
      throw upstreamFailure(error, session.terminatedBy);
    } finally {
      signal.release();
      summary.upstreamMs = Math.round(performance.now() - started);
    }
  }

  async #respond(
    client: LlmClient,
    response: Dispatcher.ResponseData,
    principal: Principal,
    target: Target,
  ): Promise<void> {
    const { res, session, summary } = client;
    const inspection = <T>(work: () => Promise<T>): Promise<T> =>
      work().catch((error: unknown) => {
        throw new CoatcheckError('CC_ERR_GATEWAY_INSPECTION_FAILED', 'the response could not be inspected', {
          cause: error,
        });
      });
    const scan: ResponseScan = await inspection(() => this.#pipeline.inspect(session, principal, target));
    const decoders = responseDecoders(response.headers);
    if (decoders === 'unsupported') {
      throw new CoatcheckError(
        'CC_ERR_GATEWAY_UPSTREAM_ENCODING',
        'the model provider answered with a content encoding the gateway cannot inspect',
      );
    }
    // The header block in one scan, names too (an upstream can put anything before the colon).
    const block: string[] = [];
    for (const [name, value] of Object.entries(response.headers)) {
      const lower = name.toLowerCase();
      if (value === undefined || DROP_HEADERS.has(lower) || lower === 'set-cookie') continue;
      if (lower === 'content-encoding' && decoders.length > 0) continue;
      for (const item of Array.isArray(value) ? value : [value]) block.push(name, item);
    }
    const out = await inspection(() => scanHeaders(scan, block));
    res.writeHead(response.statusCode, out);
    // What the agent received, after inspection (the model's answer with secrets as tickets).
    const recorder = responseRecorder(
      session,
      response.statusCode,
      out,
      String(response.headers['content-type'] ?? ''),
    );
    // SSE: send each event as soon as it is scanned.
    res.flushHeaders();
    summary.status = response.statusCode;
    const source: Readable =
      decoders.length === 0
        ? response.body
        : ((pipe as (...streams: unknown[]) => unknown)(
            response.body,
            ...decoders,
            () => undefined,
          ) as Readable);
    let sent = 0;
    for await (const chunk of source) {
      const clean = await inspection(() => scan.push(chunk as Buffer));
      if (clean.length > 0) {
        sent += clean.length;
        recorder?.chunk(clean);
        if (!res.write(clean)) await drained(res);
        if (res.destroyed) throw new Error('client gone');
      }
    }
    const tail = await inspection(() => scan.end());
    sent += tail.length;
    recorder?.chunk(tail);
    res.end(tail);
    recorder?.end();
    summary.responseBytes = sent;
    summary.responseSecrets = [...scan.findings.values()].reduce((a, b) => a + b, 0);
  }

  /** Run one request end to end: errors in the client's protocol, metrics, recording. */
  async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const { services } = this.#pipeline;
    const client = this.client(req, res);
    const started = performance.now();
    let outcome: ErrorCode | 'ok' = 'ok';
    try {
      await this.handle(client);
    } catch (error) {
      // The driver's one mapping: an unexpected failure is logged under an incident id, without its message.
      const failure = mapFailure(error, services.log, this.name, { session: client.session.id });
      outcome = failure.code;
      if (failure.code === 'CC_ERR_LLM_SCAN_FAILED') {
        services.log.error(
          { session: client.session.id, code: failure.code, errName: safeName(failure.cause) },
          'llm guard failure',
        );
      }
      services.metrics.refusals.inc({ frontend: this.name, code: failure.code });
      client.summary.error = failure.code;
      this.sendError(client, failure);
      client.session.record('gateway.refused', 'gateway', {
        code: failure.code,
        status: failure.status,
        message: clipText(failure.message, 1024),
      });
      if (!req.complete) req.resume();
    } finally {
      countHttpRequest(services.metrics, this.name, { req, res, summary: client.summary }, started);
      this.#pipeline.closeSession(client.session, outcome, client.summary);
    }
  }
}
