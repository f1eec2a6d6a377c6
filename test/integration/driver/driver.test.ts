import { execFile } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Client as McpClient } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import Database from 'better-sqlite3';
import pg from 'pg';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../../../src/config/home.js';
import type { CoatcheckError } from '../../../src/core/errors.js';
import { createLogger } from '../../../src/core/logger.js';
import { agentRef } from '../../../src/core/principal.js';
import { forwardProxyFrontend } from '../../../src/frontends/http/forward-proxy.js';
import { kubernetesFrontend } from '../../../src/frontends/kubernetes/start.js';
import { stdioUrl } from '../../../src/frontends/mcp/command.js';
import { mcpStdioFrontend } from '../../../src/frontends/mcp/mcp-stdio.js';
import { postgresFrontend } from '../../../src/frontends/postgres/start.js';
import { sshFrontend } from '../../../src/frontends/ssh/start.js';
import { type Frontend, GatewayDriver, type Mount } from '../../../src/gateway/driver.js';
import type { SessionHooks } from '../../../src/gateway/hooks.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';
import { httpGateway } from '../../../src/server/frontends.js';
import { frontendDeps } from '../../../src/server/gateway-deps.js';
import { startKubeApiServer } from '../../helpers/kube-apiserver.js';
import { startUpstream } from '../http/harness.js';
import { sshdAvailable, startThrowawaySshd } from '../ssh/harness.js';

/**
 * The gateway driver: every front-end runs through it, so every front-end's sessions
 * reach the one metrics registry (by `frontend` label) and the session hooks (open,
 * exchange, close); shutdown drains; an unexpected failure never leaks what it carried.
 */
const UPSTREAM_PG = 'postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable';
const CANARY = 'driver-canary-7f3a9c11e0d2b4a6';

interface Probe {
  readonly hook: SessionHooks;
  readonly events: Array<{
    kind: 'open' | 'exchange' | 'close';
    frontend: string;
    session: string;
    detail: string;
  }>;
  of(frontend: string): Probe['events'];
}

function probe(): Probe {
  const events: Probe['events'] = [];
  return {
    events,
    hook: {
      open: (s) => events.push({ kind: 'open', frontend: s.frontend, session: s.id, detail: '' }),
      exchange: (s, step) =>
        events.push({
          kind: 'exchange',
          frontend: s.frontend,
          session: s.id,
          detail: `${step.step}:${step.outcome}`,
        }),
      close: (s, record) =>
        events.push({ kind: 'close', frontend: s.frontend, session: s.id, detail: record.outcome }),
    },
    of: (frontend) => events.filter((e) => e.frontend === frontend),
  };
}

function counter(text: string, name: string, labels: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
}

let dir: string;
let ctx: Context;
let driver: GatewayDriver;
let logText = '';
const hooks = probe();
let bot: { key: string; ref: string };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coatcheck-driver-'));
  const home = resolveHome(dir, {});
  await initHome(home, { env: {} });
  writeFileSync(home.configFile, 'log:\n  level: debug\n', { mode: 0o600 });
  ctx = await openContext(home, { env: {} });
  const log = createLogger({
    level: 'debug',
    destination: new Writable({
      write(chunk: Buffer, _e, cb) {
        logText += chunk.toString('utf8');
        cb();
      },
    }),
  });
  driver = new GatewayDriver({
    registry: ctx.metrics,
    log,
    store: ctx.store,
    clock: ctx.clock,
    hooks: [hooks.hook],
  });
  const { key, agent } = await ctx.agents.create({ name: 'bot' }, 'admin:test');
  bot = { key, ref: agentRef(agent.id) };
}, 60_000);

afterAll(async () => {
  await driver?.stop();
  await ctx?.close();
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

/** Wait until `check` holds (sessions close and recordings land asynchronously). */
async function until(check: () => boolean | Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('PostgreSQL through the driver', () => {
  it('a session reaches the hooks (open, exchange, close), the registry and the recordings', async () => {
    const pgfe = await driver.start(postgresFrontend(frontendDeps(ctx), { host: '127.0.0.1', port: 0 }));
    await ctx.vault.addSecret(
      { name: 'drvpw', value: Buffer.from('driver-pg-unused-password'), allow: ['conn:drv'] },
      'admin:test',
    );
    await ctx.connections.add(
      { name: 'drv', type: 'postgres', url: UPSTREAM_PG, credential: 'drvpw' },
      'admin:test',
    );
    const ticket = (
      await ctx.vault.issueTicket(
        { secret: 'drvpw', principal: bot.ref, destinations: ['conn:drv'] },
        'admin:test',
      )
    ).ticket;
    const before = await ctx.metrics.metrics();
    const client = new pg.Client({
      host: '127.0.0.1',
      port: pgfe.port,
      user: 'bot',
      password: ticket,
      database: 'drv',
    });
    await client.connect();
    expect((await client.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    await client.end();
    await until(() => hooks.of('postgres').some((e) => e.kind === 'close'));
    const events = hooks.of('postgres');
    const session = events[0]!.session;
    expect(events.map((e) => e.kind)).toEqual(expect.arrayContaining(['open', 'exchange', 'close']));
    expect(events.find((e) => e.kind === 'exchange')?.detail).toMatch(/^(tickets|credentials|decision):/);
    expect(events.find((e) => e.kind === 'close')).toMatchObject({ session, detail: 'ok' });
    const after = await ctx.metrics.metrics();
    const delta = (name: string, labels: string) =>
      counter(after, name, labels) - counter(before, name, labels);
    expect(delta('coatcheck_sessions_total', 'frontend="postgres",outcome="ok"')).toBe(1);
    expect(counter(after, 'coatcheck_sessions_open', 'frontend="postgres"')).toBe(0);
    // The recording hook wrote the session `coatcheck sessions` lists.
    await driver.recorder.flush();
    await until(async () => (await ctx.store.getSession(session)) !== null);
    expect((await ctx.store.getSession(session))?.frontend).toBe('postgres');
    await pgfe.close();
  });

  it('an unexpected throw during login becomes CC_ERR_INTERNAL with an incident id; the canary stays out', async () => {
    const broken = await driver.start({
      ...postgresFrontend(
        frontendDeps(ctx),
        { host: '127.0.0.1', port: 0 },
        {
          decide: async () => {
            const error = new Error(`decision blew up holding ${CANARY}`) as Error & { code: string };
            error.code = CANARY;
            throw error;
          },
        },
      ),
      name: 'postgres-broken',
    });
    const ticket = (
      await ctx.vault.issueTicket(
        { secret: 'drvpw', principal: bot.ref, destinations: ['conn:drv'] },
        'admin:test',
      )
    ).ticket;
    const client = new pg.Client({
      host: '127.0.0.1',
      port: broken.port,
      user: 'bot',
      password: ticket,
      database: 'drv',
    });
    const failure = (await client.connect().catch((e: unknown) => e)) as Error & { detail?: string };
    await client.end().catch(() => undefined);
    expect(failure.detail).toBe('CC_ERR_INTERNAL');
    const incident = /incident (inc_[A-Za-z0-9]{16})/.exec(failure.message)?.[1];
    expect(incident).toBeDefined();
    expect(failure.message).not.toContain(CANARY);
    expect(logText).toContain(incident);
    expect(logText).not.toContain(CANARY);
    await broken.close();
  });
});

/**
 * A front-end in a few lines: an HTTP adapter whose only job is its protocol. `/slow`
 * answers after `release()`; `/boom` throws an error carrying the canary.
 */
function toyFrontend(name: string): Frontend<{ url: string; release(): void; started: Promise<void> }> & {
  readonly handle: { release(): void };
} {
  let release: () => void = () => undefined;
  let started: () => void = () => undefined;
  const startedP = new Promise<void>((r) => {
    started = r;
  });
  const handle = { release: () => release() };
  return {
    name,
    handle,
    async start(mount: Mount) {
      const refuse = (res: ServerResponse, error: CoatcheckError) => {
        const body = JSON.stringify({ error: { code: error.code, message: error.message } });
        res.writeHead(error.status, { 'content-type': 'application/json', 'x-coatcheck-error': error.code });
        res.end(body);
      };
      const work = async (req: IncomingMessage, res: ServerResponse) => {
        if (req.url === '/boom') {
          const error = new Error(`adapter blew up with ${CANARY}`) as Error & { code: string };
          error.code = CANARY;
          throw error;
        }
        if (req.url === '/slow') {
          started();
          await new Promise<void>((r) => {
            release = r;
          });
        }
        res.end('done');
      };
      const server = createServer((req, res) => {
        void mount.serve(
          (error) => refuse(res, error),
          () => work(req, res),
        );
      });
      const address = await mount.listen(server, { host: '127.0.0.1', port: 0 });
      return { url: `http://127.0.0.1:${address.port}`, release: () => release(), started: startedP };
    },
  };
}

describe('HTTP through the driver (reverse proxy, LLM and MCP routes)', () => {
  it('sessions of each route reach the hooks and the registry under their own frontend label', async () => {
    const up = await startUpstream();
    const http = await driver.start(httpGateway(frontendDeps(ctx), { host: '127.0.0.1', port: 0 }));
    try {
      await ctx.vault.addSecret(
        { name: 'drvhttp', value: Buffer.from('driver-http-secret-value-1234'), allow: ['drvsvc'] },
        'admin:test',
      );
      await ctx.connections.add({ name: 'drvsvc', type: 'http', url: up.url }, 'admin:test');
      const ticket = (await ctx.vault.issueTicket({ secret: 'drvhttp', principal: bot.ref }, 'admin:test'))
        .ticket;
      const before = await ctx.metrics.metrics();
      const res = await request(`${http.url}/c/drvsvc/hello`, {
        headers: { 'proxy-authorization': `Bearer ${bot.key}`, authorization: `Bearer ${ticket}` },
      });
      expect(res.statusCode).toBe(200);
      await res.body.text();
      expect(up.received.at(-1)?.headers.authorization).toBe('Bearer driver-http-secret-value-1234');
      // The LLM and MCP routes: a refused call is a session too (opened, refused, recorded, counted).
      const codes: Record<string, string> = {};
      for (const [frontend, path] of [
        ['llm', '/llm/nothing/v1/chat/completions'],
        ['mcp', '/mcp/nothing'],
      ] as const) {
        const refused = await request(`${http.url}${path}`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
          body: JSON.stringify({
            jsonrpc: '2.0',
            id: 1,
            method: 'initialize',
            params: {
              protocolVersion: '2025-03-26',
              capabilities: {},
              clientInfo: { name: 't', version: '1' },
            },
          }),
        });
        expect(refused.statusCode).toBeGreaterThanOrEqual(400);
        codes[frontend] = String(refused.headers['x-coatcheck-error']);
        expect(codes[frontend]).toMatch(/^CC_ERR_/);
        await refused.body.text();
      }
      await until(() => ['http', 'llm', 'mcp'].every((f) => hooks.of(f).some((e) => e.kind === 'close')));
      const httpEvents = hooks.of('http');
      expect(httpEvents.map((e) => e.kind)).toEqual(['open', 'exchange', 'exchange', 'close']);
      expect(httpEvents.filter((e) => e.kind === 'exchange').map((e) => e.detail)).toEqual([
        'decision:allow',
        'tickets:released',
      ]);
      expect(httpEvents.at(-1)?.detail).toBe('ok');
      for (const frontend of ['llm', 'mcp']) {
        expect(hooks.of(frontend).map((e) => e.kind)).toEqual(['open', 'close']);
        expect(hooks.of(frontend).at(-1)?.detail).toBe(codes[frontend]);
      }
      const after = await ctx.metrics.metrics();
      const delta = (name: string, labels: string) =>
        counter(after, name, labels) - counter(before, name, labels);
      expect(delta('coatcheck_sessions_total', 'frontend="http",outcome="ok"')).toBe(1);
      expect(
        delta('coatcheck_sessions_total', 'frontend="llm",outcome="CC_ERR_HTTP_PROXY_AUTH_REQUIRED"'),
      ).toBe(1);
      expect(
        delta('coatcheck_sessions_total', 'frontend="mcp",outcome="CC_ERR_HTTP_PROXY_AUTH_REQUIRED"'),
      ).toBe(1);
      expect(
        delta('coatcheck_session_exchanges_total', 'frontend="http",step="tickets",outcome="released"'),
      ).toBe(1);
      await driver.recorder.flush();
      const recorded = await ctx.store.getSession(httpEvents[0]!.session);
      expect(recorded).toMatchObject({ frontend: 'http', outcome: 'ok', connection: 'drvsvc' });
      expect(JSON.stringify(recorded)).not.toContain('driver-http-secret-value-1234');
    } finally {
      await http.close();
      await up.close();
    }
  });
});

/** One raw HTTP/1.1 exchange on a fresh connection; resolves with everything the server sent. */
function rawHttp(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: '127.0.0.1', port }, () => socket.write(text));
    let answer = '';
    socket.on('data', (d: Buffer) => {
      answer += d.toString('utf8');
    });
    socket.on('end', () => resolve(answer));
    socket.on('close', () => resolve(answer));
    socket.on('error', reject);
  });
}

describe('graceful shutdown of a real front-end', () => {
  it('HTTP: the request in flight gets its upstream answer; a new connection is refused; then the listener closes', async () => {
    const up = await startUpstream();
    let answerSlow: () => void = () => undefined;
    let slowArrived: () => void = () => undefined;
    const arrived = new Promise<void>((r) => {
      slowArrived = r;
    });
    up.handle('/slow', (_req, res) => {
      answerSlow = () => res.end('slow answer');
      slowArrived();
    });
    const http = await driver.start({
      ...httpGateway(frontendDeps(ctx), { host: '127.0.0.1', port: 0 }),
      name: 'http-drain',
    });
    await ctx.connections.add({ name: 'drvslow', type: 'http', url: up.url }, 'admin:test');
    try {
      const slow = request(`${http.url}/c/drvslow/slow`, {
        headers: { 'proxy-authorization': `Bearer ${bot.key}` },
      });
      await arrived;
      const stopped = http.close(10_000);
      const mount = driver.mounts.find((m) => m.name === 'http-drain')!;
      await until(() => mount.draining);
      const port = Number(new URL(http.url).port);
      const refused = await new Promise<string>((resolve) => {
        const s = netConnect({ host: '127.0.0.1', port });
        s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
        s.on('connect', () => resolve('connected'));
      });
      expect(refused).toBe('ECONNREFUSED');
      expect(mount.inFlight).toBe(1);
      answerSlow();
      const res = await slow;
      expect(res.statusCode).toBe(200);
      expect(await res.body.text()).toBe('slow answer');
      await stopped;
      expect(mount.connections).toBe(0);
    } finally {
      await http.close();
      await up.close();
    }
  });
});

describe('a front-end stopped with work in flight', () => {
  it('HTTP: a request cut at the drain deadline is recorded before the stop resolves (its session row is not left behind a flush)', async () => {
    const up = await startUpstream();
    let hangArrived: () => void = () => undefined;
    const arrived = new Promise<void>((r) => {
      hangArrived = r;
    });
    // An upstream that never answers: the request is still in flight at the deadline.
    up.handle('/hang', () => hangArrived());
    const http = await driver.start({
      ...httpGateway(frontendDeps(ctx), { host: '127.0.0.1', port: 0 }),
      name: 'http-cut',
    });
    await ctx.connections.add({ name: 'drvhang', type: 'http', url: up.url }, 'admin:test');
    try {
      const before = logText.length;
      const hung = request(`${http.url}/c/drvhang/hang`, {
        headers: { 'proxy-authorization': `Bearer ${bot.key}` },
      }).catch((error: unknown) => error);
      await arrived;
      const mount = driver.mounts.find((m) => m.name === 'http-cut')!;
      expect(mount.inFlight).toBe(1);
      await http.close(0);
      // Nothing waited for after the stop: the cut request's session is already in the store.
      const sessions = await ctx.store.listSessions({ limit: 50 });
      const cut = sessions.find((s) => s.connection === 'drvhang');
      expect(cut).toBeDefined();
      expect(cut!.outcome).not.toBe('ok');
      expect(mount.inFlight).toBe(0);
      expect(await hung).toBeInstanceOf(Error);
      expect(logText.slice(before)).not.toContain('could not be written');
    } finally {
      await http.close();
      await up.close();
    }
  });

  it('HTTP: work the closed sockets cannot abort (an audit append waiting for the store) is waited for, and recorded, before the stop resolves', async () => {
    const up = await startUpstream();
    up.handle('/fine', (_req, res) => res.end('fine'));
    const http = await driver.start({
      ...httpGateway(frontendDeps(ctx), { host: '127.0.0.1', port: 0 }),
      name: 'http-cut-audit',
    });
    await ctx.connections.add({ name: 'drvaudit', type: 'http', url: up.url }, 'admin:test');
    // Another process's connection holds the store's write lock: the request's audit
    // append (durable before anything is released) waits for it, whatever the client does.
    const holder = new Database(join(dir, 'coatcheck.db'));
    try {
      const before = logText.length;
      const mount = driver.mounts.find((m) => m.name === 'http-cut-audit')!;
      holder.exec('BEGIN IMMEDIATE');
      const pending = request(`${http.url}/c/drvaudit/fine`, {
        headers: { 'proxy-authorization': `Bearer ${bot.key}` },
      }).catch((error: unknown) => error);
      await until(() => mount.inFlight === 1);
      await new Promise((r) => setTimeout(r, 100));
      // The lock is given back only after the stop began and the sockets were closed.
      setTimeout(() => holder.exec('COMMIT'), 300);
      await http.close(0);
      expect(mount.inFlight).toBe(0);
      // Nothing waited for after the stop: the request's session is already in the store.
      const sessions = await ctx.store.listSessions({ limit: 50 });
      expect(sessions.find((s) => s.connection === 'drvaudit')).toBeDefined();
      expect(await pending).toBeInstanceOf(Error);
      expect(logText.slice(before)).not.toContain('could not be written');
    } finally {
      if (holder.inTransaction) holder.exec('COMMIT');
      holder.close();
      await http.close();
      await up.close();
    }
  });
});

describe('the forward proxy through the driver', () => {
  it('a proxied request and a refused CONNECT are sessions in the hooks and the registry (frontend http-proxy)', async () => {
    const up = await startUpstream();
    const proxy = await driver.start(forwardProxyFrontend(frontendDeps(ctx), { host: '127.0.0.1', port: 0 }));
    try {
      await ctx.vault.addSecret(
        { name: 'drvproxy', value: Buffer.from('driver-proxy-secret-value-5678'), allow: [up.url] },
        'admin:test',
      );
      const ticket = (await ctx.vault.issueTicket({ secret: 'drvproxy', principal: bot.ref }, 'admin:test'))
        .ticket;
      const before = await ctx.metrics.metrics();
      const port = Number(new URL(proxy.url).port);
      const target = new URL(up.url);
      const ok = await rawHttp(
        port,
        `GET ${up.url}/through HTTP/1.1\r\nhost: ${target.host}\r\nproxy-authorization: Bearer ${bot.key}\r\nauthorization: Bearer ${ticket}\r\nconnection: close\r\n\r\n`,
      );
      expect(ok).toMatch(/^HTTP\/1\.1 200/);
      expect(up.received.at(-1)?.headers.authorization).toBe('Bearer driver-proxy-secret-value-5678');
      const refused = await rawHttp(
        port,
        `CONNECT unbound.example:443 HTTP/1.1\r\nhost: unbound.example:443\r\nproxy-authorization: Bearer ${bot.key}\r\n\r\n`,
      );
      expect(refused).toContain('CC_ERR_PROXY_HOST_REFUSED');
      await until(() => hooks.of('http-proxy').filter((e) => e.kind === 'close').length >= 2);
      const events = hooks.of('http-proxy');
      const sessions = [...new Set(events.map((e) => e.session))];
      expect(sessions).toHaveLength(2);
      const [request1, connect] = sessions.map((id) => events.filter((e) => e.session === id));
      expect(request1!.map((e) => e.kind)).toEqual(['open', 'exchange', 'exchange', 'close']);
      expect(request1!.at(-1)?.detail).toBe('ok');
      expect(connect!.map((e) => e.kind)).toEqual(['open', 'close']);
      expect(connect!.at(-1)?.detail).toBe('CC_ERR_PROXY_HOST_REFUSED');
      const after = await ctx.metrics.metrics();
      const delta = (name: string, labels: string) =>
        counter(after, name, labels) - counter(before, name, labels);
      expect(delta('coatcheck_sessions_total', 'frontend="http-proxy",outcome="ok"')).toBe(1);
      expect(
        delta('coatcheck_sessions_total', 'frontend="http-proxy",outcome="CC_ERR_PROXY_HOST_REFUSED"'),
      ).toBe(1);
      await driver.recorder.flush();
      expect((await ctx.store.getSession(connect![0]!.session))?.frontend).toBe('http-proxy');
    } finally {
      await proxy.close();
      await up.close();
    }
  });
});

describe('the Kubernetes front-end through the driver', () => {
  it('an allowed get and a refused one are sessions in the hooks and the registry (frontend kubernetes)', async () => {
    const api = await startKubeApiServer({ dir, token: CANARY });
    const k8s = await driver.start(kubernetesFrontend(frontendDeps(ctx), { host: '127.0.0.1', port: 0 }));
    const tls = new Agent({ connect: { ca: k8s.ca } });
    try {
      await ctx.vault.addSecret(
        { name: 'drv-k8s', value: Buffer.from(CANARY), allow: ['conn:drvk8s'] },
        'admin:test',
      );
      await ctx.connections.add(
        { name: 'drvk8s', type: 'kubernetes', url: api.url, credential: 'drv-k8s', rules: { ca: api.caPem } },
        'admin:test',
      );
      const ticket = (
        await ctx.vault.issueTicket(
          { secret: 'drv-k8s', principal: bot.ref, destinations: ['conn:drvk8s'] },
          'admin:test',
        )
      ).ticket;
      const before = await ctx.metrics.metrics();
      const get = (path: string) =>
        request(`${k8s.url}/k8s/bot/drvk8s${path}`, {
          headers: { authorization: `Bearer ${ticket}` },
          dispatcher: tls,
        }).then(async (res) => ({ status: res.statusCode, text: await res.body.text() }));
      const ok = await get('/api/v1/namespaces/default/pods');
      expect(ok.status).toBe(200);
      const refused = await get('/api/v1/namespaces/default//secrets');
      expect(refused.text).toContain('CC_ERR_K8S_PATH_NONCANONICAL');
      for (const text of [ok.text, refused.text]) expect(text).not.toContain(CANARY);
      await until(() => hooks.of('kubernetes').filter((e) => e.kind === 'close').length >= 2);
      const events = hooks.of('kubernetes');
      const sessions = [...new Set(events.map((e) => e.session))];
      expect(sessions).toHaveLength(2);
      const [allowed, denied] = sessions.map((id) => events.filter((e) => e.session === id));
      expect(allowed!.map((e) => e.kind)[0]).toBe('open');
      expect(allowed!.some((e) => e.kind === 'exchange')).toBe(true);
      expect(allowed!.at(-1)).toMatchObject({ kind: 'close', detail: 'ok' });
      expect(denied!.at(-1)).toMatchObject({ kind: 'close', detail: 'CC_ERR_K8S_PATH_NONCANONICAL' });
      const after = await ctx.metrics.metrics();
      const delta = (labels: string) =>
        counter(after, 'coatcheck_sessions_total', labels) -
        counter(before, 'coatcheck_sessions_total', labels);
      expect(delta('frontend="kubernetes",outcome="ok"')).toBe(1);
      expect(delta('frontend="kubernetes",outcome="CC_ERR_K8S_PATH_NONCANONICAL"')).toBe(1);
      await driver.recorder.flush();
      expect((await ctx.store.getSession(sessions[0]!))?.frontend).toBe('kubernetes');
      expect(logText).not.toContain(CANARY);
    } finally {
      await tls.close();
      await k8s.close();
      await api.close();
    }
  });
});

describe('MCP over stdio through the driver', () => {
  it('the stdio session reaches the hooks (open, exchange per tool call, close) and the registry', async () => {
    const fixture = fileURLToPath(new URL('../mcp/fixture-server.mjs', import.meta.url));
    const calls = join(dir, 'mcp-calls.jsonl');
    writeFileSync(calls, '');
    await ctx.connections.add(
      { name: 'drvtools', type: 'mcp', url: stdioUrl(`'${process.execPath}' "${fixture}" ${calls}`) },
      'admin:test',
    );
    await ctx.vault.addSecret(
      {
        name: 'drvmcp',
        value: Buffer.from('driver-mcp-secret-value-9012'),
        allow: ['drvtools'],
        placements: ['body'],
      },
      'admin:test',
    );
    const ticket = (await ctx.vault.issueTicket({ secret: 'drvmcp', principal: bot.ref }, 'admin:test'))
      .ticket;
    const before = await ctx.metrics.metrics();
    const stdin = new PassThrough();
    const stdout = new PassThrough();
    const stdio = await driver.start(
      mcpStdioFrontend(frontendDeps(ctx), { connection: 'drvtools', agentKey: bot.key, stdin, stdout }),
    );
    const client = new McpClient({ name: 'driver-test', version: '1.0.0' });
    // The client's end of the pipe: it reads what the gateway writes, and writes what the gateway reads.
    await client.connect(new StdioServerTransport(stdout, stdin));
    const result = await client.callTool({ name: 'store', arguments: { text: ticket } });
    expect(result.content).toEqual([{ type: 'text', text: 'stored' }]);
    expect(readFileSync(calls, 'utf8')).toContain('"arguments":{"text":"driver-mcp-secret-value-9012"}');
    stdin.end();
    expect(await stdio.done).toBe('ok');
    await client.close().catch(() => undefined);
    await until(() => hooks.of('mcp').filter((e) => e.kind === 'close').length >= 2);
    const session = hooks.of('mcp').at(-1)!.session;
    const events = hooks.of('mcp').filter((e) => e.session === session);
    expect(events[0]?.kind).toBe('open');
    expect(events.filter((e) => e.kind === 'exchange').map((e) => e.detail)).toEqual(
      expect.arrayContaining(['decision:allow', 'tickets:released']),
    );
    expect(events.at(-1)).toMatchObject({ kind: 'close', detail: 'ok' });
    const after = await ctx.metrics.metrics();
    expect(
      counter(after, 'coatcheck_sessions_total', 'frontend="mcp",outcome="ok"') -
        counter(before, 'coatcheck_sessions_total', 'frontend="mcp",outcome="ok"'),
    ).toBe(1);
    await driver.recorder.flush();
    expect(await ctx.store.getSession(session)).toMatchObject({ frontend: 'mcp', connection: 'drvtools' });
    await driver.mounts.find((m) => m.name === 'mcp-stdio')?.stop();
  });
});

describe('the driver around any adapter', () => {
  it('an unexpected throw becomes CC_ERR_INTERNAL with an incident id; no canary in the answer or the log', async () => {
    const toy = await driver.start(toyFrontend('toy-boom'));
    const res = await request(`${toy.url}/boom`);
    const text = await res.body.text();
    expect(res.statusCode).toBe(500);
    const body = JSON.parse(text) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('CC_ERR_INTERNAL');
    const incident = /incident (inc_[A-Za-z0-9]{16})/.exec(body.error.message)?.[1];
    expect(incident).toBeDefined();
    expect(text).not.toContain(CANARY);
    expect(JSON.stringify(res.headers)).not.toContain(CANARY);
    expect(logText).toContain(incident);
    expect(logText).not.toContain(CANARY);
    const metrics = await ctx.metrics.metrics();
    expect(
      counter(metrics, 'coatcheck_http_refusals_total', 'frontend="toy-boom",code="CC_ERR_INTERNAL"'),
    ).toBe(1);
    await driver.mounts.find((m) => m.name === 'toy-boom')?.stop();
  });

  it('graceful shutdown: stops accepting, refuses new requests, drains the one in flight, then closes', async () => {
    const toy = await driver.start(toyFrontend('toy-drain'));
    const mount = driver.mounts.find((m) => m.name === 'toy-drain')!;
    const agent = new Agent({ keepAliveTimeout: 30_000, connections: 2 });
    try {
      // A kept-alive connection, opened before the shutdown.
      expect((await request(`${toy.url}/fast`, { dispatcher: agent })).statusCode).toBe(200);
      const slow = request(`${toy.url}/slow`);
      await toy.started;
      expect(mount.inFlight).toBe(1);
      const stopped = mount.stop(10_000);
      await until(() => mount.draining);
      // A new connection is not accepted.
      const port = Number(new URL(toy.url).port);
      const refused = await new Promise<string>((resolve) => {
        const s = netConnect({ host: '127.0.0.1', port });
        s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
        s.on('close', () => resolve('closed'));
      });
      expect(['ECONNREFUSED', 'closed', 'ECONNRESET']).toContain(refused);
      // The in-flight request finishes with its answer.
      toy.release();
      const answer = await slow;
      expect(answer.statusCode).toBe(200);
      expect(await answer.body.text()).toBe('done');
      await stopped;
      expect(mount.inFlight).toBe(0);
      expect(mount.connections).toBe(0);
    } finally {
      await agent.close();
    }
  });

  it('graceful shutdown: a request completed on an open connection while draining is refused with CC_ERR_GATEWAY_STOPPING', async () => {
    const toy = await driver.start(toyFrontend('toy-keepalive'));
    const mount = driver.mounts.find((m) => m.name === 'toy-keepalive')!;
    const slow = request(`${toy.url}/slow`);
    await toy.started;
    // A second connection has sent half a request when the shutdown begins.
    const port = Number(new URL(toy.url).port);
    const socket = netConnect({ host: '127.0.0.1', port });
    let answer = '';
    socket.on('data', (d: Buffer) => {
      answer += d.toString('utf8');
    });
    socket.on('error', () => undefined);
    await new Promise((r) => socket.once('connect', r));
    socket.write('GET /fast HTTP/1.1\r\nhost: x\r\n');
    await until(() => mount.connections === 2);
    await new Promise((r) => setTimeout(r, 50));
    const stopped = mount.stop(10_000);
    await until(() => mount.draining);
    socket.write('\r\n');
    await until(() => answer.includes('CC_ERR_GATEWAY_STOPPING') || socket.destroyed || socket.readableEnded);
    expect(answer).toMatch(/^HTTP\/1\.1 503/);
    expect(answer).toContain('CC_ERR_GATEWAY_STOPPING');
    // The one in flight still gets its answer.
    toy.release();
    const done = await slow;
    expect(done.statusCode).toBe(200);
    expect(await done.body.text()).toBe('done');
    await stopped;
    socket.destroy();
  });
});

describe.skipIf(!sshdAvailable())('SSH through the driver', () => {
  it('a session (login, a command) reaches the hooks, the registry (frontend ssh) and the recordings', async () => {
    const sshd = await startThrowawaySshd();
    const ssh = await driver.start(sshFrontend(frontendDeps(ctx), { host: '127.0.0.1', port: 0 }));
    try {
      await ctx.vault.addSecret(
        { name: 'drv-ssh-key', value: Buffer.from(sshd.clientKey), allow: ['conn:drvssh'] },
        'admin:test',
      );
      await ctx.connections.add(
        {
          name: 'drvssh',
          type: 'ssh',
          url: `ssh://root@127.0.0.1:${sshd.port}`,
          rules: { hostKey: sshd.hostKey },
        },
        'admin:test',
      );
      const ticket = (
        await ctx.vault.issueTicket(
          { secret: 'drv-ssh-key', principal: bot.ref, destinations: ['conn:drvssh'] },
          'admin:test',
        )
      ).ticket;
      const knownHosts = join(dir, 'ssh_known_hosts');
      writeFileSync(knownHosts, `[127.0.0.1]:${ssh.port} ${ssh.hostKey.public}\n`);
      const askpass = join(dir, 'ssh-askpass.sh');
      writeFileSync(askpass, '#!/bin/sh\nprintf "%s\\n" "$CC_TEST_PASSWORD"\n');
      chmodSync(askpass, 0o755);
      const before = await ctx.metrics.metrics();
      // The real OpenSSH client, the ticket as the password.
      const ran = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
        execFile(
          'ssh',
          [
            '-F',
            '/dev/null',
            '-o',
            `UserKnownHostsFile=${knownHosts}`,
            '-o',
            'StrictHostKeyChecking=yes',
            '-o',
            'PubkeyAuthentication=no',
            '-o',
            'PreferredAuthentications=password,keyboard-interactive',
            '-o',
            'NumberOfPasswordPrompts=1',
            '-p',
            String(ssh.port),
            '-l',
            'bot%drvssh',
            '127.0.0.1',
            'echo',
            'through-the-driver',
          ],
          {
            env: {
              PATH: process.env.PATH ?? '/usr/bin:/bin',
              HOME: dir,
              SSH_ASKPASS: askpass,
              SSH_ASKPASS_REQUIRE: 'force',
              CC_TEST_PASSWORD: ticket,
            },
            timeout: 60_000,
          },
          (error, stdout, stderr) =>
            resolve({
              code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1,
              stdout,
              stderr,
            }),
        );
      });
      expect(ran, ran.stderr).toMatchObject({ code: 0, stdout: 'through-the-driver\n' });
      await until(() => hooks.of('ssh').some((e) => e.kind === 'close'), 10_000);
      const events = hooks.of('ssh');
      const session = events[0]!.session;
      expect(events.every((e) => e.session === session)).toBe(true);
      expect(events[0]!.kind).toBe('open');
      expect(events.filter((e) => e.kind === 'exchange').map((e) => e.detail)).toEqual(
        expect.arrayContaining(['tickets:released', 'decision:allow']),
      );
      expect(events.at(-1)).toMatchObject({ kind: 'close', detail: 'ok' });
      const after = await ctx.metrics.metrics();
      const delta = (name: string, labels: string) =>
        counter(after, name, labels) - counter(before, name, labels);
      expect(delta('coatcheck_sessions_total', 'frontend="ssh",outcome="ok"')).toBe(1);
      expect(
        delta('coatcheck_session_exchanges_total', 'frontend="ssh",step="tickets",outcome="released"'),
      ).toBe(1);
      expect(counter(after, 'coatcheck_sessions_open', 'frontend="ssh"')).toBe(0);
      await driver.recorder.flush();
      await until(async () => (await ctx.store.getSession(session)) !== null);
      const recorded = await ctx.store.getSession(session);
      expect(recorded).toMatchObject({ frontend: 'ssh', connection: 'drvssh', outcome: 'ok' });
      // The key the gateway logged in upstream with is in nothing it kept or logged.
      const keyBody = sshd.clientKey.split('\n')[1]!;
      expect(JSON.stringify(recorded)).not.toContain(keyBody);
      expect(logText).not.toContain(keyBody);
    } finally {
      await ssh.close();
      sshd.stop();
    }
  }, 120_000);
});
