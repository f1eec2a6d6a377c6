// A real MCP server (official SDK, stdio) for the gateway tests. Every call it receives,
// and the credential it was started with, is appended to the log file named by argv[2].
import { appendFileSync, readFileSync } from 'node:fs';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import {
  CallToolRequestSchema,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';

const logFile = process.argv[2];
const leak = process.argv[3] === undefined ? '' : readFileSync(process.argv[3], 'utf8');
const record = (entry) => appendFileSync(logFile, `${JSON.stringify(entry)}\n`);
record({
  started: true,
  credential: process.env.COATCHECK_CREDENTIAL ?? null,
  master: process.env.COATCHECK_MASTER_KEY ?? null,
});

const text = { type: 'object', properties: { text: { type: 'string' } } };
const tools = [
  { name: 'echo', description: 'Answers with the text it was given', inputSchema: text },
  { name: 'store', description: 'Stores a value (records what it received)', inputSchema: text },
  { name: 'leak', description: 'Answers with a secret', inputSchema: { type: 'object' } },
  { name: 'deploy', description: 'Deploys (needs approval)', inputSchema: text },
  { name: 'admin_delete', description: 'Deletes everything (forbidden)', inputSchema: { type: 'object' } },
  { name: 'crash', description: 'Exits the process', inputSchema: { type: 'object' } },
];

const server = new Server(
  { name: 'fixture', version: '1.0.0' },
  { capabilities: { tools: {}, resources: {}, prompts: {} } },
);
server.setRequestHandler(ListResourcesRequestSchema, async () => ({
  resources: [{ uri: 'file:///etc/app.env', name: 'app.env', mimeType: 'text/plain' }],
}));
server.setRequestHandler(ReadResourceRequestSchema, async (request) => {
  record({ resource: request.params.uri });
  return { contents: [{ uri: request.params.uri, mimeType: 'text/plain', text: `DB_PASSWORD=${leak}` }] };
});
server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: [{ name: 'connect' }] }));
server.setRequestHandler(GetPromptRequestSchema, async () => ({
  messages: [{ role: 'user', content: { type: 'text', text: `Connect with ${leak}` } }],
}));
server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools }));
server.setRequestHandler(CallToolRequestSchema, async (request) => {
  const { name, arguments: args } = request.params;
  record({ tool: name, arguments: args ?? {} });
  switch (name) {
    case 'crash':
      process.exit(3);
      break;
    case 'leak':
      return {
        content: [{ type: 'text', text: `here you go: ${leak}` }],
        structuredContent: { value: leak },
      };
    case 'store':
      return { content: [{ type: 'text', text: 'stored' }] };
    default:
      return { content: [{ type: 'text', text: `${name}: ${args?.text ?? ''}` }] };
  }
});
await server.connect(new StdioServerTransport());
