import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import pino from 'pino';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { agentRef } from '../../../src/core/principal.js';
import { type ForwardProxy, forwardProxyFrontend } from '../../../src/frontends/http/forward-proxy.js';
import { stdioUrl } from '../../../src/frontends/mcp/command.js';
import { GatewayDriver } from '../../../src/gateway/driver.js';
import { loadRecording } from '../../../src/recording/archive.js';
import type { Context } from '../../../src/server/context.js';
import { type HttpFrontend, httpGateway } from '../../../src/server/frontends.js';
import { recordingArchive, recordingsDir, sessionRecordings } from '../../../src/server/recordings.js';
import { cli } from '../../helpers/cli.js';
import { makeTestHome, type TestHome } from '../../helpers/home.js';
import { startUpstream, type Upstream } from '../http/harness.js';
import { type FakeProvider, startFakeProvider } from '../llm/fake-provider.js';

const CANARY = 'rec-every-canary-Ab12Cd34Ef56Gh78';
const PROVIDER_KEY = 'sk-provider-canary-0123456789abcdef';
const FIXTURE = fileURLToPath(new URL('../mcp/fixture-server.mjs', import.meta.url));

/**
 * Every front-end, recorded in full: the reverse proxy (covered in http-recording.test.ts),
 * the forward proxy, the LLM guard, the MCP gateway and PostgreSQL (psql-recording.test.ts).
 * A canary secret is planted where each one would carry it; no recording holds it.
 */
describe('full recordings on every front-end keep secrets out', () => {
  let home: TestHome;
  let ctx: Context;
  let driver: GatewayDriver;
  let http: HttpFrontend;
  let proxy: ForwardProxy;
  let up: Upstream;
  let provider: FakeProvider;
  let agentKey: string;
  let ticket: string;
  const dir = mkdtempSync(join(tmpdir(), 'coatcheck-rec-every-'));
  const run = (args: string[]) => cli(['--dir', home.home.dir, ...args]);

  beforeAll(async () => {
    home = await makeTestHome();
    ctx = await home.open();
    up = await startUpstream();
    up.handle('/echo', (req, res) => res.end(`you sent ${req.headers.authorization}`));
    provider = await startFakeProvider();
    provider.say = ` the password is ${CANARY}`;
    driver = new GatewayDriver({
      registry: ctx.metrics,
      log: pino({ level: 'silent' }),
      store: ctx.store,
      clock: ctx.clock,
      recordings: sessionRecordings(ctx),
    });
    http = await driver.start(httpGateway(ctx, { host: '127.0.0.1', port: 0 }));
    proxy = await driver.start(forwardProxyFrontend(ctx, { host: '127.0.0.1', port: 0 }));
    const { key, agent } = await ctx.agents.create({ name: 'every' }, 'admin:test');
    agentKey = key;
    await ctx.vault.addSecret(
      {
        name: 'canary',
        value: Buffer.from(CANARY),
        allow: ['fwd', 'tools'],
        placements: ['credential', 'body'],
      },
      'admin:test',
    );
    await ctx.vault.addSecret(
      { name: 'provider', value: Buffer.from(PROVIDER_KEY), allow: ['openai'] },
      'admin:test',
    );
    const full = { recording: 'full' as const };
    await ctx.connections.add({ name: 'fwd', type: 'http', url: up.url, rules: full }, 'admin:test');
    await ctx.connections.add(
      { name: 'openai', type: 'llm', url: `${provider.url}/v1`, credential: 'provider', rules: full },
      'admin:test',
    );
    const leakFile = join(dir, 'leak.txt');
    writeFileSync(leakFile, `canary=${CANARY}`);
    writeFileSync(join(dir, 'log.jsonl'), '');
    await ctx.connections.add(
      {
        name: 'tools',
        type: 'mcp',
        url: stdioUrl(`'${process.execPath}' '${FIXTURE}' '${join(dir, 'log.jsonl')}' '${leakFile}'`),
        rules: full,
      },
      'admin:test',
    );
    ticket = (
      await ctx.vault.issueTicket(
        { secret: 'canary', principal: agentRef(agent.id), destinations: ['fwd', 'tools'] },
        'admin:test',
      )
    ).ticket;
  }, 60_000);

  afterAll(async () => {
    await driver?.stop();
    await ctx?.close();
    await up?.close();
    await provider?.close();
    home?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  const recordings = async () => {
    await driver.recordings!.flush();
    const rows = await ctx.store.listRecordings({ limit: 100 });
    return Promise.all(rows.map((r) => loadRecording(recordingArchive(ctx), r.id)));
  };

  it('forward proxy: the request as sent, the echoed secret as a ticket', async () => {
    const seen = await new Promise<string>((resolve, reject) => {
      const req = httpRequest(
        {
          host: '127.0.0.1',
          port: Number(new URL(proxy.url).port),
          path: `${up.url}/echo`,
          headers: { 'proxy-authorization': `Bearer ${agentKey}`, authorization: `Bearer ${ticket}` },
        },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => {
            text += c.toString();
          });
          res.on('end', () => resolve(text));
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect(seen).toMatch(/^you sent Bearer cct_/);
    const all = await recordings();
    const recorded = all.find((r) => r.record.frontend === 'http-proxy')!;
    expect(recorded.events.map((e) => e.kind)).toEqual([
      'http.request',
      'http.response',
      'http.body',
      'session.end',
    ]);
    expect((recorded.events[2]!.data.body as { text: string }).text).toBe(seen);
  });

  it('LLM guard: the prompt as forwarded (secret already a ticket), the streamed answer as received', async () => {
    const res = await request(`${http.url}/llm/openai/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${agentKey}` },
      body: JSON.stringify({
        model: 'gpt-test',
        stream: true,
        messages: [{ role: 'user', content: `use ${CANARY} please` }],
      }),
    });
    const seen = await res.body.text();
    expect(res.statusCode).toBe(200);
    expect(seen).not.toContain(CANARY);
    const recorded = (await recordings()).find((r) => r.record.frontend === 'llm')!;
    const kinds = recorded.events.map((e) => e.kind);
    expect(kinds[0]).toBe('http.request');
    expect(kinds).toContain('sse.data');
    const streamed = recorded.events
      .filter((e) => e.kind === 'sse.data')
      .map((e) => (e.data.data as { text: string }).text)
      .join('');
    expect(streamed).toBe(seen);
  });

  it('MCP gateway: JSON-RPC messages as sent and received', async () => {
    const client = new Client({ name: 'rec-agent', version: '1.0.0' });
    await client.connect(
      new StreamableHTTPClientTransport(new URL(`${http.url}/mcp/tools`), {
        requestInit: { headers: { authorization: `Bearer ${agentKey}` } },
      }),
    );
    const echoed = await client.callTool({ name: 'echo', arguments: { text: `pw=${ticket}` } });
    const leaked = await client.callTool({ name: 'leak', arguments: {} });
    expect(JSON.stringify([echoed, leaked])).not.toContain(CANARY);
    await (client.transport as StreamableHTTPClientTransport).terminateSession();
    await client.close();
    for (
      let i = 0;
      i < 100 && (await ctx.store.listRecordings({ limit: 100 })).every((r) => r.frontend !== 'mcp');
      i++
    ) {
      await driver.recordings!.flush();
      await new Promise((r) => setTimeout(r, 50));
    }
    const recorded = (await recordings()).find((r) => r.record.frontend === 'mcp')!;
    const messages = recorded.events.filter((e) => e.kind === 'mcp.message');
    expect(messages.some((e) => e.dir === 'in' && JSON.stringify(e.data).includes(ticket))).toBe(true);
    expect(messages.some((e) => e.dir === 'out' && /canary=cct_/.test(JSON.stringify(e.data)))).toBe(true);
  });

  it('no recording file, replay or export holds a canary, the provider key or the agent key', async () => {
    const all = await recordings();
    expect(new Set(all.map((r) => r.record.frontend))).toEqual(new Set(['http-proxy', 'llm', 'mcp']));
    const outputs: string[] = [];
    for (const { record } of all) {
      outputs.push((await run(['sessions', 'replay', record.id])).stdout);
      outputs.push((await run(['--json', 'sessions', 'export', record.id])).stdout);
    }
    for (const name of readdirSync(recordingsDir(ctx)))
      outputs.push(readFileSync(join(recordingsDir(ctx), name)).toString('latin1'));
    expect(outputs.join('').length).toBeGreaterThan(1000);
    for (const text of outputs) {
      expect(text).not.toContain(CANARY);
      expect(text).not.toContain(PROVIDER_KEY);
      expect(text).not.toContain(agentKey);
    }
  });
});
