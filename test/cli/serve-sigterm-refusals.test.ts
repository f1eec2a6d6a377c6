import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { Agent, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { spawnCli, waitForLine } from '../helpers/cli.js';
import { makeTestHome, type TestHome } from '../helpers/home.js';
import { startUpstream, type Upstream } from '../integration/http/harness.js';

/**
 * SIGTERM during a refusal flood (issue 15: a gateway after a refusal flood did not exit
 * 60 s after SIGTERM). Clients on keep-alive connections send requests whose tickets are
 * refused as fast as they can; other sockets hold half-sent requests or sit idle after an
 * answer. The process must exit 0 within the drain deadline plus the flush, whatever those
 * sockets do, and its readiness must drop at once.
 */
describe('serve during a refusal flood, then SIGTERM', () => {
  let t: TestHome | null = null;
  let up: Upstream | null = null;
  let server: ChildProcessWithoutNullStreams | null = null;
  const sockets: Socket[] = [];

  afterEach(async () => {
    for (const s of sockets) s.destroy();
    server?.kill('SIGKILL');
    await up?.close();
    t?.remove();
  });

  it('exits 0 within the deadline with refused requests in flight, half-sent requests and idle keep-alive sockets', async () => {
    t = await makeTestHome();
    up = await startUpstream();
    const ctx = await t.open();
    let key: string;
    try {
      key = (await ctx.agents.create({ name: 'flooder' }, 'admin:test')).key;
      await ctx.connections.add({ name: 'items', type: 'http', url: up.url }, 'admin:test');
    } finally {
      await ctx.close();
    }
    server = spawnCli(['serve', '--listen-admin', '127.0.0.1:0', '--listen-http', '127.0.0.1:0'], {
      COATCHECK_HOME: t.home.dir,
    }) as ChildProcessWithoutNullStreams;
    server.stderr.resume();
    let printed = '';
    server.stdout.on('data', (c: Buffer) => {
      printed += c.toString('utf8');
    });
    const [, url] = await waitForLine(server, /http\s+(http:\/\/127\.0\.0\.1:\d+)/);
    const adminUrl = /admin API\s+(http:\/\/127\.0\.0\.1:\d+)/.exec(printed)![1]!;
    const { hostname, port } = new URL(url!);
    const exited = new Promise<{ code: number | null; at: number }>((resolve) =>
      server!.once('exit', (code) => resolve({ code, at: Date.now() })),
    );

    // Sockets that never finish a request, and sockets idle after one answer.
    for (let i = 0; i < 8; i++) {
      const s = connect({ host: hostname, port: Number(port) });
      s.on('error', () => undefined);
      s.write(`GET /c/items/slow-${i} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer `);
      sockets.push(s);
    }
    const idle = new Agent({ connections: 8, keepAliveTimeout: 600_000 });
    await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const res = await request(`${url}/c/items/idle-${i}`, {
          dispatcher: idle,
          headers: {
            'proxy-authorization': `Bearer ${key}`,
            authorization: 'Bearer cct_notaticketnotaticketnotatic',
          },
        });
        await res.body.dump();
      }),
    );

    // The flood: refused requests on keep-alive connections, as fast as they are answered.
    const flood = new Agent({ connections: 16, pipelining: 1 });
    let refused = 0;
    let stopping = false;
    const loops = Array.from({ length: 16 }, async (_, n) => {
      for (let i = 0; ; i++) {
        try {
          const res = await request(`${url}/c/items/r${n}-${i}`, {
            dispatcher: flood,
            headers: {
              'proxy-authorization': i % 2 === 0 ? `Bearer ${key}` : 'Bearer cca_wrong',
              authorization: `Bearer cct_${'x'.repeat(28)}`,
            },
          });
          await res.body.dump();
          if (res.statusCode >= 400) refused++;
          else throw new Error(`answered ${res.statusCode} with a bad ticket`);
        } catch (error) {
          if (!stopping) throw error;
          return;
        }
        if (stopping) return;
      }
    });
    const failed = Promise.all(loops);
    while (refused < 300) await Promise.race([failed, new Promise((r) => setTimeout(r, 20))]);
    const signalled = Date.now();
    stopping = true;
    server.kill('SIGTERM');
    // Readiness drops while it drains.
    let ready = 200;
    for (let i = 0; i < 40 && ready === 200; i++) {
      try {
        const res = await request(`${adminUrl}/readyz`);
        ready = res.statusCode;
        await res.body.dump();
      } catch {
        ready = 0; // already closed: also not ready
      }
      if (ready === 200) await new Promise((r) => setTimeout(r, 25));
    }
    expect(ready).not.toBe(200);
    await Promise.all(loops);
    const { code, at } = await exited;
    server = null;
    expect(code).toBe(0);
    // shutdown.drainTimeout is 5 s by default; the audit flush and exit come after it.
    expect(at - signalled).toBeLessThan(8_000);
    expect(refused).toBeGreaterThanOrEqual(300);
    await flood.close().catch(() => undefined);
    await idle.close().catch(() => undefined);
  }, 120_000);
});
