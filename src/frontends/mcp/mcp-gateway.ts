import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import type { Principal } from '../../core/principal.js';
import { mapFailure } from '../../gateway/driver.js';
import { createFoundSecrets, type FoundSecrets } from '../../gateway/found-secrets.js';
import { type BodyBudget, type BodyReservation, readBody } from '../../gateway/http-io.js';
import { sharedKnownSecretIndex } from '../../gateway/known-secret-index.js';
import type { ExchangePipeline } from '../../gateway/pipeline.js';
import type { RelayDispatchers } from '../../gateway/relay-dispatchers.js';
import { GatewaySession } from '../../gateway/session.js';
import { MCP_ERROR_CODES, McpSession, type ToolVisibility } from './mcp-session.js';

/**
 * The MCP gateway on the HTTP listener: `/mcp/<connection>` speaks Streamable HTTP (the
 * official SDK's server transport) to MCP clients. Each MCP session is one gateway
 * session with its own upstream (a launched stdio server, or a Streamable HTTP client).
 * Every HTTP request of a session must carry the agent key of the principal that opened
 * it. See docs/mcp.md.
 */

export interface McpGatewayOptions {
  readonly bodyLimit: number;
  /** The in-flight body budget shared by this process's HTTP front-ends (bodies are read before authentication: global only). */
  readonly bodyBudget?: BodyBudget;
  readonly upstreamTimeoutMs: number;
  readonly maxTicketsPerRequest: number;
  readonly visible: ToolVisibility;
  /** Most concurrent MCP sessions (each may hold a child process). */
  readonly maxSessions?: number;
  /** A session idle this long is closed (its upstream stopped). */
  readonly idleMs?: number;
  readonly foundSecrets?: FoundSecrets;
  /** Dispatchers for connections that go through a relay (`via`). */
  readonly relays?: RelayDispatchers;
}

interface Live {
  readonly transport: StreamableHTTPServerTransport;
  readonly mcp: McpSession;
  readonly session: GatewaySession;
  readonly principal: Principal;
  readonly connection: string;
  lastUsed: number;
}

const ROUTE_RE = /^\/mcp\/([A-Za-z0-9_-]{1,63})\/?(?:\?.*)?$/;

/** The agent key: Proxy-Authorization, else `Authorization: Bearer` (what MCP clients send). */
export function mcpAgentKey(headers: IncomingMessage['headers']): string | null {
  for (const value of [headers['proxy-authorization'], headers.authorization]) {
    if (typeof value !== 'string') continue;
    const match = /^\s*Bearer\s+(\S{1,4096})\s*$/i.exec(value);
    if (match !== null) return match[1]!;
  }
  return null;
}

export class McpGateway {
  readonly name = 'mcp';
  readonly #pipeline: ExchangePipeline;
  readonly #options: McpGatewayOptions;
  readonly #found: FoundSecrets;
  readonly #sessions = new Map<string, Live>();
  readonly #sweeper: NodeJS.Timeout;

  constructor(pipeline: ExchangePipeline, options: McpGatewayOptions) {
    this.#pipeline = pipeline;
    this.#options = options;
    this.#found =
      options.foundSecrets ??
      createFoundSecrets(
        pipeline.services.vault,
        sharedKnownSecretIndex(pipeline.services.vault, pipeline.services.store),
      );
    const idleMs = options.idleMs ?? 30 * 60_000;
    this.#sweeper = setInterval(
      () => {
        const now = Date.now();
        for (const [id, live] of this.#sessions)
          if (now - live.lastUsed > idleMs) void this.#end(id, live, 'ok');
      },
      Math.min(idleMs, 60_000),
    );
    this.#sweeper.unref();
  }

  get sessions(): number {
    return this.#sessions.size;
  }

  async close(): Promise<void> {
    clearInterval(this.#sweeper);
    await Promise.all([...this.#sessions].map(([id, live]) => this.#end(id, live, 'ok')));
  }

  async #end(id: string, live: Live, outcome: ErrorCode | 'ok'): Promise<void> {
    if (!this.#sessions.delete(id)) return;
    await live.mcp.close();
    await live.transport.close().catch(() => undefined);
    this.#pipeline.closeSession(live.session, live.session.terminatedBy ?? outcome, {
      transport: 'streamable-http',
      calls: live.mcp.calls,
    });
  }

  /** A refusal outside any MCP session: JSON-RPC error body, HTTP status from the code. */
  #refuse(res: ServerResponse, error: CoatcheckError, id: unknown = null): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const rpc =
      error.code === 'CC_ERR_MCP_UPSTREAM_FAILED'
        ? MCP_ERROR_CODES.upstream
        : error.code === 'CC_ERR_INTERNAL'
          ? MCP_ERROR_CODES.internal
          : MCP_ERROR_CODES.refused;
    const body = JSON.stringify({
      jsonrpc: '2.0',
      id: typeof id === 'string' || typeof id === 'number' ? id : null,
      error: { code: rpc, message: error.message, data: { code: error.code } },
    });
    const headers: Record<string, string | number> = {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      'x-coatcheck-error': error.code,
    };
    if (error.code === 'CC_ERR_HTTP_PROXY_AUTH_REQUIRED')
      headers['www-authenticate'] = 'Bearer realm="coatcheck"';
    res.writeHead(error.status, headers);
    res.end(body);
  }

  async #readJson(req: IncomingMessage, reservation: BodyReservation | undefined): Promise<unknown> {
    const body = (await readBody(req, this.#options.bodyLimit, reservation)) ?? Buffer.alloc(0);
    try {
      return JSON.parse(body.toString('utf8'));
    } catch {
      throw new CoatcheckError('CC_ERR_HTTP_BAD_REQUEST', 'the MCP request body is not valid JSON');
    }
  }

  /** Serve one HTTP request under /mcp/. */
  async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let requestId: unknown = null;
    let opened: GatewaySession | null = null;
    const reservation = this.#options.bodyBudget?.open(null);
    try {
      const match = ROUTE_RE.exec(req.url ?? '');
      if (match === null) throw new CoatcheckError('CC_ERR_NOT_FOUND', 'MCP endpoints are /mcp/<connection>');
      const connectionName = match[1]!;
      const sessionId = req.headers['mcp-session-id'];
      const key = mcpAgentKey(req.headers);
      const body = req.method === 'POST' ? await this.#readJson(req, reservation) : undefined;
      if (body !== undefined && typeof body === 'object' && body !== null && 'id' in body)
        requestId = (body as { id: unknown }).id;

      if (typeof sessionId === 'string') {
        const live = this.#sessions.get(sessionId);
        if (live === undefined || live.connection !== connectionName)
          throw new CoatcheckError(
            'CC_ERR_NOT_FOUND',
            'no such MCP session (it ended or expired); initialize again',
          );
        // Every request re-authenticates, and must be the principal that opened the session.
        if (key === null)
          throw new CoatcheckError(
            'CC_ERR_HTTP_PROXY_AUTH_REQUIRED',
            'an agent key is required (Authorization: Bearer <agent key>)',
          );
        const principal = await this.#pipeline.services.agents.authenticate(key);
        if (principal.ref !== live.principal.ref)
          throw new CoatcheckError(
            'CC_ERR_NOT_FOUND',
            'no such MCP session (it ended or expired); initialize again',
          );
        live.lastUsed = Date.now();
        await live.transport.handleRequest(req, res, body);
        if (req.method === 'DELETE') await this.#end(sessionId, live, 'ok');
        return;
      }

      if (req.method !== 'POST' || !isInitializeRequest(body)) {
        throw new CoatcheckError(
          'CC_ERR_HTTP_BAD_REQUEST',
          'a request without Mcp-Session-Id must be an initialize request',
        );
      }
      if (this.#sessions.size >= (this.#options.maxSessions ?? 256))
        throw new CoatcheckError(
          'CC_ERR_MCP_UPSTREAM_FAILED',
          'the gateway holds its maximum of MCP sessions; retry later',
        );

      const session = this.#pipeline.openSession(
        new GatewaySession(this.name, this.#pipeline.services.clock),
      );
      opened = session;
      const principal = await this.#pipeline.authenticate(session, key);
      const connection = await this.#pipeline.resolveConnection(session, connectionName, ['mcp']);
      const mcp = await McpSession.open({
        pipeline: this.#pipeline,
        session,
        principal,
        connection,
        foundSecrets: this.#found,
        visible: this.#options.visible,
        maxTickets: this.#options.maxTicketsPerRequest,
        upstreamTimeoutMs: this.#options.upstreamTimeoutMs,
        ...(this.#options.relays === undefined ? {} : { relays: this.#options.relays }),
      });
      let live: Live | null = null;
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => {
          live = { transport, mcp, session, principal, connection: connectionName, lastUsed: Date.now() };
          this.#sessions.set(id, live);
        },
      });
      transport.onclose = () => {
        const id = transport.sessionId;
        const current = id === undefined ? undefined : this.#sessions.get(id);
        if (id !== undefined && current !== undefined) void this.#end(id, current, 'ok');
      };
      // Revocation of the agent or a ticket the session used ends the MCP session.
      session.signal.addEventListener('abort', () => {
        const id = transport.sessionId;
        const current = id === undefined ? undefined : this.#sessions.get(id);
        if (id !== undefined && current !== undefined)
          void this.#end(id, current, session.terminatedBy ?? 'ok');
      });
      await mcp.connect(transport);
      opened = null; // owned by the session map from here (or closed below)
      await transport.handleRequest(req, res, body);
      if (live === null) {
        await mcp.close();
        this.#pipeline.closeSession(session, 'ok', { transport: 'streamable-http', initialized: false });
      }
    } catch (error) {
      // The driver's one mapping: an unexpected failure is logged under an incident id, without its message.
      const failure = mapFailure(error, this.#pipeline.services.log, this.name);
      this.#pipeline.services.metrics.refusals.inc({ frontend: this.name, code: failure.code });
      if (opened !== null)
        this.#pipeline.closeSession(opened, failure.code, { transport: 'streamable-http' });
      this.#refuse(res, failure, requestId);
      if (!req.complete) req.resume();
    } finally {
      reservation?.release();
    }
  }
}
