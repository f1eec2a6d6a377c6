import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveHome } from '../../../src/config/home.js';
import { createLogger } from '../../../src/core/logger.js';
import { mintRelayKey } from '../../../src/core/ticket-format.js';
import { type RelayListener, startRelayListener } from '../../../src/relay/listener.js';
import { authority, parseAuthority } from '../../../src/relay/protocol.js';
import { allowed, checkAllowPatterns, runRelay } from '../../../src/relay/run-relay.js';
import { type Context, initHome, openContext } from '../../../src/server/context.js';
import { openProxyCa } from '../../../src/vault/proxy-ca.js';

/**
 * The relay listener under attack, in one process (no namespaces needed): whoever is not a
 * relay with a live key gets a refusal with a stable code and no session; a relay that
 * does not pin the gateway's CA, or is given another CA, never talks to an impostor.
 */
let dir: string;
let ctx: Context;
let listener: RelayListener;
let relayKey: string;
let logText = '';

function upgrade(
  headers: Record<string, string>,
  path = '/v1/relay/session',
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({
      host: '127.0.0.1',
      port: listener.port,
      path,
      ca: listener.ca.cert,
      servername: 'localhost',
      agent: false,
      headers,
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, body: '' });
    });
    req.on('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        body += c.toString('utf8');
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const relayHeaders = (key: string) => ({
  authorization: `Bearer ${key}`,
  connection: 'Upgrade',
  upgrade: 'coatcheck-relay/1',
});

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coatcheck-relay-listener-'));
  const home = resolveHome(dir, {});
  await initHome(home, { env: {} });
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
  listener = await startRelayListener({
    address: { host: '127.0.0.1', port: 0 },
    ca: await openProxyCa(ctx.store, ctx.keys.masters),
    serverNames: [],
    relays: ctx.relays,
    hub: ctx.relayHub,
    audit: ctx.audit,
    log,
  });
  relayKey = (await ctx.relays.create('edge', 'admin:test')).key;
}, 60_000);

afterAll(async () => {
  await listener?.close();
  await ctx?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('relay listener: who is not a relay gets no session', () => {
  it('a plain request is told this listener serves relays only', async () => {
    const r = await upgrade({});
    expect(r.status).toBe(426);
    expect(JSON.parse(r.body).code).toBe('CC_ERR_RELAY_HANDSHAKE');
  });

  it('an upgrade to another path or protocol is refused', async () => {
    expect(JSON.parse((await upgrade(relayHeaders(relayKey), '/other')).body).code).toBe(
      'CC_ERR_RELAY_HANDSHAKE',
    );
    const websocket = await upgrade({ ...relayHeaders(relayKey), upgrade: 'websocket' });
    expect(JSON.parse(websocket.body).code).toBe('CC_ERR_RELAY_HANDSHAKE');
  });

  it('no key, a malformed key, an agent key, an unknown key: 401 with the code, no session', async () => {
    const none = await upgrade({ connection: 'Upgrade', upgrade: 'coatcheck-relay/1' });
    expect([none.status, JSON.parse(none.body).code]).toEqual([401, 'CC_ERR_RELAY_UNKNOWN']);
    const broken = `${relayKey.slice(0, -1)}${relayKey.endsWith('A') ? 'B' : 'A'}`;
    const malformed = await upgrade(relayHeaders(broken));
    expect([malformed.status, JSON.parse(malformed.body).code]).toEqual([401, 'CC_ERR_RELAY_KEY_MALFORMED']);
    const agent = await ctx.agents.create({ name: 'not-a-relay' }, 'admin:test');
    expect(JSON.parse((await upgrade(relayHeaders(agent.key))).body).code).toBe('CC_ERR_RELAY_KEY_MALFORMED');
    const unknown = await upgrade(relayHeaders(mintRelayKey()));
    expect([unknown.status, JSON.parse(unknown.body).code]).toEqual([401, 'CC_ERR_RELAY_UNKNOWN']);
    // An oversized header is refused before any lookup.
    const long = await upgrade({ ...relayHeaders(relayKey), authorization: `Bearer ${'a'.repeat(300)}` });
    expect(JSON.parse(long.body).code).toBe('CC_ERR_RELAY_UNKNOWN');
    expect(ctx.relayHub.sessions('edge')).toBe(0);
    for (const text of [logText, JSON.stringify(await ctx.store.readAudit(0, 10_000))]) {
      expect(text).not.toContain(relayKey);
      expect(text).not.toContain(broken);
      expect(text).not.toContain(agent.key);
    }
  });

  it('the live key gets 101 and a session', async () => {
    const r = await upgrade(relayHeaders(relayKey));
    expect(r.status).toBe(101);
  });
});

describe('relay run: the gateway is pinned', () => {
  let impostor: Server;
  beforeAll(async () => {
    impostor = createServer();
    await new Promise<void>((resolve) => impostor.listen(0, '127.0.0.1', resolve));
  });
  afterAll(() => new Promise<void>((resolve) => impostor.close(() => resolve())));

  it('refuses a gateway whose certificate is not under the pinned CA', async () => {
    let text = '';
    const log = createLogger({
      level: 'debug',
      destination: new Writable({
        write(chunk: Buffer, _e, cb) {
          text += chunk.toString('utf8');
          cb();
        },
      }),
    });
    // Another home's CA: a different gateway.
    const otherDir = mkdtempSync(join(tmpdir(), 'coatcheck-relay-other-'));
    const otherHome = resolveHome(otherDir, {});
    await initHome(otherHome, { env: {} });
    const other = await openContext(otherHome, { env: {} });
    const otherCa = (await openProxyCa(other.store, other.keys.masters)).cert;
    await other.close();
    rmSync(otherDir, { recursive: true, force: true });
    const running = runRelay({
      gateway: `https://127.0.0.1:${listener.port}`,
      key: relayKey,
      ca: otherCa,
      allow: [],
      log,
      backoff: { minMs: 50, maxMs: 50 },
    });
    await new Promise((r) => setTimeout(r, 1500));
    await running.stop();
    expect(text).toMatch(/cannot reach the gateway/);
    expect(text).not.toContain(relayKey);
    expect(ctx.relayHub.sessions('edge')).toBe(0);
  });

  it('refuses plain http and bad --allow patterns at start', () => {
    const log = createLogger({ level: 'error' });
    expect(() =>
      runRelay({ gateway: 'http://127.0.0.1:1', key: relayKey, ca: listener.ca.cert, allow: [], log }),
    ).toThrow(expect.objectContaining({ code: 'CC_ERR_INVALID_ARGUMENT' }));
    for (const bad of ['db', 'db:', '*:5432', 'db:5432/x', 'a b:1'])
      expect(() => checkAllowPatterns([bad])).toThrow(
        expect.objectContaining({ code: 'CC_ERR_INVALID_ARGUMENT' }),
      );
  });
});

describe('relay protocol pieces', () => {
  it('CONNECT authorities: host:port only, bounded, IPv6 in brackets', () => {
    expect(parseAuthority('db.internal:5432')).toEqual({ host: 'db.internal', port: 5432 });
    expect(parseAuthority('[::1]:80')).toEqual({ host: '::1', port: 80 });
    expect(authority('::1', 80)).toBe('[::1]:80');
    for (const bad of [
      '',
      'db',
      'db:0',
      'db:65536',
      'db:5432 ',
      'user@db:1',
      'db:1/x',
      `${'a'.repeat(300)}:1`,
      '::1:80',
    ])
      expect(parseAuthority(bad)).toBeNull();
  });

  it('--allow: exact host and port, HOST:*, *.DOMAIN (never an IP, never the bare domain)', () => {
    expect(allowed([], '10.0.0.1', 1)).toBe(true);
    expect(allowed(['db.internal:5432'], 'db.internal', 5432)).toBe(true);
    expect(allowed(['db.internal:5432'], 'DB.internal', 5432)).toBe(true);
    expect(allowed(['db.internal:5432'], 'db.internal', 5433)).toBe(false);
    expect(allowed(['db.internal:*'], 'db.internal', 1)).toBe(true);
    expect(allowed(['*.internal:443'], 'api.internal', 443)).toBe(true);
    expect(allowed(['*.internal:443'], 'internal', 443)).toBe(false);
    expect(allowed(['*.internal:443'], 'evilinternal', 443)).toBe(false);
    expect(allowed(['[::1]:80'], '::1', 80)).toBe(true);
    expect(allowed(['10.0.0.1:80'], '10.0.0.10', 80)).toBe(false);
  });
});

describe('connection add --via', () => {
  it('names a live relay, on a type that dials through it; never a stdio server', async () => {
    await expect(
      ctx.connections.add(
        { name: 'nowhere', type: 'http', url: 'http://10.9.9.9', via: 'no-such-relay' },
        'admin:test',
      ),
    ).rejects.toMatchObject({ code: 'CC_ERR_NOT_FOUND' });
    // SSH and Kubernetes upstreams go through relays too (test/integration/relay/k8s-ssh.test.ts).
    const box = await ctx.connections.add(
      {
        name: 'box',
        type: 'ssh',
        url: 'ssh://u@10.9.9.9:22',
        rules: { hostKey: `SHA256:${'A'.repeat(43)}` },
        via: 'edge',
      },
      'admin:test',
    );
    expect(box.via).toBe('edge');
    const cluster = await ctx.connections.add(
      { name: 'cluster', type: 'kubernetes', url: 'https://10.9.9.9:6443', via: 'edge' },
      'admin:test',
    );
    expect(cluster.via).toBe('edge');
    await expect(
      ctx.connections.add(
        { name: 'tools', type: 'mcp', url: 'stdio:node%20x.js', via: 'edge' },
        'admin:test',
      ),
    ).rejects.toMatchObject({ code: 'CC_ERR_INVALID_ARGUMENT', message: expect.stringMatching(/^--via/) });
    const added = await ctx.connections.add(
      { name: 'internal', type: 'http', url: 'http://10.9.9.9', via: 'edge' },
      'admin:test',
    );
    expect(added.via).toBe('edge');
    expect((await ctx.connections.get('internal'))?.via).toBe('edge');
  });
});
