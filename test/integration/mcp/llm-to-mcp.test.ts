import { createServer, type Server as HttpServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Gateway, startGateway } from '../http/harness.js';
import { type FakeProvider, startFakeProvider } from '../llm/fake-provider.js';

const CANARY = 'cross-canary-password-3c2b1a0f9e8d';
const REMOTE_KEY = 'remote-mcp-key-5e4d3c2b1a0f';
const PROVIDER_KEY = 'sk-cross-provider-9a8b7c6d5e4f';
const TICKET_RE = /cct_[0-9A-Za-z]{28}/g;

interface Seen {
  headers: IncomingHttpHeaders;
  calls: Array<{ name: string; arguments: unknown }>;
}

/** A Streamable HTTP MCP server (official SDK, stateless) that records headers and calls. */
async function startHttpMcpServer(seen: Seen): Promise<{ url: string; close(): Promise<void> }> {
  const http: HttpServer = createServer(async (req, res) => {
    seen.headers = req.headers;
    const server = new Server({ name: 'remote', version: '1.0.0' }, { capabilities: { tools: {} } });
    server.setRequestHandler(ListToolsRequestSchema, async () => ({
      tools: [{ name: 'store', description: 'stores', inputSchema: { type: 'object' } }],
    }));
    server.setRequestHandler(CallToolRequestSchema, async (r) => {
      seen.calls.push({ name: r.params.name, arguments: r.params.arguments });
      const text = String((r.params.arguments as { text?: string } | undefined)?.text ?? '');
      return { content: [{ type: 'text', text: `stored ${text}` }] };
    });
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      void transport.close();
      void server.close();
    });
    await server.connect(transport);
    await transport.handleRequest(req, res);
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(http.address() as AddressInfo).port}/mcp`,
    close: () =>
      new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      }),
  };
}

describe('canary across the LLM guard and the MCP gateway (Streamable HTTP upstream)', () => {
  let gw: Gateway;
  let provider: FakeProvider;
  let remote: Awaited<ReturnType<typeof startHttpMcpServer>>;
  const seen: Seen = { headers: {}, calls: [] };
  let agent: { key: string; ref: string };

  beforeAll(async () => {
    provider = await startFakeProvider();
    remote = await startHttpMcpServer(seen);
    gw = await startGateway();
    agent = await gw.createAgent('planner');
    await gw.addSecret('db-password', CANARY, ['remote'], { placements: ['body'] });
    await gw.addSecret('remote-key', REMOTE_KEY, ['remote']);
    await gw.addSecret('provider-key', PROVIDER_KEY, ['model']);
    await gw.ctx.connections.add(
      { name: 'remote', type: 'mcp', url: remote.url, credential: 'remote-key' },
      'admin:test',
    );
    await gw.ctx.connections.add(
      { name: 'model', type: 'llm', url: provider.url, credential: 'provider-key' },
      'admin:test',
    );
  });

  afterAll(async () => {
    await gw?.close();
    await provider?.close();
    await remote?.close();
  });

  it('the model sees a ticket, its tool call carries the ticket, and the MCP gateway releases the secret only to the tool', async () => {
    // 1. The agent's prompt holds the secret; the model provider receives a ticket.
    const completion = await request(`${gw.url}/llm/model/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${agent.key}` },
      body: JSON.stringify({
        model: 'planner-1',
        messages: [{ role: 'user', content: `Store the database password ${CANARY} with the store tool.` }],
        tools: [{ type: 'function', function: { name: 'store', parameters: { type: 'object' } } }],
      }),
    });
    expect(completion.statusCode).toBe(200);
    const answer = (await completion.body.json()) as {
      choices: Array<{ message: { tool_calls: Array<{ function: { name: string; arguments: string } }> } }>;
    };
    const call = answer.choices[0]!.message.tool_calls[0]!.function;
    const args = JSON.parse(call.arguments) as { text: string };
    expect(args.text).toMatch(TICKET_RE);
    const received = provider.received.at(-1)!;
    expect(received.body).not.toContain(CANARY);
    expect(received.headers.authorization).toBe(`Bearer ${PROVIDER_KEY}`);

    // 2. The agent runs the model's tool call through the MCP gateway.
    const client = new Client({ name: 'planner', version: '1.0.0' });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(`${gw.url}/mcp/remote`), {
        requestInit: { headers: { authorization: `Bearer ${agent.key}` } },
      }),
    );
    try {
      const result = await client.callTool({ name: call.name, arguments: args });
      // The tool received the real value, with the gateway's credential; the agent sees a ticket.
      expect(seen.calls.at(-1)).toEqual({ name: 'store', arguments: { text: CANARY } });
      expect(seen.headers.authorization).toBe(`Bearer ${REMOTE_KEY}`);
      const text = (result.content as Array<{ text: string }>)[0]!.text;
      expect(text).toMatch(/^stored cct_[0-9A-Za-z]{28}$/);
      await (client.transport as StreamableHTTPClientTransport).terminateSession();
    } finally {
      await client.close();
    }

    // 3. No trace of the secret (or any credential) in logs, audit, or recordings.
    await gw.ctx.audit.flush();
    await expect.poll(() => gw.http.mcp.sessions).toBe(0);
    await gw.http.recorder.flush();
    const audit = await gw.ctx.store.readAudit(0, 100_000);
    const sessions = await gw.ctx.store.listSessions({ limit: 1000 });
    expect(sessions.map((s) => s.frontend).sort()).toEqual(['llm', 'mcp']);
    for (const text of [gw.logs(), JSON.stringify(audit), JSON.stringify(sessions), JSON.stringify(answer)]) {
      for (const value of [CANARY, REMOTE_KEY, PROVIDER_KEY, agent.key]) expect(text).not.toContain(value);
    }
  });
});
