import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { type AddressInfo, createServer, connect as netConnect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FormData, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Proxied, startProxy, testCa } from './forward-harness.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

/**
 * A secret is released only to the destinations (scheme, host, port, base path) and the
 * placements (credential by default) it is bound to. Real clients (curl, undici, a raw
 * socket), real upstreams, and a raw TCP listener that records every byte it is sent, so
 * a secret sent in clear would be seen.
 */
const run = promisify(execFile);
const SECRET = 'placement-canary-Secret-51c2d3e4f5';
const CRED = 'placement-canary-Cred-a9b8c7d6e5';
const WIDE = 'placement-wide-value-0f1e2d3c4b';
const FOUND = ['AKIA', 'Q7PLM2XR', 'K4TNV8BW'].join('');
/** Everything any client was answered, searched by the canary test. */
const seen: string[] = [];

async function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run('curl', ['-sS', '--max-time', '20', ...args], {
      env: { PATH: process.env.PATH },
    });
    seen.push(stdout, stderr);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    seen.push(e.stdout, e.stderr);
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** A TCP listener that keeps every byte it is sent and answers each connection with a bare 200. */
async function startCapture(): Promise<{ server: Server; port: number; bytes: () => string }> {
  let bytes = '';
  const server = createServer((socket) => {
    socket.on('data', (d: Buffer) => {
      bytes += d.toString('latin1');
      if (bytes.includes('\r\n\r\n'))
        socket.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok');
    });
    socket.on('error', () => socket.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, bytes: () => bytes };
}

function rawRequest(url: string, text: string): Promise<string> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: hostname, port: Number(port) });
    let out = '';
    socket.on('data', (d: Buffer) => {
      out += d.toString('latin1');
    });
    socket.on('end', () => resolve(out));
    socket.on('close', () => resolve(out));
    socket.on('error', reject);
    // Not end(): a client that half-closes before its answer is treated by Node's HTTP
    // server as gone (the request is aborted); `Connection: close` ends it after the answer.
    socket.write(text);
  });
}

describe('hostile: a secret goes only to its destinations and placements', () => {
  let dir: string;
  let gw: Gateway;
  let px: Proxied;
  let tls: Upstream;
  let plain: Upstream;
  let capture: Awaited<ReturnType<typeof startCapture>>;
  let capture2: Awaited<ReturnType<typeof startCapture>>;
  let agent: { key: string; ref: string };
  let tok: string;
  let wide: string;
  let proxyUser: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coatcheck-placement-'));
    const ca = testCa(dir);
    tls = await startUpstream(ca);
    plain = await startUpstream();
    capture = await startCapture();
    capture2 = await startCapture();
    gw = await startGateway();
    px = await startProxy(gw, { upstreamCaFile: ca.caFile });
    agent = await gw.createAgent('placement-agent');
    proxyUser = `placement-agent:${agent.key}`;
    // An https connection with a base path and an injected credential.
    await gw.addSecret('cred', CRED, ['tlsapi', 'capconn']);
    await gw.addConnection('tlsapi', `${tls.url}/base`, { 'X-Api-Key': '{{secret:cred}}' });
    // An https connection on the capture port: plain http to that port must not reach it.
    await gw.addConnection('capconn', `https://127.0.0.1:${capture.port}`, {
      'X-Api-Key': '{{secret:cred}}',
    });
    await gw.addConnection('plainapi', plain.url);
    // Default placements (credential only); allowed by connection and by a bare host name.
    await gw.addSecret('tok', SECRET, ['tlsapi', 'plainapi', 'capconn', 'host:localhost', plain.url]);
    // The same shape, with every non-SQL placement declared.
    await gw.addSecret('wide', WIDE, ['tlsapi', 'plainapi'], {
      placements: ['header', 'query', 'body', 'path'],
    });
    tok = await gw.issue('tok', agent.ref);
    wide = await gw.issue('wide', agent.ref);
    plain.handle('/leak', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ aws_access_key_id: FOUND }));
    });
  }, 60_000);

  afterAll(async () => {
    await px?.close();
    await gw?.close();
    await tls?.close();
    await plain?.close();
    capture?.server.close();
    capture2?.server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const viaProxy = (...args: string[]) =>
    curl(['--proxy', `http://${px.address}`, '--proxy-user', proxyUser, ...args]);
  const errorOf = (text: string): string | undefined => {
    try {
      return (JSON.parse(text) as { error?: { code?: string } }).error?.code;
    } catch {
      return undefined;
    }
  };

  describe('destinations: scheme, host, port and base path (forward proxy, curl)', () => {
    it('plain http:// to an https connection host:port is not that connection: nothing goes in clear', async () => {
      const out = await viaProxy('-H', `Authorization: Bearer ${tok}`, `http://127.0.0.1:${capture.port}/`);
      expect(errorOf(out.stdout)).toBe('CC_ERR_PROXY_HOST_REFUSED');
      expect(capture.bytes()).not.toContain(SECRET);
      expect(capture.bytes()).not.toContain(CRED);
    });

    it('a secret allowed by host name is not released over http:// to another port of that host', async () => {
      const out = await viaProxy('-H', `Authorization: Bearer ${tok}`, `http://localhost:${capture.port}/x`);
      expect(errorOf(out.stdout)).toBe('CC_ERR_PROXY_HOST_REFUSED');
      expect(capture.bytes()).not.toContain(SECRET);
    });

    it('the same plain port, absolute-form with no ticket: the connection credential is not injected either', async () => {
      const out = await viaProxy(`http://127.0.0.1:${capture.port}/admin`);
      expect(errorOf(out.stdout)).toBe('CC_ERR_PROXY_HOST_REFUSED');
      expect(capture.bytes()).not.toContain(CRED);
      expect(capture.bytes()).toBe('');
    });

    it('inside the base path the connection applies (credential injected, ticket exchanged)', async () => {
      const out = await viaProxy(
        '--cacert',
        px.caFile,
        '-H',
        `Authorization: Bearer ${tok}`,
        `${tls.url}/base/ok`,
      );
      expect(out.code).toBe(0);
      expect(tls.received.at(-1)).toMatchObject({ url: '/base/ok' });
      expect(tls.received.at(-1)!.headers['x-api-key']).toBe(CRED);
      expect(tls.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
    });

    it('outside the base path: no credential injected, tickets bound to the connection refused', async () => {
      const before = tls.received.length;
      const refused = await viaProxy(
        '--cacert',
        px.caFile,
        '-H',
        `Authorization: Bearer ${tok}`,
        `${tls.url}/admin/users`,
      );
      expect(errorOf(refused.stdout)).toBe('CC_ERR_TICKET_WRONG_DESTINATION');
      expect(tls.received.length).toBe(before);
      // A path that only starts with the base path's letters is outside it too.
      for (const path of ['/admin/users', '/basement', '/']) {
        const out = await viaProxy('--cacert', px.caFile, `${tls.url}${path}`);
        expect(out.code).toBe(0);
        expect(tls.received.at(-1)!.url).toBe(path);
        expect(tls.received.at(-1)!.headers['x-api-key']).toBeUndefined();
      }
    });

    it('one reflected fake token does not make every port of its host forwardable', async () => {
      // Through the forward proxy to a plain loopback upstream the secret is bound to: the response leaks a key.
      const leak = await viaProxy(`${plain.url}/leak`);
      expect(leak.stdout).not.toContain(FOUND);
      expect(leak.stdout).toMatch(/cct_[0-9A-Za-z]{28}/);
      // The found secret is bound to that scheme, host and port only: another port of the host is still refused.
      const other = await viaProxy(`http://127.0.0.1:${capture2.port}/`);
      expect(errorOf(other.stdout)).toBe('CC_ERR_PROXY_HOST_REFUSED');
      expect(capture2.bytes()).toBe('');
      const found = (await gw.ctx.vault.listSecrets()).find((s) => s.name.startsWith('found-'));
      // Bound to where it came from only: that connection, or exactly that scheme, host and port.
      expect(found?.allow.length).toBeGreaterThan(0);
      expect(found?.allow.every((d) => d.startsWith('conn:') || d === `host:${plain.url}`)).toBe(true);
      expect(found?.allow).not.toContain('host:127.0.0.1');
      expect(found?.placements).toEqual(['credential']);
    });
  });

  describe('placements (reverse proxy, undici)', () => {
    const call = async (
      path: string,
      init: { method?: string; headers?: Record<string, string>; body?: string | FormData } = {},
    ) => {
      const res = await request(`${gw.url}${path}`, {
        method: (init.method ?? 'GET') as 'GET',
        headers: { 'proxy-authorization': `Bearer ${agent.key}`, ...init.headers },
        ...(init.body === undefined ? {} : { body: init.body }),
      });
      const text = await res.body.text();
      seen.push(text);
      return { status: res.statusCode, code: res.headers['x-coatcheck-error'], text };
    };
    const cases = (t: string): Array<[string, string, Parameters<typeof call>[1]]> => {
      const form = new FormData();
      form.append('note', 'hello');
      form.append('token', t);
      return [
        ['query string', `/c/plainapi/q?key=${t}`, {}],
        [
          'JSON body',
          '/c/plainapi/j',
          {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ key: t }),
          },
        ],
        [
          'form body',
          '/c/plainapi/f',
          {
            method: 'POST',
            headers: { 'content-type': 'application/x-www-form-urlencoded' },
            body: `a=1&key=${t}`,
          },
        ],
        [
          'plain-text body',
          '/c/plainapi/t',
          { method: 'POST', headers: { 'content-type': 'text/plain' }, body: `token ${t}` },
        ],
        ['multipart body', '/c/plainapi/m', { method: 'POST', body: form }],
        ['custom header', '/c/plainapi/h', { headers: { 'x-token': t } }],
        ['cookie', '/c/plainapi/c', { headers: { cookie: `session=${t}` } }],
        ['URL path segment', `/c/plainapi/bot${t}/send`, {}],
        ['percent-encoded path segment', `/c/plainapi/k/%63${t.slice(1)}`, {}],
      ];
    };

    it('refuses a default (credential-only) secret in every other placement, forwarding nothing', async () => {
      for (const [what, path, init] of cases(tok)) {
        const before = plain.received.length;
        const res = await call(path, init);
        expect(res.code, what).toBe('CC_ERR_TICKET_PLACEMENT');
        expect(res.status, what).toBe(403);
        expect(plain.received.length, what).toBe(before);
      }
    });

    it('refuses a ticket that stands in a credential position and a body at once', async () => {
      const res = await call('/c/plainapi/both', {
        method: 'POST',
        headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/json' },
        body: JSON.stringify({ echo: tok }),
      });
      expect(res.code).toBe('CC_ERR_TICKET_PLACEMENT');
    });

    it('refuses a ticket after a fragment mark in the request target (sent raw)', async () => {
      const before = plain.received.length;
      const out = await rawRequest(
        gw.url,
        `GET /c/plainapi/x?a=1#${tok} HTTP/1.1\r\nHost: gw\r\nProxy-Authorization: Bearer ${agent.key}\r\nConnection: close\r\n\r\n`,
      );
      seen.push(out);
      expect(out).toMatch(/^HTTP\/1\.1 (403|400) /);
      expect(out).not.toMatch(/^HTTP\/1\.1 2/);
      expect(plain.received.length).toBe(before);
    });

    it('releases a default secret in the credential positions: Authorization, Basic user info', async () => {
      await call('/c/plainapi/a', { headers: { authorization: `Bearer ${tok}` } });
      expect(plain.received.at(-1)!.headers.authorization).toBe(`Bearer ${SECRET}`);
      await call('/c/plainapi/b', {
        headers: { authorization: `Basic ${Buffer.from(`u:${tok}`).toString('base64')}` },
      });
      expect(plain.received.at(-1)!.headers.authorization).toBe(
        `Basic ${Buffer.from(`u:${SECRET}`).toString('base64')}`,
      );
    });

    it('releases a secret in the placements it was added with', async () => {
      for (const [what, path, init] of cases(wide)) {
        const res = await call(path, init);
        expect(res.code, what).toBeUndefined();
        expect(res.status, what).toBe(200);
        const got = plain.received.at(-1)!;
        const everything = `${decodeURIComponent(got.url)} ${JSON.stringify(got.headers)} ${got.body.toString('latin1')}`;
        expect(everything, what).toContain(WIDE);
        expect(everything, what).not.toContain('cct_');
      }
    });

    it('audits each placement refusal with its code and placement, never the value', async () => {
      await gw.ctx.audit.flush();
      const records = await gw.ctx.store.readAudit(0, 100_000);
      const refusals = records.filter(
        (r) => r.type === 'token.refused' && (r.data as { code?: string }).code === 'CC_ERR_TICKET_PLACEMENT',
      );
      expect(refusals.length).toBeGreaterThanOrEqual(cases(tok).length);
      const placements = new Set(refusals.map((r) => (r.data as { placement?: string }).placement));
      for (const p of ['query', 'body', 'header', 'path'])
        expect(
          [...placements].some((x) => x?.includes(p)),
          p,
        ).toBe(true);
    });
  });

  describe('placements (forward proxy, curl through CONNECT)', () => {
    it('refuses a default secret in the query, a body or a custom header; allows a declared one', async () => {
      const base = ['--cacert', px.caFile];
      for (const args of [
        [`${tls.url}/base/q?key=${tok}`],
        ['-H', 'content-type: application/json', '--data', JSON.stringify({ k: tok }), `${tls.url}/base/j`],
        ['-H', `X-Token: ${tok}`, `${tls.url}/base/h`],
        ['-b', `sid=${tok}`, `${tls.url}/base/c`],
        ['-F', `token=${tok}`, `${tls.url}/base/m`],
      ]) {
        const before = tls.received.length;
        const out = await viaProxy(...base, ...args);
        expect(errorOf(out.stdout), args.join(' ')).toBe('CC_ERR_TICKET_PLACEMENT');
        expect(tls.received.length).toBe(before);
      }
      const ok = await viaProxy(...base, `${tls.url}/base/q?key=${wide}`);
      expect(ok.code).toBe(0);
      expect(tls.received.at(-1)!.url).toBe(`/base/q?key=${WIDE}`);
    });
  });

  it('the canaries appear in no answer, audit record or log line', async () => {
    await gw.ctx.audit.flush();
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 100_000));
    for (const canary of [SECRET, CRED, FOUND]) {
      expect(seen.join('\n')).not.toContain(canary);
      expect(audit).not.toContain(canary);
      expect(gw.logs()).not.toContain(canary);
      expect(px.logs()).not.toContain(canary);
    }
  });
});
