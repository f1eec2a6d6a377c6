import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fetch, ProxyAgent, WebSocket } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  basic,
  type Proxied,
  rawConnect,
  startProxy,
  startWebSocketServer,
  testCa,
} from './forward-harness.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

const run = promisify(execFile);
const SECRET = 'fwd-canary-Secret-8e7d6c5b4a39';
/** Every error body a client saw, searched by the canary test. */
const bodies: string[] = [];

async function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('curl', ['-sS', '--max-time', '30', ...args], {
      env: { PATH: process.env.PATH },
    });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('forward proxy (HTTPS_PROXY) with TLS interception', () => {
  let dir: string;
  let ca: ReturnType<typeof testCa>;
  let up: Upstream;
  let other: Upstream;
  let plain: Upstream;
  let gw: Gateway;
  let px: Proxied;
  let untrusting: Proxied;
  let agent: { key: string; ref: string };
  let upHost: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-fwd-'));
    ca = testCa(dir);
    up = await startUpstream(ca);
    other = await startUpstream(ca);
    plain = await startUpstream();
    upHost = up.url.replace(/^https:\/\//, '');
    gw = await startGateway();
    // Plain http:// is a destination of its own (loopback here); the JSON-body test declares the body placement.
    await gw.addSecret('api', SECRET, [upHost, plain.url], { placements: ['body'] });
    px = await startProxy(gw, { upstreamCaFile: ca.caFile });
    untrusting = await startProxy(gw);
    agent = await gw.createAgent('fwd-agent');
    up.handle('/whoami', (req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`you sent ${req.headers.authorization}`);
    });
    plain.handle('/whoami', (req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`you sent ${req.headers.authorization}`);
    });
  }, 60_000);

  afterAll(async () => {
    await px?.close();
    await untrusting?.close();
    await gw?.close();
    await up?.close();
    await other?.close();
    await plain?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('curl through CONNECT with Basic proxy auth: the ticket becomes the secret upstream, the answer a ticket', async () => {
    const ticket = await gw.issue('api', agent.ref);
    const out = await curl([
      '--proxy',
      `http://${px.address}`,
      '--proxy-user',
      `fwd-agent:${agent.key}`,
      '--cacert',
      px.caFile,
      '-H',
      `Authorization: Bearer ${ticket}`,
      `${up.url}/whoami`,
    ]);
    expect(out.stderr).toBe('');
    expect(out.stdout).toMatch(/^you sent Bearer cct_[0-9A-Za-z]{28}$/);
    expect(out.stdout).not.toContain(SECRET);
    expect(up.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
    expect(up.received.at(-1)!.headers['proxy-authorization']).toBeUndefined();
  });

  it('curl through CONNECT with Bearer proxy auth', async () => {
    const ticket = await gw.issue('api', agent.ref);
    const out = await curl([
      '--proxy',
      `http://${px.address}`,
      '--proxy-header',
      `Proxy-Authorization: Bearer ${agent.key}`,
      '--cacert',
      px.caFile,
      '-H',
      `Authorization: Bearer ${ticket}`,
      `${up.url}/whoami`,
    ]);
    expect(out.stdout).toMatch(/^you sent Bearer cct_[0-9A-Za-z]{28}$/);
    expect(up.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
  });

  it('curl over HTTP/2 inside the tunnel (ALPN h2), GET and POST with a JSON body', async () => {
    const ticket = await gw.issue('api', agent.ref);
    const common = ['--http2', '--proxy', `http://${px.address}`, '--proxy-user', `a:${agent.key}`];
    const out = await curl([
      ...common,
      '--cacert',
      px.caFile,
      '-w',
      '\n%{http_version}',
      '-H',
      `Authorization: Bearer ${ticket}`,
      `${up.url}/whoami`,
    ]);
    const [body, version] = out.stdout.split('\n');
    expect(version).toBe('2');
    expect(body).toMatch(/^you sent Bearer cct_[0-9A-Za-z]{28}$/);
    expect(up.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
    const post = await curl([
      ...common,
      '--cacert',
      px.caFile,
      '-H',
      'content-type: application/json',
      '--data',
      JSON.stringify({ key: ticket }),
      `${up.url}/echo`,
    ]);
    expect(JSON.parse(post.stdout)).toMatchObject({ method: 'POST', ok: true });
    expect(JSON.parse(up.received.at(-1)!.body.toString())).toEqual({ key: SECRET });
    expect(Object.keys(up.received.at(-1)!.headers).some((h) => h.startsWith(':'))).toBe(false);
  });

  it('curl with plain http:// through the proxy (absolute-form)', async () => {
    const ticket = await gw.issue('api', agent.ref);
    const out = await curl([
      '--proxy',
      `http://${px.address}`,
      '--proxy-user',
      `a:${agent.key}`,
      '-H',
      `Authorization: Bearer ${ticket}`,
      `${plain.url}/whoami`,
    ]);
    expect(out.stdout).toMatch(/^you sent Bearer cct_[0-9A-Za-z]{28}$/);
    expect(plain.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
  });

  it("Node's fetch through undici's ProxyAgent", async () => {
    const ticket = await gw.issue('api', agent.ref);
    const dispatcher = new ProxyAgent({
      uri: px.proxy.url,
      token: `Bearer ${agent.key}`,
      requestTls: { ca: px.proxy.ca.cert },
    });
    try {
      const res = await fetch(`${up.url}/whoami`, {
        dispatcher,
        headers: { authorization: `Bearer ${ticket}` },
      });
      const text = await res.text();
      expect(res.status).toBe(200);
      expect(text).toMatch(/^you sent Bearer cct_/);
      expect(up.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
      // proxyTunnel: false sends plain http as absolute-form requests
      const direct = new ProxyAgent({ uri: px.proxy.url, token: basic('x', agent.key), proxyTunnel: false });
      const res2 = await fetch(`${plain.url}/whoami`, {
        dispatcher: direct,
        headers: { authorization: `Bearer ${ticket}` },
      });
      expect(await res2.text()).toMatch(/^you sent Bearer cct_/);
      await direct.close();
    } finally {
      await dispatcher.close();
    }
  });

  it('refuses a CONNECT to a host no secret is bound to (403, stable code), and audits it', async () => {
    const target = other.url.replace(/^https:\/\//, '');
    const res = await rawConnect(px.address, target, basic('a', agent.key));
    expect(res.status).toBe(403);
    bodies.push(res.head, res.body);
    expect(JSON.parse(res.body)).toEqual({
      error: {
        code: 'CC_ERR_PROXY_HOST_REFUSED',
        message: `no secret or connection is bound to ${target}; the proxy refuses channels it cannot inspect`,
      },
    });
    const audit = await gw.ctx.store.readAudit(0, 10_000);
    expect(audit.some((r) => r.type === 'gateway.proxy.refused')).toBe(true);
    const viaCurl = await curl([
      '--proxy',
      `http://${px.address}`,
      '--proxy-user',
      `a:${agent.key}`,
      '--cacert',
      ca.caFile,
      `${other.url}/`,
    ]);
    expect(viaCurl.code).not.toBe(0);
    expect(other.received.length).toBe(0);
  });

  it('refuses a CONNECT without a key (407 with a challenge) and with a wrong key', async () => {
    const none = await rawConnect(px.address, upHost);
    expect(none.status).toBe(407);
    expect(none.head).toMatch(/proxy-authenticate: Basic realm="coatcheck", Bearer realm="coatcheck"/i);
    expect(JSON.parse(none.body).error.code).toBe('CC_ERR_HTTP_PROXY_AUTH_REQUIRED');
    const wrong = await rawConnect(px.address, upHost, basic('a', 'cca_notARealAgentKeyAtAll0000000000'));
    expect(wrong.status).toBeGreaterThanOrEqual(400);
    expect(JSON.parse(wrong.body).error.code).toBe('CC_ERR_AGENT_KEY_MALFORMED');
    bodies.push(none.head, none.body, wrong.head, wrong.body);
  });

  it("refuses another agent's ticket and a revoked ticket; nothing reaches the upstream", async () => {
    const other = await gw.createAgent('fwd-other');
    const theirs = await gw.issue('api', other.ref);
    const before = up.received.length;
    const dispatcher = new ProxyAgent({
      uri: px.proxy.url,
      token: `Bearer ${agent.key}`,
      requestTls: { ca: px.proxy.ca.cert },
    });
    try {
      const res = await fetch(`${up.url}/whoami`, {
        dispatcher,
        headers: { authorization: `Bearer ${theirs}` },
      });
      const body = (await res.json()) as { error: { code: string } };
      expect(res.status).toBe(403);
      expect(body.error.code).toBe('CC_ERR_TICKET_WRONG_PRINCIPAL');
      bodies.push(JSON.stringify(body));
      const mine = await gw.issue('api', agent.ref);
      await gw.ctx.vault.revokeTicket(mine, 'admin:test');
      const res2 = await fetch(`${up.url}/whoami`, {
        dispatcher,
        headers: { authorization: `Bearer ${mine}` },
      });
      const body2 = (await res2.json()) as { error: { code: string } };
      expect(body2.error.code).toBe('CC_ERR_TICKET_REVOKED');
      bodies.push(JSON.stringify(body2));
      expect(up.received.length).toBe(before);
    } finally {
      await dispatcher.close();
    }
  });

  it('reports an upstream certificate it cannot verify, and sends nothing', async () => {
    const ticket = await gw.issue('api', agent.ref);
    const before = up.received.length;
    const dispatcher = new ProxyAgent({
      uri: untrusting.proxy.url,
      token: `Bearer ${agent.key}`,
      requestTls: { ca: untrusting.proxy.ca.cert },
    });
    try {
      const res = await fetch(`${up.url}/whoami`, {
        dispatcher,
        headers: { authorization: `Bearer ${ticket}` },
      });
      const body = (await res.json()) as { error: { code: string } };
      bodies.push(JSON.stringify(body));
      expect({ status: res.status, code: body.error.code }).toEqual({
        status: 502,
        code: 'CC_ERR_PROXY_UPSTREAM_CERTIFICATE',
      });
      expect(up.received.length).toBe(before);
    } finally {
      await dispatcher.close();
    }
  });

  it('WebSocket upgrades pass the same checks: the ticket is exchanged, server frames are cleaned', async () => {
    const ws = await startWebSocketServer(ca);
    const wsHost = ws.url.replace(/^wss:\/\//, '');
    await gw.addSecret('ws', `${SECRET}-ws`, [wsHost]);
    const ticket = await gw.issue('ws', agent.ref);
    const dispatcher = new ProxyAgent({
      uri: px.proxy.url,
      token: `Bearer ${agent.key}`,
      requestTls: { ca: px.proxy.ca.cert },
    });
    try {
      const socket = new WebSocket(`${ws.url}/chat`, {
        dispatcher,
        headers: { authorization: `Bearer ${ticket}` },
      } as never);
      const message = await new Promise<string>((resolve, reject) => {
        socket.addEventListener('open', () => socket.send('hello'));
        socket.addEventListener('message', (event) => resolve(String(event.data)));
        socket.addEventListener('error', () => reject(new Error('websocket failed')));
      });
      socket.close();
      expect(ws.authorizations).toEqual([`Bearer ${SECRET}-ws`]);
      // The echo carries the secret back in a frame: server frames are inspected, so it comes back as a ticket.
      expect(message).toMatch(/^hello Bearer cct_[0-9A-Za-z]{28}$/);
      expect(message).not.toContain(SECRET);
      // A revoked ticket is refused before the upgrade reaches the server.
      await gw.ctx.vault.revokeTicket(ticket, 'admin:test');
      const refused = new WebSocket(`${ws.url}/chat`, {
        dispatcher,
        headers: { authorization: `Bearer ${ticket}` },
      } as never);
      await new Promise<void>((resolve) => {
        refused.addEventListener('error', () => resolve());
        refused.addEventListener('close', () => resolve());
      });
      expect(ws.authorizations.length).toBe(1);
    } finally {
      await dispatcher.close();
      await ws.close();
    }
  });

  it('refuses upgrades to other protocols (their traffic could not be inspected)', async () => {
    const { connect } = await import('node:net');
    const [host, port] = px.address.split(':');
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect({ host: host!, port: Number(port) });
      let text = '';
      socket.on('data', (d: Buffer) => {
        text += d.toString();
      });
      socket.on('end', () => resolve(text));
      socket.on('error', reject);
      socket.write(
        `GET ${plain.url}/x HTTP/1.1\r\nHost: ${plain.url.slice(7)}\r\nProxy-Authorization: ${basic('a', agent.key)}\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n`,
      );
    });
    expect(answer).toMatch(/^HTTP\/1\.1 501 /);
    expect(answer).toContain('x-coatcheck-error: CC_ERR_HTTP_UNSUPPORTED');
    bodies.push(answer);
  });

  it('mints one leaf per host, signed by the CA, and keeps it in memory', () => {
    expect(px.proxy.leaves.size).toBeGreaterThanOrEqual(1);
  });

  it('canary: the secret and the agent key appear in no log, audit record or recording', async () => {
    await px.proxy.pipeline.services.recorder.flush();
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    for (const text of [px.logs(), untrusting.logs(), gw.logs(), audit, ...bodies]) {
      expect(text).not.toContain(SECRET);
      expect(text).not.toContain(agent.key);
    }
    const sessions = JSON.stringify(await gw.ctx.store.listSessions({ limit: 1000 }));
    expect(sessions).not.toContain(SECRET);
    expect(sessions).not.toContain(agent.key);
  });
});
