/**
 * One MCP session through the gateway: a downstream `Server` (what the agent's MCP client
 * talks to) in front of an upstream `Client` (the real MCP server, launched over stdio or
 * reached over Streamable HTTP). Both are the official SDK's.
 *
 *   tools/list      upstream list, filtered by policy (mcp:call, context.tool)
 *   tools/call      decide (deny / approval hold) → exchange tickets in the arguments
 *                   (bound to this connection) → call upstream → every secret in the
 *                   result becomes a ticket bound to the caller → audit `mcp.call`
 *   resources/*, prompts/*   decided the same way (tool = `resource:<uri>`, `prompt:<name>`),
 *                   results scanned the same way
 *
 * The upstream's credentials (env for stdio, headers for HTTP) are released by the
 * gateway when it starts the upstream; the client never sees them.
 */

import { createHash } from 'node:crypto';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { getDefaultEnvironment, StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  CallToolRequestSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  McpError,
  ReadResourceRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { type Dispatcher, fetch as undiciFetch } from 'undici';
import { CoatcheckError, type ErrorCode } from '../../core/errors.js';
import type { Principal } from '../../core/principal.js';
import type { Authorized, Cleared } from '../../gateway/authorized.js';
import type { FoundSecrets, JsonValue } from '../../gateway/found-secrets.js';
import { rewriteJsonStrings } from '../../gateway/found-secrets.js';
import type { ExchangePipeline, Operation, ResolvedConnection } from '../../gateway/pipeline.js';
import type { RelayDispatchers } from '../../gateway/relay-dispatchers.js';
import type { GatewaySession } from '../../gateway/session.js';
import { clip } from '../../recording/model.js';
import type { Target } from '../../vault/destinations.js';
import { Vault } from '../../vault/vault.js';
import { parseStdioUrl } from './command.js';

/** Whether policy lets `principal` see a tool (allow or approval-required); no approval is requested. */
export type ToolVisibility = (principal: Principal, connection: string, tool: string) => boolean;

/** JSON-RPC error codes the gateway answers with (server-defined range); `data.code` carries the CC_ERR_ code. */
export const MCP_ERROR_CODES = {
  refused: -32010,
  upstream: -32011,
  ticket: -32012,
  internal: -32603,
} as const;

/** Environment variable the connection's --credential is passed in to a stdio server (unless inject headers name others). */
export const STDIO_CREDENTIAL_ENV = 'COATCHECK_CREDENTIAL';

const CLIENT_INFO = { name: 'coatcheck-gateway', version: '0.1.0' };

export function toMcpError(error: CoatcheckError): McpError {
  const code: ErrorCode = error.code;
  const rpc =
    code === 'CC_ERR_MCP_UPSTREAM_FAILED' ||
    code === 'CC_ERR_GATEWAY_UPSTREAM_UNREACHABLE' ||
    code === 'CC_ERR_GATEWAY_UPSTREAM_TIMEOUT'
      ? MCP_ERROR_CODES.upstream
      : code.startsWith('CC_ERR_TICKET_')
        ? MCP_ERROR_CODES.ticket
        : code === 'CC_ERR_INTERNAL'
          ? MCP_ERROR_CODES.internal
          : MCP_ERROR_CODES.refused;
  return new McpError(rpc, error.message, { code });
}

export interface McpSessionOptions {
  readonly pipeline: ExchangePipeline;
  readonly session: GatewaySession;
  readonly principal: Principal;
  readonly connection: ResolvedConnection;
  readonly foundSecrets: FoundSecrets;
  readonly visible: ToolVisibility;
  /** Most tickets one call's arguments may carry. */
  readonly maxTickets: number;
  readonly upstreamTimeoutMs: number;
  /** Dispatchers for connections that go through a relay (`via`); absent: such connections are refused. */
  readonly relays?: RelayDispatchers;
}

interface Upstream {
  readonly client: Client;
  closed: boolean;
}

function upstreamFailed(what: string, cause?: unknown): CoatcheckError {
  return new CoatcheckError(
    'CC_ERR_MCP_UPSTREAM_FAILED',
    `the MCP server behind this connection ${what}`,
    cause === undefined ? undefined : { cause },
  );
}

/** The target a stdio connection's tickets are bound to is the connection alone (no host). */
export function mcpTarget(connection: ResolvedConnection): Target {
  return connection.url.protocol === 'stdio:' ? { connection: connection.view.name } : connection.target;
}

/** Arguments indented for a human; as sent when they are not JSON. */
function prettyJson(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text), null, 2) ?? text;
  } catch {
    return text;
  }
}

export class McpSession {
  readonly server: Server;
  readonly #o: McpSessionOptions;
  readonly #target: Target;
  #upstream: Promise<Upstream> | null = null;
  #closed = false;
  calls = 0;

  private constructor(options: McpSessionOptions, capabilities: Record<string, unknown>) {
    this.#o = options;
    this.#target = mcpTarget(options.connection);
    this.server = new Server(
      { name: `coatcheck/${options.connection.view.name}`, version: '0.1.0' },
      { capabilities },
    );
    this.#register(capabilities);
  }

  /** Start the upstream (its credentials released and audited), then build the downstream server mirroring its capabilities. */
  static async open(options: McpSessionOptions): Promise<McpSession> {
    const probe = new McpSessionStarter(options);
    const upstream = await probe.start();
    const caps = upstream.client.getServerCapabilities() ?? {};
    const capabilities: Record<string, unknown> = {};
    if (caps.tools !== undefined) capabilities.tools = {};
    if (caps.resources !== undefined) capabilities.resources = {};
    if (caps.prompts !== undefined) capabilities.prompts = {};
    const session = new McpSession(options, capabilities);
    session.#upstream = Promise.resolve(upstream);
    session.#watch(upstream);
    return session;
  }

  async connect(transport: Transport): Promise<void> {
    await this.server.connect(transport);
    const { session } = this.#o;
    const recording = session.recording;
    if (recording === null) return;
    // The JSON-RPC messages as the client sent them (tickets) and as it received them
    // (results already scanned: secrets are tickets).
    const limit = recording.limits.maxBodyBytes;
    const received = transport.onmessage;
    transport.onmessage = (message, extra) => {
      session.record('mcp.message', 'in', { message: clip(JSON.stringify(message), limit) });
      received?.(message, extra);
    };
    const send = transport.send.bind(transport);
    transport.send = (message, options) => {
      session.record('mcp.message', 'out', { message: clip(JSON.stringify(message), limit) });
      return send(message, options);
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const upstream = await this.#upstream?.catch(() => null);
    await upstream?.client.close().catch(() => undefined);
    await this.server.close().catch(() => undefined);
  }

  #watch(upstream: Upstream): void {
    upstream.client.onclose = () => {
      upstream.closed = true;
      this.#o.session.event('mcp.upstream.closed', {});
    };
  }

  /** The upstream client; started again if it exited (the next call gets a fresh server). */
  async #client(): Promise<Client> {
    if (this.#closed) throw upstreamFailed('session is closed');
    let current = this.#upstream === null ? null : await this.#upstream.catch(() => null);
    if (current === null || current.closed) {
      this.#upstream = new McpSessionStarter(this.#o).start();
      current = await this.#upstream;
      this.#watch(current);
    }
    return current.client;
  }

  /**
   * The policy step. Resolves once allowed; `recorded` is the decision's audit record, which
   * must be durable before anything is sent upstream (it shares the group commit with the
   * ticket releases that follow, so awaiting it after them rarely waits).
   */
  async #decide(
    tool: string,
    argumentsJson: string,
    what: string,
  ): Promise<{ operation: Operation; authorized: Authorized }> {
    const { pipeline, session, principal, connection } = this.#o;
    const operation: Operation = {
      action: 'mcp:call',
      description: `${what} on ${connection.view.name}`,
      attributes: {
        tool,
        argumentsSha256: createHash('sha256').update(argumentsJson).digest('hex'),
      },
      // What an approver reads (cleaned by the approvals module): the tool and its arguments.
      preview: () => `${what}\ntool: ${tool}\narguments:\n${prettyJson(argumentsJson)}`,
    };
    let authorized: Authorized;
    try {
      authorized = await pipeline.decide(session, {
        principal,
        connection: connection.view,
        target: this.#target,
        operation,
      });
    } catch (error) {
      if (error instanceof CoatcheckError && error.code === 'CC_ERR_POLICY_DENIED') {
        throw new CoatcheckError(
          'CC_ERR_MCP_TOOL_FORBIDDEN',
          `policy does not allow ${tool.slice(0, 200)} on connection ${connection.view.name}`,
          { details: error.details === undefined ? undefined : { ...error.details } },
        );
      }
      throw error;
    }
    return { operation, authorized };
  }

  /** Every secret in an upstream answer becomes a ticket bound to the caller (known secrets: to this connection). */
  async #scan<T>(value: T, parents: readonly string[] = []): Promise<T> {
    const { session, principal, connection } = this.#o;
    const scan = await this.#o.foundSecrets.begin({
      principal: principal.ref,
      source: 'mcp',
      actor: 'gateway:mcp',
      knownDestinations: [`conn:${connection.view.name}`],
      // Tickets for secrets in a tool result are children of the tickets the call exchanged.
      parents,
      context: { frontend: 'mcp', session: session.id },
      onTicket: (ticketId, secretId) => {
        session.ticketIds.add(ticketId);
        session.secretIds.add(secretId);
        session.event('mcp.result.secret', { ticket: ticketId, secret: secretId });
      },
    });
    const out = await rewriteJsonStrings(value as JsonValue, (text) => scan.text(text), undefined, {
      keys: true,
    });
    return out as T;
  }

  /** Tickets in the arguments, exchanged for this connection (each release audited first). */
  async #exchangeArguments(
    args: Record<string, unknown> | undefined,
    operation: Operation,
    authorized: Authorized,
  ): Promise<{ args: Record<string, unknown> | undefined; tickets: string[] }> {
    if (args === undefined) return { args, tickets: [] };
    const found = new Set<string>();
    await rewriteJsonStrings(args as JsonValue, async (text) => {
      for (const t of Vault.findTickets(text)) found.add(t);
      return text;
    });
    const tickets = [...found];
    if (tickets.length === 0) return { args, tickets: [] };
    if (tickets.length > this.#o.maxTickets) {
      throw new CoatcheckError(
        'CC_ERR_HTTP_TOO_MANY_TICKETS',
        `the call carries ${tickets.length} tickets; the limit is ${this.#o.maxTickets}`,
      );
    }
    // Tool arguments are a body: the tool server can echo or store them, so the secret must
    // allow placement `body` (credential-only secrets go only where credentials go).
    const released = await this.#o.pipeline.exchange(this.#o.session, tickets, {
      authorized,
      principal: this.#o.principal,
      target: this.#target,
      operation,
      placement: 'body',
    });
    const rewritten = await rewriteJsonStrings(args as JsonValue, async (text) =>
      text.replace(/cct_[0-9A-Za-z]{28}/g, (t) => released.get(t)?.value.revealText() ?? t),
    );
    return {
      args: rewritten as Record<string, unknown>,
      tickets: [...released.values()].map((e) => e.ticketId),
    };
  }

  /** Run one upstream request; a closed or crashed upstream becomes CC_ERR_MCP_UPSTREAM_FAILED. */
  async #upstreamCall<T>(cleared: Cleared | null, work: (client: Client) => Promise<T>): Promise<T> {
    // A call that forwards an operation carries its Cleared decision; listings (filtered
    // by policy and scanned on the way back) forward none and carry null.
    if (cleared !== null) this.#o.pipeline.forwarding(this.#o.session, cleared);
    const client = await this.#client();
    try {
      return await work(client);
    } catch (error) {
      if (error instanceof McpError && error.code !== -32000 && error.code !== -32001) {
        // The upstream's own error (bad params, unknown tool): its message may quote input: scan it.
        throw new McpError(error.code, await this.#scan(error.message));
      }
      throw upstreamFailed('closed the session or crashed during the call', error);
    }
  }

  /**
   * The name policy and audit see: a secret inside it (a token in a resource URI, a tool
   * name chosen to smuggle one into the audit log) is replaced by its fingerprint.
   */
  async #label(raw: string): Promise<string> {
    const bytes = Buffer.from(raw.slice(0, 500), 'utf8');
    const scan = await this.#o.foundSecrets.begin({
      principal: this.#o.principal.ref,
      source: 'mcp',
      actor: 'gateway:mcp',
    });
    const findings = scan.findIn(bytes);
    if (findings.length === 0) return bytes.toString('utf8');
    let out = '';
    let at = 0;
    for (const f of findings) {
      out += `${bytes.subarray(at, f.start).toString('utf8')}[REDACTED:${f.fingerprint}]`;
      at = f.end;
    }
    return out + bytes.subarray(at).toString('utf8');
  }

  async #audited<T>(
    raw: string,
    work: (state: { tickets: string[] }, tool: string) => Promise<T>,
  ): Promise<T> {
    const { pipeline, session, principal, connection } = this.#o;
    const state = { tickets: [] as string[] };
    let tool = '[unscanned]';
    this.calls++;
    // Every call is audited, refused or not (tool name and outcome; never argument values).
    const record = (outcome: string) => {
      session.event('mcp.call', { tool: tool.slice(0, 200), outcome });
      return pipeline.services.audit.append({
        type: 'mcp.call',
        actor: principal.ref,
        data: {
          session: session.id,
          connection: connection.view.name,
          tool: tool.slice(0, 200),
          outcome,
          tickets: state.tickets,
        },
      });
    };
    let result: T;
    try {
      tool = await this.#label(raw);
      result = await work(state, tool);
    } catch (error) {
      const outcome =
        error instanceof CoatcheckError
          ? error.code
          : error instanceof McpError
            ? `upstream:${error.code}`
            : 'CC_ERR_INTERNAL';
      await record(outcome).catch(() => undefined); // the refusal stands either way
      if (error instanceof CoatcheckError) throw toMcpError(error);
      if (error instanceof McpError) throw error;
      throw toMcpError(new CoatcheckError('CC_ERR_INTERNAL', 'the call failed inside the gateway'));
    }
    try {
      await record('ok');
    } catch (error) {
      // Fail closed: a result whose call cannot be recorded is not handed back.
      throw toMcpError(
        error instanceof CoatcheckError
          ? error
          : new CoatcheckError('CC_ERR_AUDIT_UNAVAILABLE', 'the call could not be recorded'),
      );
    }
    return result;
  }

  #register(capabilities: Record<string, unknown>): void {
    const { principal, connection, visible } = this.#o;
    const name = connection.view.name;
    if (capabilities.tools !== undefined) {
      this.server.setRequestHandler(ListToolsRequestSchema, async (request) => {
        const listed = await this.#upstreamCall(null, (c) => c.listTools(request.params));
        const tools = listed.tools.filter((tool) => visible(principal, name, tool.name));
        return this.#scan({ ...listed, tools });
      });
      this.server.setRequestHandler(CallToolRequestSchema, async (request) => {
        return this.#audited(request.params.name, async (state, tool) => {
          const { operation, authorized } = await this.#decide(
            tool,
            JSON.stringify(request.params.arguments ?? {}),
            `tools/call ${tool.slice(0, 200)}`,
          );
          const exchanged = await this.#exchangeArguments(request.params.arguments, operation, authorized);
          state.tickets = exchanged.tickets;
          const cleared = await this.#o.pipeline.clear(this.#o.session, authorized);
          const result = await this.#upstreamCall(cleared, (c) =>
            c.callTool({ ...request.params, arguments: exchanged.args }, undefined, {
              timeout: this.#o.upstreamTimeoutMs,
            }),
          );
          return this.#scan(result, exchanged.tickets);
        });
      });
    }
    if (capabilities.resources !== undefined) {
      this.server.setRequestHandler(ListResourcesRequestSchema, async (request) =>
        this.#scan(await this.#upstreamCall(null, (c) => c.listResources(request.params))),
      );
      this.server.setRequestHandler(ListResourceTemplatesRequestSchema, async (request) =>
        this.#scan(await this.#upstreamCall(null, (c) => c.listResourceTemplates(request.params))),
      );
      this.server.setRequestHandler(ReadResourceRequestSchema, async (request) => {
        return this.#audited(`resource:${request.params.uri}`, async (_state, tool) => {
          const { authorized } = await this.#decide(tool, '{}', `resources/read ${tool}`);
          const cleared = await this.#o.pipeline.clear(this.#o.session, authorized);
          return this.#scan(await this.#upstreamCall(cleared, (c) => c.readResource(request.params)));
        });
      });
    }
    if (capabilities.prompts !== undefined) {
      this.server.setRequestHandler(ListPromptsRequestSchema, async (request) =>
        this.#scan(await this.#upstreamCall(null, (c) => c.listPrompts(request.params))),
      );
      this.server.setRequestHandler(GetPromptRequestSchema, async (request) => {
        return this.#audited(`prompt:${request.params.name}`, async (_state, tool) => {
          const decided = await this.#decide(
            tool,
            JSON.stringify(request.params.arguments ?? {}),
            `prompts/get ${tool}`,
          );
          const cleared = await this.#o.pipeline.clear(this.#o.session, decided.authorized);
          return this.#scan(await this.#upstreamCall(cleared, (c) => c.getPrompt(request.params)));
        });
      });
    }
  }
}

/** Starts the upstream: releases the connection's credentials (audited) and connects the SDK client. */
class McpSessionStarter {
  readonly #o: McpSessionOptions;

  constructor(options: McpSessionOptions) {
    this.#o = options;
  }

  async #released(): Promise<Map<string, string>> {
    const { pipeline, session, principal, connection } = this.#o;
    const view = connection.view;
    const stdio = connection.url.protocol === 'stdio:';
    const templates: Record<string, string> = { ...view.injectHeaders };
    if (view.credential !== null && stdio && Object.keys(templates).length === 0)
      templates[STDIO_CREDENTIAL_ENV] = `{{secret:${view.credential}}}`;
    return pipeline.credentials(
      session,
      stdio ? { ...view, injectHeaders: templates, credential: null } : view,
      {
        authorized: pipeline.authorizeConnect(session, principal, view),
        principal,
        target: mcpTarget(connection),
        operation: {
          action: 'mcp:connect',
          description: `mcp connect ${view.name}`,
          attributes: {},
        },
      },
    );
  }

  async start(): Promise<Upstream> {
    const { connection, session } = this.#o;
    const injected = await this.#released();
    let transport: Transport;
    if (connection.url.protocol === 'stdio:') {
      const { command, args } = parseStdioUrl(connection.url);
      // Only a minimal environment (PATH, HOME, ...) plus the injected credentials: never the gateway's own.
      transport = new StdioClientTransport({
        command,
        args: [...args],
        env: { ...getDefaultEnvironment(), ...Object.fromEntries(injected) },
        stderr: 'ignore',
      });
    } else {
      const via = connection.view.via;
      let relayed: Dispatcher | undefined;
      if (via !== null) {
        if (this.#o.relays === undefined)
          throw new CoatcheckError(
            'CC_ERR_RELAY_UNAVAILABLE',
            `connection ${connection.view.name} goes through relay ${via}, which this front-end cannot use`,
            { details: { relay: via } },
          );
        relayed = this.#o.relays.get(via);
      }
      transport = new StreamableHTTPClientTransport(connection.url, {
        requestInit: { headers: Object.fromEntries(injected) },
        // Through the relay: undici's fetch with the relay's dispatcher.
        ...(relayed === undefined
          ? {}
          : {
              fetch: ((url: string | URL, init?: RequestInit) =>
                undiciFetch(url, { ...(init as object), dispatcher: relayed })) as unknown as typeof fetch,
            }),
      });
    }
    const client = new Client(CLIENT_INFO, { capabilities: {} });
    try {
      await client.connect(transport, { timeout: this.#o.upstreamTimeoutMs });
    } catch (error) {
      await client.close().catch(() => undefined);
      throw upstreamFailed('could not be started or did not complete the MCP handshake', error);
    }
    session.event('mcp.upstream.started', {
      transport: connection.url.protocol === 'stdio:' ? 'stdio' : 'http',
    });
    return { client, closed: false };
  }
}
