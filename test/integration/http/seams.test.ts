import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pino from 'pino';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExchangePipeline } from '../../../src/gateway/pipeline.js';
import { type HttpFrontend, startHttpFrontend } from '../../../src/server/frontends.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

const run = promisify(execFile);
const SECRET = 'seam-canary-aa11bb22cc33';

describe('pipeline seams and protocol edges', () => {
  let gw: Gateway;
  let up: Upstream;
  let agent: { key: string; ref: string };
  let ticket: string;
  const extra: HttpFrontend[] = [];

  beforeAll(async () => {
    up = await startUpstream();
    gw = await startGateway();
    agent = await gw.createAgent('seams');
    await gw.addSecret('seam', SECRET, ['svc']);
    await gw.addConnection('svc', up.url);
    await gw.ctx.connections.add(
      { name: 'db', type: 'postgres', url: 'postgres://127.0.0.1:5432/x' },
      'admin:test',
    );
    ticket = await gw.issue('seam', agent.ref);
  });

  afterAll(async () => {
    for (const f of extra) await f.close();
    await gw?.close();
    await up?.close();
  });

  const call = async (base: string, path: string, method = 'GET') => {
    const res = await request(`${base}${path}`, {
      method: method as 'GET',
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, authorization: `Bearer ${ticket}` },
    });
    const text = await res.body.text();
    return { status: res.statusCode, headers: res.headers, text };
  };

  it('refuses to build a pipeline without its services (at start, not on a request)', () => {
    expect(() => new ExchangePipeline('http', { vault: gw.ctx.vault })).toThrow(
      expect.objectContaining({
        code: 'CC_ERR_GATEWAY_MISCONFIGURED',
        message: expect.stringContaining(
          'agents, connections, audit, store, clock, log, metrics, recorder, inspector, decide',
        ),
      }),
    );
  });

  it('a policy denial is audited and releases nothing', async () => {
    const seen: Array<Record<string, unknown>> = [];
    const denying = await startHttpFrontend(
      gw.ctx,
      { host: '127.0.0.1', port: 0 },
      pino({ level: 'silent' }),
      {
        decide: async (input) => {
          seen.push({
            action: input.operation.action,
            bodySha256: input.operation.attributes.bodySha256,
            aborted: input.signal.aborted,
            session: input.session,
          });
          return { verdict: 'deny', reasons: ['policy:no-writes'] };
        },
      },
    );
    extra.push(denying);
    const before = up.received.length;
    const exchangesBefore = (await gw.ctx.store.readAudit(0, 10_000)).filter(
      (r) => r.type === 'token.exchange',
    ).length;
    const res = await call(denying.url, '/c/svc/x', 'DELETE');
    expect({ status: res.status, code: JSON.parse(res.text).error.code }).toEqual({
      status: 403,
      code: 'CC_ERR_GATEWAY_DENIED',
    });
    expect(up.received.length).toBe(before);
    expect(seen).toEqual([
      {
        action: 'http:DELETE',
        bodySha256: '',
        aborted: false,
        session: expect.stringMatching(/^ses_[0-9A-Za-z]{16}$/),
      },
    ]);
    const audit = await gw.ctx.store.readAudit(0, 10_000);
    expect(audit.filter((r) => r.type === 'token.exchange').length).toBe(exchangesBefore);
    expect(audit.at(-1)).toMatchObject({
      type: 'gateway.denied',
      data: {
        connection: 'svc',
        operation: expect.stringMatching(/^DELETE 127\.0\.0\.1:\d+\/x$/),
        reasons: ['policy:no-writes'],
      },
    });
  });

  it('withholds the response when the inspector fails (fail closed)', async () => {
    const broken = await startHttpFrontend(
      gw.ctx,
      { host: '127.0.0.1', port: 0 },
      pino({ level: 'silent' }),
      {
        inspector: {
          name: 'broken',
          async begin() {
            throw new Error('detector down');
          },
        },
      },
    );
    extra.push(broken);
    up.handle('/leaky', (_req, res) => res.end(SECRET));
    const res = await call(broken.url, '/c/svc/leaky');
    expect({ status: res.status, code: JSON.parse(res.text).error.code }).toEqual({
      status: 502,
      code: 'CC_ERR_GATEWAY_INSPECTION_FAILED',
    });
    expect(res.text).not.toContain(SECRET);
  });

  it('refuses connections of another type, CONNECT and protocol upgrades', async () => {
    const typed = await call(gw.url, '/c/db/x');
    expect({ status: typed.status, code: JSON.parse(typed.text).error.code }).toEqual({
      status: 400,
      code: 'CC_ERR_GATEWAY_CONNECTION_TYPE',
    });
    const upgrade = await run('curl', [
      '-sS',
      '-i',
      '-H',
      'Connection: Upgrade',
      '-H',
      'Upgrade: websocket',
      `${gw.url}/c/svc/ws`,
    ]);
    expect(upgrade.stdout).toMatch(/^HTTP\/1\.1 501 /);
    expect(upgrade.stdout).toContain('"code":"CC_ERR_HTTP_UNSUPPORTED"');
    const connect = await run('curl', ['-sS', '-i', '-p', '-x', gw.url, 'http://example.invalid:80/'], {
      timeout: 10_000,
    }).catch((error: { stdout?: string; stderr?: string }) => ({
      stdout: `${error.stdout ?? ''}${error.stderr ?? ''}`,
    }));
    expect(connect.stdout).toMatch(/501/);
  });

  it('passes HEAD and 204/304 answers without a body, keeping Content-Length for HEAD', async () => {
    up.handle('/head', (_req, res) => {
      res.writeHead(200, { 'content-length': '1234', 'content-type': 'text/plain' });
      res.end();
    });
    const head = await call(gw.url, '/c/svc/head', 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe('1234');
    up.handle('/empty', (_req, res) => {
      res.writeHead(204);
      res.end();
    });
    expect((await call(gw.url, '/c/svc/empty')).status).toBe(204);
  });
});
