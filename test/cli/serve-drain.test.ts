import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { spawnCli, waitForLine } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';
import { startUpstream, type Upstream } from '../integration/http/harness.js';

/**
 * `coatcheck serve` stops gracefully on SIGTERM (the gateway driver, ADR 0016): the HTTP
 * listener stops accepting at once, the request in flight still gets its upstream's
 * answer, then the process exits 0.
 */
describe('serve drains on SIGTERM', () => {
  let t: TestHome | null = null;
  let up: Upstream | null = null;
  let server: ChildProcessWithoutNullStreams | null = null;

  afterEach(async () => {
    server?.kill('SIGKILL');
    await up?.close();
    t?.remove();
  });

  it('the request in flight is answered, a new connection is refused, the process exits 0', async () => {
    t = await makeTestHome();
    up = await startUpstream();
    let answer: () => void = () => undefined;
    let arrived: () => void = () => undefined;
    const slowArrived = new Promise<void>((r) => {
      arrived = r;
    });
    up.handle('/slow', (_req, res) => {
      answer = () => res.end('slow answer');
      arrived();
    });
    const ctx = await t.open();
    let key: string;
    try {
      key = (await ctx.agents.create({ name: 'drainer' }, 'admin:test')).key;
      await ctx.connections.add({ name: 'slow', type: 'http', url: up.url }, 'admin:test');
    } finally {
      await ctx.close();
    }
    server = spawnCli(['serve', '--listen-admin', '127.0.0.1:0', '--listen-http', '127.0.0.1:0'], {
      COATCHECK_HOME: t.home.dir,
    }) as ChildProcessWithoutNullStreams;
    server.stderr.resume();
    let printed = '';
    server.stdout.on('data', (chunk: Buffer) => {
      printed += chunk.toString('utf8');
    });
    const [, url] = await waitForLine(server, /http\s+(http:\/\/127\.0\.0\.1:\d+)/);
    const adminUrl = /admin API\s+(http:\/\/127\.0\.0\.1:\d+)/.exec(printed)?.[1];
    expect(adminUrl).toBeDefined();
    expect((await request(`${adminUrl}/readyz`)).statusCode).toBe(200);
    const exited = new Promise<number | null>((resolve) => server!.once('exit', (code) => resolve(code)));
    const inFlight = request(`${url}/c/slow/slow`, { headers: { 'proxy-authorization': `Bearer ${key}` } });
    await slowArrived;
    server.kill('SIGTERM');
    // While it drains, readiness is withdrawn (an orchestrator stops sending new work) and
    // liveness holds (it must not be killed before the deadline).
    let ready = 200;
    for (let i = 0; i < 100 && ready === 200; i++) {
      const res = await request(`${adminUrl}/readyz`);
      ready = res.statusCode;
      await res.body.dump();
      if (ready === 200) await new Promise((r) => setTimeout(r, 50));
    }
    expect(ready).toBe(503);
    expect((await request(`${adminUrl}/healthz`)).statusCode).toBe(200);
    const port = Number(new URL(url!).port);
    // The listener closes at once: poll until a new connection is refused.
    let refused = false;
    for (let i = 0; i < 100 && !refused; i++) {
      refused = await new Promise<boolean>((resolve) => {
        const s = netConnect({ host: '127.0.0.1', port });
        s.on('error', () => resolve(true));
        s.on('connect', () => {
          s.destroy();
          resolve(false);
        });
      });
      if (!refused) await new Promise((r) => setTimeout(r, 50));
    }
    expect(refused).toBe(true);
    answer();
    const res = await inFlight;
    expect(res.statusCode).toBe(200);
    expect(await res.body.text()).toBe('slow answer');
    expect(await exited).toBe(0);
    server = null;
  }, 90_000);

  it('shutdown.drainTimeout bounds the wait: a request still in flight after it is cut, and the process exits 0', async () => {
    t = await makeTestHome();
    up = await startUpstream();
    let arrived: () => void = () => undefined;
    const slowArrived = new Promise<void>((r) => {
      arrived = r;
    });
    // Never answers: only the drain deadline ends this request.
    up.handle('/never', () => arrived());
    const ctx = await t.open();
    let key: string;
    try {
      key = (await ctx.agents.create({ name: 'drainer' }, 'admin:test')).key;
      await ctx.connections.add({ name: 'slow', type: 'http', url: up.url }, 'admin:test');
    } finally {
      await ctx.close();
    }
    writeFileSync(t.home.configFile, 'shutdown:\n  drainTimeout: 1s\n');
    server = spawnCli(['serve', '--listen-admin', '127.0.0.1:0', '--listen-http', '127.0.0.1:0'], {
      COATCHECK_HOME: t.home.dir,
    }) as ChildProcessWithoutNullStreams;
    server.stderr.resume();
    const [, url] = await waitForLine(server, /http\s+(http:\/\/127\.0\.0\.1:\d+)/);
    const exited = new Promise<number | null>((resolve) => server!.once('exit', (code) => resolve(code)));
    const inFlight = request(`${url}/c/slow/never`, {
      headers: { 'proxy-authorization': `Bearer ${key}` },
    }).then(
      (res) => res.body.text().then(() => 'answered'),
      () => 'cut',
    );
    await slowArrived;
    const signalled = Date.now();
    server.kill('SIGTERM');
    expect(await exited).toBe(0);
    // About the deadline (1 s): below the 5 s default, far below the upstream timeout (30 s).
    expect(Date.now() - signalled).toBeLessThan(4_500);
    expect(Date.now() - signalled).toBeGreaterThanOrEqual(900);
    expect(await inFlight).toBe('cut');
    server = null;
  }, 90_000);
});
