import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stdioUrl } from '../../../src/frontends/mcp/command.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

/**
 * Item 2: a ticket reissued for a secret found in a response is a child of the ticket whose
 * exchange put it there — never wider in destinations, lifetime or uses, and revoked with it.
 * A real echoing upstream (it answers with the Authorization header it received), real
 * clients (undici, the MCP SDK client over streamable HTTP).
 */
const SECRET = 'scope-canary-Q9wE2rT7yU4iO1pA';
const OTHER = 'other-canary-Z3xC8vB5nM2kL7jH';
const TICKET_RE = /cct_[0-9A-Za-z]{28}/g;
const FIXTURE = fileURLToPath(new URL('../mcp/fixture-server.mjs', import.meta.url));

let gw: Gateway;
let up: Upstream;
let agent: { key: string; ref: string };
let intruder: { key: string; ref: string };
const dir = mkdtempSync(join(tmpdir(), 'coatcheck-scope-'));
const seen: string[] = [];

async function call(path: string, ticket: string, key = agent.key) {
  const res = await request(`${gw.url}${path}`, {
    headers: { 'proxy-authorization': `Bearer ${key}`, authorization: `Bearer ${ticket}` },
  });
  const text = await res.body.text();
  seen.push(text, JSON.stringify(res.headers));
  return { status: res.statusCode, text, code: res.headers['x-coatcheck-error'] as string | undefined };
}

/** Send `ticket` to the echoing upstream; return the ticket the gateway put in place of the secret. */
async function echoed(ticket: string, connection = 'api'): Promise<string> {
  const res = await call(`/c/${connection}/echo-auth`, ticket);
  expect(res.status).toBe(200);
  expect(res.text).not.toContain(SECRET);
  const auth = JSON.parse(res.text).auth as string;
  const found = auth.match(TICKET_RE);
  expect(found).not.toBeNull();
  expect(found![0]).not.toBe(ticket);
  return found![0];
}

const narrowed = async (opts: { ttlMs?: number; maxUses?: number }) => {
  const root = await gw.issue('gh', agent.ref, ['api']);
  return gw.ctx.vault.narrowTicket(root, { destinations: ['api'], ...opts }, 'admin:test');
};

beforeAll(async () => {
  up = await startUpstream();
  up.handle('/echo-auth', (req, res) => {
    const text = JSON.stringify({ auth: req.headers.authorization ?? null });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(text);
  });
  up.handle('/leak-other', (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`config: ${OTHER}`);
  });
  const policy = join(dir, 'all.cedar');
  writeFileSync(policy, '@id("all") permit(principal, action, resource);\n');
  gw = await startGateway({ extraConfig: `policy:\n  path: ${policy}\n` });
  agent = await gw.createAgent('scoped');
  intruder = await gw.createAgent('intruder');
  // The secret may go to two connections on the same host, and to that host by name.
  // (body: the MCP case puts the ticket in tool arguments.)
  await gw.addSecret('gh', SECRET, ['api', 'elsewhere', 'tools', 'host:127.0.0.1'], { placements: ['body'] });
  await gw.addSecret('other', OTHER, ['api', 'elsewhere', 'host:127.0.0.1']);
  await gw.addConnection('api', up.url);
  await gw.addConnection('elsewhere', up.url);
  const log = join(dir, 'mcp.jsonl');
  writeFileSync(log, '');
  await gw.ctx.connections.add(
    { name: 'tools', type: 'mcp', url: stdioUrl(`'${process.execPath}' '${FIXTURE}' '${log}'`) },
    'admin:test',
  );
});

afterAll(async () => {
  await gw?.close();
  await up?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('tickets reissued for secrets in responses stay within their parent', () => {
  it('the issue: a one-use, 60 s, one-connection ticket echoed back yields a child no wider, dead with its parent', async () => {
    const parent = await narrowed({ ttlMs: 60_000, maxUses: 1 });
    const child = await echoed(parent.ticket);
    const view = await gw.ctx.vault.inspectTicket(child);
    expect(view.parentId).toBe(parent.view.id);
    expect(view.principal).toBe(agent.ref);
    expect(view.destinations).toEqual(['conn:api']);
    // The parent's one use went into the exchange that produced the echo: nothing is left.
    expect(view.maxUses).toBe(0);
    expect(view.status).toBe('exhausted');
    expect(Date.parse(view.expiresAt!)).toBeLessThanOrEqual(Date.parse(parent.view.expiresAt!));
    const before = up.received.length;
    expect((await call('/c/api/echo-auth', child)).code).toBe('CC_ERR_TICKET_EXHAUSTED');
    expect(up.received.length).toBe(before);
    await gw.ctx.vault.revokeTicket(parent.view.id, 'admin:test');
    expect((await gw.ctx.vault.inspectTicket(child)).status).toBe('revoked');
  });

  it('uses count up the chain, and revoking the parent revokes the child', async () => {
    const parent = await narrowed({ maxUses: 3 });
    const child = await echoed(parent.ticket);
    const view = await gw.ctx.vault.inspectTicket(child);
    expect(view).toMatchObject({ parentId: parent.view.id, maxUses: 2, destinations: ['conn:api'] });
    // Using the child spends the parent too.
    await echoed(child);
    expect((await gw.ctx.vault.inspectTicket(parent.view.id)).uses).toBe(2);
    await gw.ctx.vault.revokeTicket(parent.view.id, 'admin:test');
    expect((await call('/c/api/echo-auth', child)).code).toBe('CC_ERR_TICKET_REVOKED');
  });

  it('is released neither to another connection on the same host nor to another agent', async () => {
    const parent = await narrowed({});
    const child = await echoed(parent.ticket);
    expect((await gw.ctx.vault.inspectTicket(child)).destinations).toEqual(['conn:api']);
    const before = up.received.length;
    expect((await call('/c/elsewhere/echo-auth', child)).code).toBe('CC_ERR_TICKET_WRONG_DESTINATION');
    expect((await call('/c/api/echo-auth', child, intruder.key)).code).toBe('CC_ERR_TICKET_WRONG_PRINCIPAL');
    expect(up.received.length).toBe(before);
  });

  it('dies when the parent expires', async () => {
    const parent = await narrowed({ ttlMs: 1_500 });
    const child = await echoed(parent.ticket);
    expect(Date.parse((await gw.ctx.vault.inspectTicket(child)).expiresAt!)).toBeLessThanOrEqual(
      Date.parse(parent.view.expiresAt!),
    );
    await new Promise((resolve) => setTimeout(resolve, 1_700));
    expect((await call('/c/api/echo-auth', child)).code).toBe('CC_ERR_TICKET_EXPIRED');
  });

  it('a secret the request never carried is scoped to the caller and this connection, with a bounded lifetime', async () => {
    const parent = await narrowed({ ttlMs: 120_000, maxUses: 5 });
    const started = Date.now();
    const res = await call('/c/api/leak-other', parent.ticket);
    expect(res.status).toBe(200);
    expect(res.text).not.toContain(OTHER);
    const ticket = res.text.match(TICKET_RE)![0];
    const view = await gw.ctx.vault.inspectTicket(ticket);
    expect(view.principal).toBe(agent.ref);
    expect(view.destinations).toEqual(['conn:api']);
    // A request ticket was exchanged: the response derives from it, so it is the parent.
    expect(view.parentId).toBe(parent.view.id);
    expect(Date.parse(view.expiresAt!)).toBeLessThanOrEqual(Date.parse(parent.view.expiresAt!));
    // No ticket at all in the request: no parent, and at most the found-ticket lifetime (15 min).
    const bare = await request(`${gw.url}/c/api/leak-other`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}` },
    });
    const bareText = await bare.body.text();
    seen.push(bareText);
    const loose = await gw.ctx.vault.inspectTicket(bareText.match(TICKET_RE)![0]);
    expect(loose).toMatchObject({ parentId: null, principal: agent.ref, destinations: ['conn:api'] });
    expect(Date.parse(loose.expiresAt!)).toBeLessThanOrEqual(started + 15 * 60_000 + 5_000);
    expect((await call('/c/elsewhere/echo-auth', bareText.match(TICKET_RE)![0])).code).toBe(
      'CC_ERR_TICKET_WRONG_DESTINATION',
    );
  });

  it('MCP: a tool result echoing an argument ticket yields a child of that ticket', async () => {
    const root = await gw.issue('gh', agent.ref, ['tools']);
    const parent = await gw.ctx.vault.narrowTicket(root, { ttlMs: 60_000, maxUses: 2 }, 'admin:test');
    const client = new Client({ name: 'scope-test', version: '1.0.0' });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(`${gw.url}/mcp/tools`), {
        requestInit: { headers: { authorization: `Bearer ${agent.key}` } },
      }),
    );
    try {
      const result = await client.callTool({ name: 'echo', arguments: { text: parent.ticket } });
      const text = JSON.stringify(result);
      seen.push(text);
      expect(text).not.toContain(SECRET);
      const child = text.match(TICKET_RE)!.find((t) => t !== parent.ticket)!;
      const view = await gw.ctx.vault.inspectTicket(child);
      expect(view).toMatchObject({ parentId: parent.view.id, maxUses: 1, destinations: ['conn:tools'] });
      expect(Date.parse(view.expiresAt!)).toBeLessThanOrEqual(Date.parse(parent.view.expiresAt!));
      await gw.ctx.vault.revokeTicket(parent.view.id, 'admin:test');
      expect((await gw.ctx.vault.inspectTicket(child)).status).toBe('revoked');
    } finally {
      await client.close();
    }
  });

  it('no canary reached the client, the logs or the audit log', async () => {
    await gw.ctx.audit.flush();
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    for (const place of [seen.join('\n'), gw.logs(), audit]) {
      expect(place).not.toContain(SECRET);
      expect(place).not.toContain(OTHER);
    }
  });
});
