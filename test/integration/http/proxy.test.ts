import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

const run = promisify(execFile);

/** The canary: planted as the secret, searched for everywhere the agent or an operator can look. */
const SECRET = 'ghp_CanaryS3cret/Value+0123456789"x';
const CRED = 'upstream-credential-9f8e7d6c5b4a';

let gw: Gateway;
let up: Upstream;
let agent: { key: string; ref: string };
let other: { key: string; ref: string };
let ticket: string;
const errorBodies: string[] = [];

async function call(
  path: string,
  init: {
    method?: string;
    headers?: Record<string, string>;
    body?: string | Buffer;
    key?: string | null;
  } = {},
) {
  const headers: Record<string, string> = { ...init.headers };
  const key = init.key === undefined ? agent.key : init.key;
  if (key !== null) headers['proxy-authorization'] = `Bearer ${key}`;
  const res = await request(`${gw.url}${path}`, {
    method: (init.method ?? 'GET') as 'GET',
    headers,
    body: init.body,
  });
  const text = await res.body.text();
  if (res.statusCode >= 400) errorBodies.push(text);
  return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) };
}

beforeAll(async () => {
  up = await startUpstream();
  gw = await startGateway({ extraConfig: 'http:\n  bodyLimit: 65536\n  upstreamTimeoutMs: 1500\n' });
  agent = await gw.createAgent('builder');
  other = await gw.createAgent('intruder');
  // These tests put its tickets in custom headers, queries and bodies: declared here.
  await gw.addSecret('gh', SECRET, ['api', 'elsewhere'], { placements: ['header', 'query', 'body'] });
  await gw.addSecret('cred', CRED, ['api']);
  await gw.addConnection('api', up.url, { 'X-Api-Key': '{{secret:cred}}' });
  await gw.addConnection('elsewhere', up.url);
  ticket = await gw.issue('gh', agent.ref, ['api']);
});

afterAll(async () => {
  await gw?.close();
  await up?.close();
});

const last = () => up.received.at(-1)!;

describe('tickets in, secrets out: the upstream receives the secret', () => {
  it('exchanges a Bearer ticket in Authorization and injects the connection credential', async () => {
    const res = await call('/c/api/repos/x?page=2', { headers: { authorization: `Bearer ${ticket}` } });
    expect(res.status).toBe(200);
    expect(last().url).toBe('/repos/x?page=2');
    expect(last().headers.authorization).toBe(`Bearer ${SECRET}`);
    expect(last().headers['x-api-key']).toBe(CRED);
    expect(last().headers['proxy-authorization']).toBeUndefined();
    expect(res.text).not.toContain(SECRET);
  });

  it('exchanges a ticket standing as the password (or user) of Basic credentials', async () => {
    await call('/c/api/basic', {
      headers: { authorization: `Basic ${Buffer.from(`me:${ticket}`).toString('base64')}` },
    });
    expect(Buffer.from(last().headers.authorization!.slice(6), 'base64').toString()).toBe(`me:${SECRET}`);
    await call('/c/api/basic', {
      headers: { authorization: `Basic ${Buffer.from(`${ticket}:x`).toString('base64')}` },
    });
    expect(Buffer.from(last().headers.authorization!.slice(6), 'base64').toString()).toBe(`${SECRET}:x`);
  });

  it('exchanges tickets in custom headers and the query string (percent-encoding the secret)', async () => {
    await call(`/c/api/q?token=${ticket}&other=1`, { headers: { 'x-custom': `key=${ticket}` } });
    expect(last().headers['x-custom']).toBe(`key=${SECRET}`);
    expect(last().url).toBe(`/q?token=${encodeURIComponent(SECRET)}&other=1`);
  });

  it('exchanges tickets in JSON bodies, including \\u-escaped ones, with a correct Content-Length', async () => {
    const escaped = [...ticket].map((c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`).join('');
    const body = `{"a":"${ticket}","b":"${escaped}","n":12345678901234567890,"keep":"caf\u00e9"}`;
    await call('/c/api/json', { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    const got = last().body.toString('utf8');
    expect(JSON.parse(got.replace('12345678901234567890', '0'))).toEqual({
      a: SECRET,
      b: SECRET,
      n: 0,
      keep: 'caf\u00e9',
    });
    expect(got).toContain('"n":12345678901234567890'); // untouched bytes stay exactly as sent
    expect(Number(last().headers['content-length'])).toBe(last().body.length);
  });

  it('exchanges tickets in form-encoded and plain-text bodies', async () => {
    await call('/c/api/form', {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `user=me&password=${ticket}`,
    });
    expect(last().body.toString()).toBe(`user=me&password=${encodeURIComponent(SECRET)}`);
    expect(new URLSearchParams(last().body.toString()).get('password')).toBe(SECRET);
    await call('/c/api/text', {
      method: 'PUT',
      headers: { 'content-type': 'text/plain' },
      body: `token ${ticket}\n`,
    });
    expect(last().body.toString()).toBe(`token ${SECRET}\n`);
    expect(Number(last().headers['content-length'])).toBe(last().body.length);
  });

  it('works for curl, with a chunked request body', async () => {
    const { stdout } = await run('curl', [
      '-sS',
      '-H',
      `Proxy-Authorization: Bearer ${agent.key}`,
      '-H',
      'Transfer-Encoding: chunked',
      '-H',
      'Content-Type: application/json',
      '--data-binary',
      `{"token":"${ticket}"}`,
      `${gw.url}/c/api/curl`,
    ]);
    expect(JSON.parse(stdout)).toMatchObject({ ok: true, url: '/curl' });
    expect(JSON.parse(last().body.toString())).toEqual({ token: SECRET });
    expect(stdout).not.toContain(SECRET);
  });
});

describe('refusals: audited, never forwarded', () => {
  async function refused(
    path: string,
    init: Parameters<typeof call>[1],
    status: number,
    code: string,
  ): Promise<void> {
    const before = up.received.length;
    const res = await call(path, init);
    expect({ status: res.status, code: res.json().error.code }).toEqual({ status, code });
    expect(res.headers['x-coatcheck-error']).toBe(code);
    expect(up.received.length).toBe(before);
  }

  it('refuses a request without an agent key (407) and a bad agent key (401)', async () => {
    await refused('/c/api/x', { key: null }, 407, 'CC_ERR_HTTP_PROXY_AUTH_REQUIRED');
    await refused('/c/api/x', { key: 'cca_nope' }, 401, 'CC_ERR_AGENT_KEY_MALFORMED');
    const audit = await gw.ctx.store.tailAudit(1);
    expect(audit[0]).toMatchObject({
      type: 'gateway.auth.refused',
      data: { code: 'CC_ERR_AGENT_KEY_MALFORMED' },
    });
  });

  it("refuses another agent's ticket, a ticket for another connection, unknown and mistyped tickets", async () => {
    await refused(
      '/c/api/x',
      { key: other.key, headers: { authorization: `Bearer ${ticket}` } },
      403,
      'CC_ERR_TICKET_WRONG_PRINCIPAL',
    );
    await refused(
      '/c/elsewhere/x',
      { headers: { authorization: `Bearer ${ticket}` } },
      403,
      'CC_ERR_TICKET_WRONG_DESTINATION',
    );
    const unknown = await gw.issue('gh', agent.ref, ['api']);
    await gw.ctx.vault.revokeTicket(unknown, 'admin:test');
    await refused('/c/api/x', { headers: { 'x-t': unknown } }, 403, 'CC_ERR_TICKET_REVOKED');
    const forged = `${ticket.slice(0, -1)}${ticket.endsWith('0') ? '1' : '0'}`;
    await refused('/c/api/x', { body: `{"t":"${forged}"}`, method: 'POST' }, 400, 'CC_ERR_TICKET_CHECKSUM');
    const records = await gw.ctx.store.tailAudit(20);
    const codes = records.filter((r) => r.type === 'token.refused').map((r) => r.data.code);
    expect(codes).toEqual(
      expect.arrayContaining([
        'CC_ERR_TICKET_WRONG_PRINCIPAL',
        'CC_ERR_TICKET_WRONG_DESTINATION',
        'CC_ERR_TICKET_REVOKED',
        'CC_ERR_TICKET_CHECKSUM',
      ]),
    );
  });

  it('refuses every ticket when one of them is refused', async () => {
    const wrong = await gw.issue('gh', other.ref, ['api']);
    await refused(
      '/c/api/x',
      { headers: { authorization: `Bearer ${ticket}`, 'x-b': wrong } },
      403,
      'CC_ERR_TICKET_WRONG_PRINCIPAL',
    );
  });

  it('refuses a request that would carry the agent key upstream', async () => {
    await refused(
      '/c/api/x',
      { headers: { authorization: `Bearer ${agent.key}` } },
      400,
      'CC_ERR_HTTP_AGENT_KEY_FORWARDED',
    );
    await refused(`/c/api/x?k=${agent.key}`, {}, 400, 'CC_ERR_HTTP_AGENT_KEY_FORWARDED');
    await refused(
      '/c/api/x',
      { method: 'POST', body: `{"k":"${agent.key}"}` },
      400,
      'CC_ERR_HTTP_AGENT_KEY_FORWARDED',
    );
  });

  it('refuses bodies over the limit (413), unknown connections (404), dot segments (400)', async () => {
    await refused(
      '/c/api/big',
      { method: 'POST', body: Buffer.alloc(70_000, 0x61) },
      413,
      'CC_ERR_BODY_TOO_LARGE',
    );
    await refused('/c/nowhere/x', {}, 404, 'CC_ERR_NOT_FOUND');
    await refused('/other', {}, 400, 'CC_ERR_HTTP_BAD_REQUEST');
  });

  it('refuses dot segments, which WHATWG clients would resolve away (curl --path-as-is sends them)', async () => {
    const before = up.received.length;
    for (const path of ['/c/api/%2e%2e/admin', '/c/api/../admin', '/c/api/a/./b']) {
      const { stdout } = await run('curl', [
        '-sS',
        '--path-as-is',
        '-H',
        `Proxy-Authorization: Bearer ${agent.key}`,
        `${gw.url}${path}`,
      ]);
      expect(JSON.parse(stdout).error.code).toBe('CC_ERR_HTTP_BAD_REQUEST');
    }
    expect(up.received.length).toBe(before);
  });

  it('refuses a chunked body over the limit without forwarding any of it', async () => {
    const before = up.received.length;
    const { stdout } = await run('curl', [
      '-sS',
      '-H',
      `Proxy-Authorization: Bearer ${agent.key}`,
      '-H',
      'Transfer-Encoding: chunked',
      '--data-binary',
      'a'.repeat(70_000),
      `${gw.url}/c/api/big`,
    ]);
    expect(JSON.parse(stdout).error.code).toBe('CC_ERR_BODY_TOO_LARGE');
    expect(up.received.length).toBe(before);
  });
});

describe('responses come back clean', () => {
  it('replaces the secret in headers and body, in every encoding, with a working ticket', async () => {
    const encodings = [
      SECRET,
      JSON.stringify(SECRET).slice(1, -1),
      encodeURIComponent(SECRET),
      Buffer.from(SECRET).toString('base64'),
      Buffer.from(SECRET).toString('base64url'),
      Buffer.from(`user:${SECRET}`).toString('base64'),
    ];
    up.handle('/leak', (_req, res) => {
      res.writeHead(200, {
        'content-type': 'application/json',
        'x-echo': SECRET,
        'set-cookie': [`s=${encodeURIComponent(SECRET)}`],
      });
      res.end(JSON.stringify({ plain: SECRET, all: encodings }));
    });
    const res = await call('/c/api/leak');
    expect(res.status).toBe(200);
    const seen = res.text + JSON.stringify(res.headers);
    for (const form of encodings) expect(seen).not.toContain(form);
    const body = res.json();
    expect(body.plain).toMatch(/^cct_[0-9A-Za-z]{28}$/);
    expect(res.headers['x-echo']).toBe(body.plain);
    // The ticket handed back works for the same agent, towards the same connection.
    await call('/c/api/again', { headers: { authorization: `Bearer ${body.plain}` } });
    expect(last().headers.authorization).toBe(`Bearer ${SECRET}`);
    const refusedElsewhere = await call('/c/elsewhere/x', {
      headers: { authorization: `Bearer ${body.plain}` },
    });
    expect(refusedElsewhere.json().error.code).toBe('CC_ERR_TICKET_WRONG_DESTINATION');
  });

  it('scans chunked and SSE streams with the secret split across chunks', async () => {
    up.handle('/sse', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const parts = [
        'data: {"token":"',
        SECRET.slice(0, 7),
        SECRET.slice(7, 20),
        SECRET.slice(20),
        '"}\n\n',
        'data: done\n\n',
      ];
      let i = 0;
      const next = () => {
        if (i < parts.length) {
          res.write(parts[i++]);
          setTimeout(next, 5);
        } else res.end();
      };
      next();
    });
    const res = await call('/c/api/sse');
    expect(res.text).not.toContain(SECRET);
    expect(res.text).toMatch(/^data: \{"token":"cct_[0-9A-Za-z]{28}"\}\n\ndata: done\n\n$/);
  });

  it('inspects compressed responses (decompressing them) and withholds encodings it cannot read', async () => {
    up.handle('/gzip', (_req, res) => {
      res.writeHead(200, { 'content-encoding': 'gzip', 'content-type': 'text/plain' });
      res.end(gzipSync(`secret=${SECRET}`));
    });
    const res = await call('/c/api/gzip');
    expect(res.text).toMatch(/^secret=cct_[0-9A-Za-z]{28}$/);
    expect(res.headers['content-encoding']).toBeUndefined();
    up.handle('/zstd', (_req, res) => {
      res.writeHead(200, { 'content-encoding': 'zstd' });
      res.end('opaque');
    });
    const zstd = await call('/c/api/zstd');
    expect({ status: zstd.status, code: zstd.json().error.code }).toEqual({
      status: 502,
      code: 'CC_ERR_GATEWAY_UPSTREAM_ENCODING',
    });
  });
});

describe('slow and broken upstreams do not hang the gateway', () => {
  it('answers 504 when the upstream never responds, 502 when it resets, and keeps serving', async () => {
    up.handle('/hang', () => undefined);
    up.handle('/reset', (req) => req.socket.destroy());
    const hang = await call('/c/api/hang');
    expect({ status: hang.status, code: hang.json().error.code }).toEqual({
      status: 504,
      code: 'CC_ERR_GATEWAY_UPSTREAM_TIMEOUT',
    });
    const reset = await call('/c/api/reset');
    expect({ status: reset.status, code: reset.json().error.code }).toEqual({
      status: 502,
      code: 'CC_ERR_GATEWAY_UPSTREAM_UNREACHABLE',
    });
    expect((await call('/c/api/fine')).status).toBe(200);
  });

  it('cuts the client connection when the upstream dies mid-body', async () => {
    up.handle('/half', (req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.write('partial ');
      setTimeout(() => req.socket.destroy(), 20);
    });
    await expect(call('/c/api/half')).rejects.toThrow();
    expect((await call('/c/api/fine')).status).toBe(200);
  });

  // A client that goes away in the middle of a large answer must free what the gateway
  // holds for it: an agent that opens downloads and drops them would otherwise pin an
  // upstream connection (and its buffered bytes) each, and hold shutdown's drain forever.
  describe('a client that goes away frees the upstream exchange', () => {
    const CHUNK = Buffer.alloc(64 * 1024, 'abcdefghijklmnopqrstuvwxyz012345');
    type Ending = 'finished' | 'aborted';

    /**
     * An upstream answer written as the reader takes it, piece by piece (`next` gives null at
     * the end), begun `delayMs` after the request arrived; `received` resolves when the
     * request is there, `ended` with how the answer ended.
     */
    function bigAnswer(
      path: string,
      next: () => Buffer | null,
      options: { headers?: Record<string, string>; delayMs?: number } = {},
    ): { received: Promise<void>; ended: Promise<Ending> } {
      let received: () => void = () => undefined;
      let ended: (how: Ending) => void = () => undefined;
      const result = {
        received: new Promise<void>((resolve) => {
          received = resolve;
        }),
        ended: new Promise<Ending>((resolve) => {
          ended = resolve;
        }),
      };
      up.handle(path, (_req, res) => {
        received();
        res.on('close', () => ended(res.writableFinished ? 'finished' : 'aborted'));
        const more = () => {
          for (let piece = next(); piece !== null; piece = next()) {
            if (!res.write(piece)) {
              res.once('drain', more);
              return;
            }
          }
          res.end();
        };
        setTimeout(() => {
          if (res.destroyed) return; // the gateway already gave up the request: aborted
          res.writeHead(200, { 'content-type': 'text/plain', ...options.headers });
          more();
        }, options.delayMs ?? 0);
      });
      return result;
    }

    /** `count` pieces of 64 KiB. */
    const chunks = (count: number) => {
      let left = count;
      return () => (left-- > 0 ? CHUNK : null);
    };

    /** A raw client: sends the request, then drops the socket once `until` resolves (given the bytes read). */
    async function dropWhen(path: string, until: (got: () => number) => Promise<void>): Promise<number> {
      const { connect } = await import('node:net');
      const { port } = new URL(gw.url);
      return new Promise<number>((resolve, reject) => {
        let got = 0;
        const socket = connect(Number(port), '127.0.0.1', () => {
          socket.write(
            `GET ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nproxy-authorization: Bearer ${agent.key}\r\n\r\n`,
          );
          void until(() => got).then(() => socket.destroy());
        });
        socket.on('data', (chunk: Buffer) => {
          got += chunk.length;
        });
        socket.on('close', () => resolve(got));
        socket.on('error', reject);
      });
    }
    /** Resolves once `bytes` have been read. */
    const afterBytes = (bytes: number) => async (got: () => number) => {
      while (got() < bytes) await new Promise((resolve) => setTimeout(resolve, 2));
    };

    it('dropped mid-body (the gateway waiting for the client to drain): the upstream answer is aborted', async () => {
      const answer = bigAnswer('/big-drop', chunks(2048)); // 128 MiB: never finished in time
      const got = await dropWhen('/c/api/big-drop', afterBytes(512 * 1024));
      expect(got).toBeGreaterThanOrEqual(512 * 1024);
      expect(await answer.ended).toBe('aborted');
    });

    it('dropped after the request was forwarded, before any answer: the upstream answer is aborted', async () => {
      const answer = bigAnswer('/big-early', chunks(2048), { delayMs: 100 });
      await dropWhen('/c/api/big-early', () => answer.received);
      expect(await answer.ended).toBe('aborted');
    });

    it('dropped mid-body of a compressed answer (inspected through the decoder): aborted too', async () => {
      // Random text compresses only to about three quarters: megabytes still on the wire.
      const payload = gzipSync(Buffer.from(randomBytes(12 * 1024 * 1024).toString('base64')), { level: 1 });
      let at = 0;
      const answer = bigAnswer(
        '/big-gzip',
        () => {
          if (at >= payload.length) return null;
          at += 4096;
          return payload.subarray(at - 4096, at);
        },
        { headers: { 'content-encoding': 'gzip' } },
      );
      const got = await dropWhen('/c/api/big-gzip', afterBytes(256 * 1024));
      expect(got).toBeGreaterThanOrEqual(256 * 1024);
      expect(await answer.ended).toBe('aborted');
      expect((await call('/c/api/fine')).status).toBe(200);
    });

    it('after drops, no session is left open (shutdown would wait on it)', async () => {
      const answer = bigAnswer('/big-many', chunks(2048));
      await Promise.all([
        dropWhen('/c/api/big-many', afterBytes(300 * 1024)),
        dropWhen('/c/api/big-many', afterBytes(300 * 1024)),
      ]);
      await answer.ended;
      const open = async () => {
        const metric = (await gw.ctx.metrics.getSingleMetric('coatcheck_sessions_open')?.get())?.values ?? [];
        return metric.filter((v) => v.labels.frontend === 'http').reduce((n, v) => n + v.value, 0);
      };
      await expect.poll(open, { timeout: 10_000 }).toBe(0);
    });
  });

  it('answers 502 when nothing listens upstream', async () => {
    await gw.addConnection('dead', 'http://127.0.0.1:9');
    const res = await call('/c/dead/x');
    expect({ status: res.status, code: res.json().error.code }).toEqual({
      status: 502,
      code: 'CC_ERR_GATEWAY_UPSTREAM_UNREACHABLE',
    });
  });
});

describe('revocation', () => {
  it('ends a live stream when its ticket is revoked', async () => {
    const streamTicket = await gw.issue('gh', agent.ref, ['api']);
    let timer: NodeJS.Timeout | undefined;
    up.handle('/forever', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      timer = setInterval(() => res.write('data: tick\n\n'), 10);
      res.on('close', () => clearInterval(timer));
    });
    const res = await request(`${gw.url}/c/api/forever`, {
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, authorization: `Bearer ${streamTicket}` },
    });
    expect(res.statusCode).toBe(200);
    const reading = (async () => {
      let text = '';
      for await (const chunk of res.body) {
        text += chunk.toString();
        if (text.length > 30 && text.length < 60) await gw.ctx.vault.revokeTicket(streamTicket, 'admin:test');
      }
      return text;
    })();
    await expect(reading).rejects.toThrow();
    clearInterval(timer);
    await gw.http.recorder.flush();
    const [latest] = await gw.ctx.store.listSessions({ limit: 1 });
    expect(latest?.outcome).toBe('CC_ERR_TICKET_REVOKED');
  });
});

describe('canary: the secret appears nowhere an agent or operator can look', () => {
  it('is absent from logs, audit records, recordings, metrics and error bodies', async () => {
    await gw.http.recorder.flush();
    const forms = [
      SECRET,
      JSON.stringify(SECRET).slice(1, -1),
      encodeURIComponent(SECRET),
      Buffer.from(SECRET).toString('base64'),
      CRED,
    ];
    const audit = JSON.stringify(await gw.ctx.store.readAudit(0, 10_000));
    const sessions = await gw.ctx.store.listSessions({ limit: 1000 });
    const recordings = JSON.stringify(sessions);
    const metrics = await gw.ctx.metrics.metrics();
    const places = { logs: gw.logs(), audit, recordings, metrics, errors: errorBodies.join('\n') };
    for (const [place, text] of Object.entries(places)) {
      for (const form of forms) expect(text.includes(form), `${place} contains the canary`).toBe(false);
      expect(/cct_[0-9A-Za-z]{28}/.test(text), `${place} contains a ticket`).toBe(false);
    }
    expect(sessions.length).toBeGreaterThan(10);
    expect(errorBodies.length).toBeGreaterThan(5);
    expect(metrics).toContain('coatcheck_http_requests_total');
    expect(metrics).toMatch(/coatcheck_http_exchanges_total\{frontend="http",outcome="released"\} \d+/);
  });
});
