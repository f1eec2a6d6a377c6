import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
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
import { createFrameParser, encodeFrame } from '../../helpers/ws-frames.js';
import { startUpstream, type Upstream } from '../http/harness.js';
import { type FakeProvider, startFakeProvider } from '../llm/fake-provider.js';

const CANARY = 'rec-every-canary-Ab12Cd34Ef56Gh78';
const WS_CANARY = 'rec-ws-canary-Zz98Yy76Xx54Ww32';
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
  let agentPrincipal = '';
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
    agentPrincipal = agentRef(agent.id);
    await ctx.vault.addSecret(
      { name: 'ws-canary', value: Buffer.from(WS_CANARY), allow: ['wsapp'] },
      'admin:test',
    );
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

  it('forward proxy WebSocket: messages both ways, the echoed secret as a ticket', async () => {
    // A WebSocket upstream that greets with the credential it received, then echoes.
    const wsServer = createServer((_req, res) => res.writeHead(426).end());
    wsServer.on('upgrade', (req, socket: Socket) => {
      const accept = createHash('sha1')
        .update(`${req.headers['sec-websocket-key']}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
        .digest('base64');
      socket.write(
        `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`,
      );
      socket.write(
        encodeFrame({
          fin: true,
          rsv: 0,
          opcode: 1,
          payload: Buffer.from(`got ${req.headers.authorization}`),
        }),
      );
      const parser = createFrameParser();
      socket.on('data', (chunk: Buffer) => {
        for (const frame of parser.push(chunk)) {
          if (frame.opcode !== 1) continue;
          socket.write(
            encodeFrame({ fin: true, rsv: 0, opcode: 1, payload: Buffer.from(`echo ${frame.payload}`) }),
          );
          socket.write(encodeFrame({ fin: true, rsv: 0, opcode: 8, payload: Buffer.from([0x03, 0xe8]) }));
          socket.end(); // the server closes the connection after its close frame (RFC 6455 7.1.1)
        }
      });
      socket.on('error', () => socket.destroy());
    });
    await new Promise<void>((resolve) => wsServer.listen(0, '127.0.0.1', resolve));
    const wsHost = `127.0.0.1:${(wsServer.address() as AddressInfo).port}`;
    await ctx.connections.add(
      { name: 'wsapp', type: 'http', url: `http://${wsHost}`, rules: { recording: 'full' } },
      'admin:test',
    );
    const wsTicket = (
      await ctx.vault.issueTicket(
        { secret: 'ws-canary', principal: agentPrincipal, destinations: ['wsapp'] },
        'admin:test',
      )
    ).ticket;
    const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    socket.write(
      [
        `GET http://${wsHost}/chat HTTP/1.1`,
        `Host: ${wsHost}`,
        `Proxy-Authorization: Bearer ${agentKey}`,
        `Authorization: Bearer ${wsTicket}`,
        'Connection: Upgrade',
        'Upgrade: websocket',
        'Sec-WebSocket-Version: 13',
        `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
        '',
        '',
      ].join('\r\n'),
    );
    const seen: string[] = [];
    await new Promise<void>((resolve) => {
      let head: Buffer | null = Buffer.alloc(0);
      const parser = createFrameParser();
      const timer = setTimeout(resolve, 3000);
      socket.on('data', (chunk: Buffer) => {
        if (head !== null) {
          head = Buffer.concat([head, chunk]);
          const end = head.indexOf('\r\n\r\n');
          if (end === -1) return;
          chunk = head.subarray(end + 4);
          head = null;
        }
        for (const frame of parser.push(chunk)) {
          if (frame.opcode === 1) seen.push(frame.payload.toString());
          if (frame.opcode === 1 && seen.length === 1) {
            // A masked client message, once the greeting is here: the recording's order is
            // then the order the test expects (before, the two raced through the gateway).
            const mask = randomBytes(4);
            const payload = Buffer.from('hello from the agent');
            const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]!));
            socket.write(Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]));
          }
          if (frame.opcode === 8) {
            clearTimeout(timer);
            resolve();
          }
        }
      });
    });
    socket.destroy();
    expect(seen[0]).toMatch(/^got Bearer cct_[0-9A-Za-z]{28}$/);
    expect(seen[1]).toBe('echo hello from the agent');
    for (let i = 0; i < 60; i++) {
      await driver.recordings!.flush();
      if ((await ctx.store.listRecordings({ limit: 100, connection: 'wsapp' })).length > 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    const [row] = await ctx.store.listRecordings({ limit: 1, connection: 'wsapp' });
    const { events } = await loadRecording(recordingArchive(ctx), row!.id);
    const messages = events.filter((e) => e.kind === 'ws.message');
    expect(messages.map((e) => [e.dir, (e.data.data as { text: string }).text])).toEqual([
      ['out', seen[0]],
      ['in', 'hello from the agent'],
      ['out', 'echo hello from the agent'],
    ]);
    expect(JSON.stringify(events)).not.toContain(WS_CANARY);
    await new Promise<void>((resolve) => {
      wsServer.closeAllConnections();
      wsServer.close(() => resolve());
    });
  });

  it('no recording file, replay or export holds a canary, the provider key or the agent key', async () => {
    const all = await recordings();
    expect(new Set(all.map((r) => r.record.frontend))).toEqual(new Set(['http-proxy', 'llm', 'mcp']));
    expect(all.some((r) => r.record.connection === 'wsapp')).toBe(true);
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
      expect(text).not.toContain(WS_CANARY);
      expect(text).not.toContain(PROVIDER_KEY);
      expect(text).not.toContain(agentKey);
    }
  });
});
