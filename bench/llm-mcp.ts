// Added latency of the LLM prompt guard and the MCP gateway for a 16 KB prompt,
// direct vs through coatcheck, side by side in one run.
//
// Run: npm run bench:llm-mcp   (BENCH_SEQUENTIAL=300 requests per case by default)
//
// LLM: a 16 KB chat-completions prompt to a local fake provider (answers at once), one
// case with no secret in it and one with two (a vault secret and a GitHub token, each
// replaced by a ticket). MCP: a tools/call whose argument is the same 16 KB text with a
// ticket in it, to a Streamable HTTP MCP server (official SDK) that echoes it back, so
// the result (16 KB) is scanned too. Requests go one at a time (unloaded latency); the
// fake upstreams, the gateway and the client share this process and the machine, so the
// absolute numbers say more about the machine than the gateway: the added ms is the point.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import pino from 'pino';
import { request } from 'undici';
import { resolveHome } from '../src/config/home.js';
import { agentRef } from '../src/core/principal.js';
import { BUILTIN_RULES } from '../src/detect/rules/index.js';
import { initHome, openContext } from '../src/server/context.js';
import { startHttpFrontend } from '../src/server/frontends.js';

const COUNT = Number(process.env.BENCH_SEQUENTIAL ?? 300);
const SECRET = 'bench-db-password-0f1e2d3c4b5a';
const GITHUB = BUILTIN_RULES.find((r) => r.id === 'github-pat-classic')!.examples.positives[0]!.secret;

/** About 16 KB of prose-like text (words, punctuation, numbers), optionally with secrets inside. */
function prompt(withSecrets: boolean): string {
  const words = [
    'deploy',
    'the',
    'service',
    'config',
    'with',
    'retries',
    'and',
    'log',
    'level',
    'debug',
    'for',
    'region',
    'eu-west-1,',
    'version',
    '4.2.1.',
  ];
  let text = '';
  let i = 0;
  while (text.length < 16 * 1024) text += `${words[(i++ * 7) % words.length]} `;
  if (!withSecrets) return text;
  const third = Math.floor(text.length / 3);
  return `${text.slice(0, third)} password ${SECRET} ${text.slice(third, 2 * third)} token ${GITHUB} ${text.slice(2 * third)}`;
}

function readAll(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
  });
}

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void) {
  const server = createServer(handler);
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/** A chat-completions provider that answers immediately. */
function fakeProvider() {
  return listen(async (req, res) => {
    const body = await readAll(req);
    const text = JSON.stringify({
      id: 'c',
      object: 'chat.completion',
      choices: [{ index: 0, message: { role: 'assistant', content: `read ${body.length} bytes` } }],
    });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  });
}

/** A stateful Streamable HTTP MCP server (official SDK) with an `echo` tool. */
function mcpServer() {
  const sessions = new Map<string, StreamableHTTPServerTransport>();
  return listen(async (req, res) => {
    const body = req.method === 'POST' ? JSON.parse((await readAll(req)).toString('utf8')) : undefined;
    const id = req.headers['mcp-session-id'];
    let transport = typeof id === 'string' ? sessions.get(id) : undefined;
    if (transport === undefined) {
      const created: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (sid: string): void => {
          sessions.set(sid, created);
        },
      });
      const server = new Server({ name: 'bench', version: '1.0.0' }, { capabilities: { tools: {} } });
      server.setRequestHandler(ListToolsRequestSchema, async () => ({
        tools: [{ name: 'echo', inputSchema: { type: 'object' } }],
      }));
      server.setRequestHandler(CallToolRequestSchema, async (r) => ({
        content: [{ type: 'text', text: String((r.params.arguments as { text?: string }).text ?? '') }],
      }));
      await server.connect(created);
      transport = created;
    }
    await transport.handleRequest(req, res, body);
  });
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function time(work: () => Promise<void>): Promise<{ p50: number; p99: number }> {
  for (let i = 0; i < Math.min(30, COUNT); i++) await work(); // warm up
  const times: number[] = [];
  for (let i = 0; i < COUNT; i++) {
    const started = performance.now();
    await work();
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return { p50: percentile(times, 50), p99: percentile(times, 99) };
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-bench-llm-mcp-'));
  const home = resolveHome(dir, {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, 'log:\n  level: warn\n', { mode: 0o600 });
  const ctx = await openContext(home, { env: {} });
  const provider = await fakeProvider();
  const upstream = await mcpServer();
  const gateway = await startHttpFrontend(ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'warn' }));
  const { key, agent } = await ctx.agents.create({ name: 'bench' }, 'admin:bench');
  // Tool arguments are a body placement.
  await ctx.vault.addSecret(
    { name: 'db', value: Buffer.from(SECRET), allow: ['tools'], placements: ['body'] },
    'admin:bench',
  );
  await ctx.vault.addSecret(
    { name: 'provider', value: Buffer.from('sk-bench-provider-key-1234'), allow: ['model'] },
    'admin:bench',
  );
  await ctx.connections.add(
    { name: 'model', type: 'llm', url: provider.url, credential: 'provider' },
    'admin:bench',
  );
  await ctx.connections.add({ name: 'tools', type: 'mcp', url: `${upstream.url}/mcp` }, 'admin:bench');
  const ticket = (
    await ctx.vault.issueTicket(
      { secret: 'db', principal: agentRef(agent.id), destinations: ['tools'] },
      'admin:bench',
    )
  ).ticket;

  const rows: Array<[string, { p50: number; p99: number }, { p50: number; p99: number }]> = [];

  for (const withSecrets of [false, true]) {
    const body = JSON.stringify({
      model: 'bench',
      messages: [{ role: 'user', content: prompt(withSecrets) }],
    });
    const post = (url: string, auth: string) => async () => {
      const res = await request(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${auth}` },
        body,
      });
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}: ${await res.body.text()}`);
      await res.body.dump();
    };
    const direct = await time(post(`${provider.url}/v1/chat/completions`, 'sk-bench-provider-key-1234'));
    const via = await time(post(`${gateway.url}/llm/model/v1/chat/completions`, key));
    rows.push([
      `LLM chat/completions, 16 KB prompt, ${withSecrets ? '2 secrets' : 'no secret'}`,
      direct,
      via,
    ]);
  }

  const connectClient = async (url: string, auth?: string) => {
    const client = new Client({ name: 'bench', version: '1.0.0' });
    await client.connect(
      new StreamableHTTPClientTransport(
        new URL(url),
        auth === undefined ? undefined : { requestInit: { headers: { authorization: `Bearer ${auth}` } } },
      ),
    );
    return client;
  };
  const text = prompt(false);
  const direct = await connectClient(`${upstream.url}/mcp`);
  const via = await connectClient(`${gateway.url}/mcp/tools`, key);
  const directTimes = await time(async () => {
    await direct.callTool({ name: 'echo', arguments: { text: `${text} ${SECRET}` } });
  });
  const viaTimes = await time(async () => {
    await via.callTool({ name: 'echo', arguments: { text: `${text} ${ticket}` } });
  });
  rows.push(['MCP tools/call, 16 KB argument with a ticket, 16 KB result', directTimes, viaTimes]);
  await (direct.transport as StreamableHTTPClientTransport).terminateSession().catch(() => undefined);
  await (via.transport as StreamableHTTPClientTransport).terminateSession().catch(() => undefined);
  await direct.close();
  await via.close();

  const f = (n: number) => n.toFixed(2).padStart(7);
  process.stdout.write(
    `coatcheck LLM guard and MCP gateway: added latency (${COUNT} sequential requests per case, ${cpus().length} CPUs, Node ${process.version})\n\n`,
  );
  process.stdout.write(
    `${'case'.padEnd(64)} ${'direct p50'.padStart(10)} ${'via p50'.padStart(9)} ${'added p50'.padStart(10)} ${'ratio'.padStart(6)} ${'direct p99'.padStart(10)} ${'via p99'.padStart(9)}\n`,
  );
  for (const [name, d, v] of rows) {
    process.stdout.write(
      `${name.padEnd(64)} ${f(d.p50)} ms ${f(v.p50)} ms ${f(v.p50 - d.p50)} ms ${(v.p50 / d.p50).toFixed(2).padStart(5)}x ${f(d.p99)} ms ${f(v.p99)} ms\n`,
    );
  }

  await gateway.close();
  await new Promise<void>((resolve) => {
    provider.server.close(() => resolve());
    provider.server.closeAllConnections();
  });
  await new Promise<void>((resolve) => {
    upstream.server.close(() => resolve());
    upstream.server.closeAllConnections();
  });
  await ctx.close();
  rmSync(dir, { recursive: true, force: true });
}

await main();
