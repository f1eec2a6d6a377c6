import { type ChildProcess, execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../../src/core/logger.js';
import { agentRef } from '../../../src/core/principal.js';
import { type ForwardProxy, startForwardProxy } from '../../../src/frontends/http/forward-proxy.js';
import { netnsUnavailable } from '../../helpers/netns.js';
import { testCa } from '../http/forward-harness.js';
import { type RelayProcess, type RelayWorld, startRelayWorld, until } from './world.js';

/**
 * The forward proxy, the LLM guard and MCP over HTTP through a relay (docs/relay.md),
 * across a real network boundary: a model provider, an MCP server and an HTTP API live in
 * the target namespace, reachable only from the relay's; the gateway here reaches them
 * only through `coatcheck relay run`. Canaries (the credentials, a secret in the prompt,
 * a secret in every answer) are checked absent from what the agent gets and from the
 * gateway's and the relay's output.
 */
const unavailable = netnsUnavailable();
if (unavailable !== null) console.log(`relay http-route tests skipped: ${unavailable}`);

const LLM_PORT = 8081;
const MCP_PORT = 8082;
const API_PORT = 8083;
const TLS_PORT = 8443;
const PROVIDER_KEY = 'sk-relay-provider-canary-6e5d4c3b2a19';
const MCP_KEY = 'mcp-relay-key-canary-1a2b3c4d5e6f';
const API_SECRET = 'api-relay-secret-canary-7f8e9d0c1b2a';
/** In the agent's prompt and tool arguments: the provider must see a ticket, the tool the value. */
const PROMPT_SECRET = 'db-relay-password-canary-4d3c2b1a0f9e';
/** In every answer from behind the relay: the agent must see a ticket. */
const LEAK = 'leaked-relay-canary-8b7a6f5e4d3c2b1a';
const TICKET_RE = /cct_[0-9A-Za-z]{28}/;

let world: RelayWorld;
let targets: ChildProcess;
let proxy: ForwardProxy;
let relay: RelayProcess;
let relayKey: string;
let agentKey: string;
let mcpTicket: string;
let apiTicket: string;
let secureTicket: string;
let proxyCaFile: string;
let proxyLog = '';
const reports: Array<Record<string, Record<string, unknown>>> = [];
const received: string[] = [];

function curl(args: string[]) {
  return new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(
      'curl',
      ['-sS', '--max-time', '20', ...args],
      { env: { PATH: process.env.PATH }, timeout: 30_000 },
      (error, stdout, stderr) =>
        resolve({
          code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
          stdout,
          stderr,
        }),
    );
  });
}

const last = (kind: string) => reports.filter((r) => r[kind] !== undefined).at(-1)?.[kind];

describe.skipIf(unavailable !== null)('forward proxy, LLM guard and MCP over HTTP through a relay', () => {
  beforeAll(async () => {
    world = await startRelayWorld({ httpSecret: 'unused-in-these-cases' });
    const { ctx, net } = world;
    // The HTTPS API's certificate names the target's address, under a CA the proxy trusts.
    const upstream = testCa(world.dir, `IP:${net.targetIp}`);
    writeFileSync(join(world.dir, 'target.key'), upstream.key);
    writeFileSync(join(world.dir, 'target.crt'), upstream.cert);
    targets = net.spawnIn(
      net.targetNs,
      process.execPath,
      [
        join(import.meta.dirname, 'target-services.mjs'),
        net.targetIp,
        String(LLM_PORT),
        String(MCP_PORT),
        String(API_PORT),
        String(TLS_PORT),
      ],
      {
        PROVIDER_KEY,
        MCP_KEY,
        API_SECRET,
        LEAK,
        TLS_KEY: join(world.dir, 'target.key'),
        TLS_CERT: join(world.dir, 'target.crt'),
      },
    );
    await new Promise<void>((resolve, reject) => {
      let pending = '';
      targets.stdout!.on('data', (c: Buffer) => {
        received.push(c.toString('utf8'));
        pending += c.toString('utf8');
        let newline = pending.indexOf('\n');
        while (newline !== -1) {
          const entry = JSON.parse(pending.slice(0, newline)) as Record<string, Record<string, unknown>>;
          pending = pending.slice(newline + 1);
          if ('listening' in entry) resolve();
          else reports.push(entry);
          newline = pending.indexOf('\n');
        }
      });
      targets.stderr!.on('data', (c: Buffer) => received.push(c.toString('utf8')));
      targets.once('exit', (code) => reject(new Error(`the targets exited (${code}): ${received.join('')}`)));
    });
    const log = createLogger({
      level: 'debug',
      destination: new Writable({
        write(chunk: Buffer, _e, cb) {
          proxyLog += chunk.toString('utf8');
          cb();
        },
      }),
    });
    proxy = await startForwardProxy(ctx, { host: '127.0.0.1', port: 0 }, log, {
      upstreamCaFile: upstream.caFile,
    });
    proxyCaFile = join(world.dir, 'proxy-ca.pem');
    writeFileSync(proxyCaFile, proxy.ca.cert);

    relayKey = (await ctx.relays.create('site', 'admin:test')).key;
    const created = await ctx.agents.create({ name: 'bot' }, 'admin:test');
    agentKey = created.key;
    const principal = agentRef(created.agent.id);
    const target = net.targetIp;
    const secret = async (name: string, value: string, allow: string[], placements?: string[]) =>
      ctx.vault.addSecret(
        { name, value: Buffer.from(value), allow, ...(placements === undefined ? {} : { placements }) },
        'admin:test',
      );
    await secret('provider-key', PROVIDER_KEY, ['conn:model']);
    await secret('mcp-key', MCP_KEY, ['conn:tools']);
    await secret('api-secret', API_SECRET, ['conn:api', 'conn:secure']);
    await secret('db-password', PROMPT_SECRET, ['conn:tools'], ['body']);
    await secret('leaked', LEAK, ['conn:nowhere']);
    await ctx.connections.add(
      {
        name: 'model',
        type: 'llm',
        url: `http://${target}:${LLM_PORT}/v1`,
        credential: 'provider-key',
        via: 'site',
      },
      'admin:test',
    );
    await ctx.connections.add(
      {
        name: 'tools',
        type: 'mcp',
        url: `http://${target}:${MCP_PORT}/mcp`,
        credential: 'mcp-key',
        via: 'site',
      },
      'admin:test',
    );
    await ctx.connections.add(
      { name: 'api', type: 'http', url: `http://${target}:${API_PORT}`, via: 'site' },
      'admin:test',
    );
    await ctx.connections.add(
      { name: 'secure', type: 'http', url: `https://${target}:${TLS_PORT}`, via: 'site' },
      'admin:test',
    );
    secureTicket = (
      await ctx.vault.issueTicket(
        { secret: 'api-secret', principal, destinations: ['conn:secure'] },
        'admin:test',
      )
    ).ticket;
    mcpTicket = (
      await ctx.vault.issueTicket(
        { secret: 'db-password', principal, destinations: ['conn:tools'] },
        'admin:test',
      )
    ).ticket;
    apiTicket = (
      await ctx.vault.issueTicket(
        { secret: 'api-secret', principal, destinations: ['conn:api'] },
        'admin:test',
      )
    ).ticket;
    relay = world.startRelay(world.writeKey(relayKey), ['--allow', `${target}:*`]);
    await until(() => ctx.relayHub.sessions('site') === 1, 30_000, 'the relay session');
  }, 120_000);

  afterAll(async () => {
    relay?.child.kill('SIGKILL');
    targets?.kill('SIGKILL');
    await proxy?.close();
    await world?.close();
  }, 60_000);

  it('LLM guard: the prompt secret reaches the provider as a ticket, with the provider key; the answer comes back scrubbed', async () => {
    const res = await request(`${world.http.url}/llm/model/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${agentKey}` },
      body: JSON.stringify({
        model: 'm-1',
        messages: [{ role: 'user', content: `the database password is ${PROMPT_SECRET}` }],
      }),
    });
    const text = await res.body.text();
    expect(res.statusCode).toBe(200);
    const seen = last('llm')!;
    expect(seen).toMatchObject({ url: '/v1/chat/completions', authorized: true });
    // It came from the relay's side of the target link.
    expect(String(seen.remote)).toMatch(/10\.214\./);
    expect(String(seen.body)).not.toContain(PROMPT_SECRET);
    expect(String(seen.body)).toMatch(TICKET_RE);
    const answer = JSON.parse(text) as { choices: Array<{ message: { content: string } }> };
    expect(answer.choices[0]!.message.content).toMatch(/^ok cct_[0-9A-Za-z]{28}$/);
    expect(text).not.toContain(LEAK);
  }, 60_000);

  it('MCP over HTTP: the tool gets the secret for the ticket and the credential; its answers come back as tickets', async () => {
    const client = new Client({ name: 'bot', version: '1.0.0' });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(`${world.http.url}/mcp/tools`), {
        requestInit: { headers: { authorization: `Bearer ${agentKey}` } },
      }),
    );
    try {
      const tools = await client.listTools();
      expect(tools.tools.map((t) => t.name).sort()).toEqual(['leak', 'store']);
      const stored = await client.callTool({ name: 'store', arguments: { text: mcpTicket } });
      expect(last('mcp')).toEqual({ tool: 'store', arguments: { text: PROMPT_SECRET }, authorized: true });
      const storedText = (stored.content as Array<{ text: string }>)[0]!.text;
      expect(storedText).toMatch(/^stored cct_[0-9A-Za-z]{28}$/);
      const leaked = await client.callTool({ name: 'leak', arguments: {} });
      const leakedText = (leaked.content as Array<{ text: string }>)[0]!.text;
      expect(leakedText).toMatch(/^the key is cct_[0-9A-Za-z]{28}$/);
      expect(JSON.stringify([stored, leaked])).not.toContain(LEAK);
      expect(JSON.stringify([stored, leaked])).not.toContain(PROMPT_SECRET);
      await (client.transport as StreamableHTTPClientTransport).terminateSession().catch(() => undefined);
    } finally {
      await client.close();
    }
  }, 60_000);

  it('forward proxy: curl with plain http:// and with https:// (CONNECT, intercepted) to hosts bound to relayed connections', async () => {
    const r = await curl([
      '--proxy',
      proxy.url,
      '--proxy-user',
      `bot:${agentKey}`,
      '-H',
      `Authorization: Bearer ${apiTicket}`,
      `http://${world.net.targetIp}:${API_PORT}/through-the-proxy`,
    ]);
    expect(r.stderr).toBe('');
    const body = JSON.parse(r.stdout) as { path: string; authorized: boolean; note: string };
    expect(body).toMatchObject({ path: '/through-the-proxy', authorized: true });
    expect(body.note).toMatch(/^the key is cct_[0-9A-Za-z]{28}$/);
    expect(last('api')).toEqual({ scheme: 'http', url: '/through-the-proxy', authorized: true });
    // HTTPS through CONNECT: the proxy intercepts the tunnel and opens its own TLS to the
    // target over the relay's stream, verified against the target's address.
    const tls = await curl([
      '--proxy',
      proxy.url,
      '--proxy-user',
      `bot:${agentKey}`,
      '--cacert',
      proxyCaFile,
      '-H',
      `Authorization: Bearer ${secureTicket}`,
      `https://${world.net.targetIp}:${TLS_PORT}/through-the-tunnel`,
    ]);
    expect(tls.stderr).toBe('');
    const tlsBody = JSON.parse(tls.stdout) as { path: string; authorized: boolean; note: string };
    expect(tlsBody).toMatchObject({ path: '/through-the-tunnel', authorized: true });
    expect(tlsBody.note).toMatch(/^the key is cct_[0-9A-Za-z]{28}$/);
    expect(last('api')).toEqual({ scheme: 'https', url: '/through-the-tunnel', authorized: true });
    // The same request without the relay session is refused with the relay's error.
    relay.child.kill('SIGKILL');
    await relay.exited;
    await until(() => world.ctx.relayHub.sessions('site') === 0, 10_000, 'the session to go');
    const refused = await curl([
      '--proxy',
      proxy.url,
      '--proxy-user',
      `bot:${agentKey}`,
      '-H',
      `Authorization: Bearer ${apiTicket}`,
      '-i',
      `http://${world.net.targetIp}:${API_PORT}/after`,
    ]);
    expect(refused.stdout).toMatch(/^HTTP\/1\.1 502/);
    expect(refused.stdout).toContain('CC_ERR_RELAY_UNAVAILABLE');
    expect(last('api')).toEqual({ scheme: 'https', url: '/through-the-tunnel', authorized: true });
  }, 60_000);

  it('canary: no credential, ticket, key or secret in the gateway log, the audit, sessions or the relay output', async () => {
    await world.ctx.audit.flush();
    const relayText = relay.output();
    expect(relayText).toContain('relay: session open');
    const audit = JSON.stringify(await world.ctx.store.readAudit(0, 100_000));
    const sessions = JSON.stringify(await world.ctx.store.listSessions({ limit: 10_000 }));
    for (const text of [relayText, world.gatewayLogs(), proxyLog, audit, sessions]) {
      for (const value of [
        PROVIDER_KEY,
        MCP_KEY,
        API_SECRET,
        PROMPT_SECRET,
        LEAK,
        agentKey,
        relayKey,
        mcpTicket,
        apiTicket,
        secureTicket,
      ]) {
        expect(text).not.toContain(value);
      }
    }
  });
});
