import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import pino from 'pino';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AdminServer, startAdminServer } from '../../../src/admin/admin-server.js';
import { runCli } from '../../../src/cli/program.js';
import { type Gateway, startGateway, startUpstream, type Upstream } from './harness.js';

const SECRET = 'recorded-canary-77aa88bb99cc';

function memoryIo() {
  let out = '';
  let err = '';
  const sink = (append: (s: string) => void) =>
    new Writable({
      write(chunk: Buffer, _e, cb) {
        append(chunk.toString());
        cb();
      },
    });
  return {
    io: {
      stdin: new PassThrough(),
      stdout: sink((s) => {
        out += s;
      }),
      stderr: sink((s) => {
        err += s;
      }),
      env: {},
    },
    out: () => out,
    err: () => err,
  };
}

describe('session recordings, the sessions commands and /metrics', () => {
  let gw: Gateway;
  let up: Upstream;
  let admin: AdminServer;
  let agent: { key: string; ref: string };

  beforeAll(async () => {
    up = await startUpstream();
    gw = await startGateway();
    agent = await gw.createAgent('recorded');
    await gw.addSecret('rec', SECRET, ['svc'], { placements: ['body'] });
    await gw.addConnection('svc', up.url);
    admin = await startAdminServer(gw.ctx, { host: '127.0.0.1', port: 0 }, pino({ level: 'silent' }));
    const ticket = await gw.issue('rec', agent.ref);
    up.handle('/leak', (_req, res) => res.end(`here: ${SECRET}`));
    const ok = await request(`${gw.url}/c/svc/leak?x=1`, {
      method: 'POST',
      headers: { 'proxy-authorization': `Bearer ${agent.key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ token: ticket }),
    });
    await ok.body.text();
    const refused = await request(`${gw.url}/c/svc/x`, {
      headers: {
        'proxy-authorization': `Bearer ${agent.key}`,
        'x-t': `${ticket.slice(0, -1)}${ticket.endsWith('Z') ? 'Y' : 'Z'}`,
      },
    });
    await refused.body.text();
    await gw.http.recorder.flush();
  });

  afterAll(async () => {
    await admin?.close();
    await gw?.close();
    await up?.close();
  });

  it('lists sessions newest first and shows one with its events, without values', async () => {
    const list = memoryIo();
    expect(await runCli(['--dir', gw.dir, '--json', 'sessions', 'list'], list.io)).toBe(0);
    const rows = JSON.parse(list.out()) as Array<{
      id: string;
      outcome: string;
      method: string;
      path: string;
      status: number;
    }>;
    expect(rows.map((r) => [r.method, r.path, r.status, r.outcome])).toEqual([
      ['GET', '/x', 400, 'CC_ERR_TICKET_CHECKSUM'],
      ['POST', '/leak', 200, 'ok'],
    ]);
    const text = memoryIo();
    expect(await runCli(['--dir', gw.dir, 'sessions', 'list'], text.io)).toBe(0);
    expect(text.out()).toMatch(/^ID +STARTED +PRINCIPAL +CONNECTION +REQUEST +STATUS +OUTCOME +RECORDED\n/);
    expect(text.out()).toContain('POST /leak');

    const show = memoryIo();
    expect(await runCli(['--dir', gw.dir, 'sessions', 'show', rows[1]!.id], show.io)).toBe(0);
    expect(show.out()).toContain(`session     ${rows[1]!.id}`);
    expect(show.out()).toMatch(/response {4}200 \(\d+ bytes, 1 secrets replaced\)/);
    expect(show.out()).toContain('response.secret');
    expect(show.out()).not.toContain(SECRET);
    expect(show.out()).not.toMatch(/cct_[0-9A-Za-z]{28}/);

    const missing = memoryIo();
    expect(await runCli(['--dir', gw.dir, 'sessions', 'show', 'ses_nope'], missing.io)).toBe(1);
    expect(missing.err()).toBe('coatcheck: CC_ERR_NOT_FOUND: no session ses_nope\n');
  });

  it('serves the same operations over the admin API, and metrics without authentication', async () => {
    const key = readFileSync(join(gw.dir, 'admin.key'), 'utf8').trim();
    const res = await request(`${admin.url}/v1/sessions?limit=1`, {
      headers: { authorization: `Bearer ${key}` },
    });
    const rows = (await res.body.json()) as Array<{ outcome: string }>;
    expect(rows.map((r) => r.outcome)).toEqual(['CC_ERR_TICKET_CHECKSUM']);
    const metrics = await request(`${admin.url}/metrics`);
    const text = await metrics.body.text();
    expect(metrics.statusCode).toBe(200);
    expect(text).toContain('coatcheck_http_requests_total{frontend="http",method="POST",status="2xx"} 1');
    expect(text).toContain('coatcheck_http_refusals_total{frontend="http",code="CC_ERR_TICKET_CHECKSUM"} 1');
    expect(text).toContain('coatcheck_http_exchanges_total{frontend="http",outcome="released"} 1');
    expect(text).toContain('coatcheck_http_response_secrets_total{frontend="http"} 1');
    expect(text).toMatch(
      /coatcheck_http_duration_seconds_bucket\{le="[0-9.]+",frontend="http",phase="total"\} \d/,
    );
    expect(text).not.toContain(SECRET);
    expect(text).not.toMatch(/cc[ta]_[0-9A-Za-z]{20,}/);
  });
});
