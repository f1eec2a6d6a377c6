// Targets behind a relay (test/integration/relay/http-routes.test.ts), in one process run in the
// target namespace: a model provider (OpenAI chat completions), a Streamable HTTP MCP server
// (official SDK) and a plain HTTP API for the forward proxy. Each answer carries LEAK (a
// secret the vault knows: the agent must get a ticket instead). What each received is
// reported on stdout as one JSON line, so the test can check what crossed the relay.
//
//   node target-services.mjs HOST LLM_PORT MCP_PORT API_PORT TLS_PORT
//   env: PROVIDER_KEY, MCP_KEY, API_SECRET (the credentials expected), LEAK, TLS_KEY and
//   TLS_CERT (files: the API again, over HTTPS on TLS_PORT)
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js';

const [host, llmPort, mcpPort, apiPort, tlsPort] = process.argv.slice(2);
const leak = process.env.LEAK ?? '';
const report = (entry) => process.stdout.write(`${JSON.stringify(entry)}\n`);

function body(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

const llm = createServer(async (req, res) => {
  const text = await body(req);
  report({
    llm: {
      url: req.url,
      authorized: req.headers.authorization === `Bearer ${process.env.PROVIDER_KEY}`,
      body: text,
      remote: req.socket.remoteAddress,
    },
  });
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(
    JSON.stringify({
      id: 'chatcmpl-1',
      object: 'chat.completion',
      choices: [{ index: 0, finish_reason: 'stop', message: { role: 'assistant', content: `ok ${leak}` } }],
    }),
  );
});

const mcp = createServer(async (req, res) => {
  const authorized = req.headers.authorization === `Bearer ${process.env.MCP_KEY}`;
  const server = new Server({ name: 'behind-relay', version: '1.0.0' }, { capabilities: { tools: {} } });
  server.setRequestHandler(ListToolsRequestSchema, async () => ({
    tools: [
      { name: 'store', description: 'stores', inputSchema: { type: 'object' } },
      { name: 'leak', description: 'answers with a secret', inputSchema: { type: 'object' } },
    ],
  }));
  server.setRequestHandler(CallToolRequestSchema, async (r) => {
    report({ mcp: { tool: r.params.name, arguments: r.params.arguments, authorized } });
    const text = r.params.name === 'leak' ? `the key is ${leak}` : `stored ${r.params.arguments?.text ?? ''}`;
    return { content: [{ type: 'text', text }] };
  });
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    void transport.close();
    void server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res);
});

const apiHandler = (scheme) => async (req, res) => {
  await body(req);
  const authorized = req.headers.authorization === `Bearer ${process.env.API_SECRET}`;
  report({ api: { scheme, url: req.url, authorized } });
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ path: req.url, authorized, note: `the key is ${leak}` }));
};
const api = createServer(apiHandler('http'));
const tls = createHttpsServer(
  { key: readFileSync(process.env.TLS_KEY), cert: readFileSync(process.env.TLS_CERT) },
  apiHandler('https'),
);

let listening = 0;
for (const [server, port] of [
  [llm, llmPort],
  [mcp, mcpPort],
  [api, apiPort],
  [tls, tlsPort],
]) {
  server.listen(Number(port), host, () => {
    if (++listening === 4) report({ listening: true });
  });
}
